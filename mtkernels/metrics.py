"""Corpus-level translation metrics: SacreBLEU's BLEU and chrF, with their signatures.

    scores = corpus_scores(hypotheses, references, tgt_lang="ja")
    scores["bleu"], scores["chrf"]                       # floats, 0-100
    scores["bleu_signature"], scores["chrf_signature"]   # "nrefs:1|case:mixed|eff:no|tok:ja-mecab-...|..."

BLEU's tokenisation follows the target language (``bleu_tokenizer``): ``ja-mecab`` for Japanese when
sacrebleu's MeCab tokenizer can be built here (``pip install "sacrebleu[ja]"``), otherwise ``char``
for Japanese, Chinese and Korean, and ``13a`` (sacrebleu's default) for every other language.
chrF has no tokenisation; its settings are sacrebleu's defaults (chrF2: character 6-grams, no word n-grams).
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

CHAR_LANGS = frozenset({"ja", "zh", "ko"})
# Other spellings of the three languages whose text has no spaces between words.
_ALIASES = {"jpn": "ja", "japanese": "ja", "jp": "ja", "zho": "zh", "chi": "zh", "cmn": "zh", "chinese": "zh",
            "kor": "ko", "korean": "ko"}


def language_code(lang: str) -> str:
    """The primary language subtag, lower case: ``"ja-JP"`` / ``"ja_JP"`` / ``"jpn"`` / ``"Japanese"`` -> ``"ja"``."""
    primary = lang.strip().replace("_", "-").split("-")[0].lower()
    return _ALIASES.get(primary, primary)


@functools.lru_cache(maxsize=None)
def mecab_available() -> bool:
    """Whether sacrebleu's ``ja-mecab`` tokenizer can be built here (MeCab and its IPA dictionary)."""
    try:
        from sacrebleu.tokenizers.tokenizer_ja_mecab import TokenizerJaMecab

        TokenizerJaMecab()
    except Exception:  # ImportError, or sacrebleu's RuntimeError / AssertionError about MeCab or its dictionary
        return False
    return True


def bleu_tokenizer(tgt_lang: str) -> str:
    """The sacrebleu tokenizer name for BLEU on ``tgt_lang`` text (see the module docstring)."""
    code = language_code(tgt_lang)
    if code == "ja" and mecab_available():
        return "ja-mecab"
    if code in CHAR_LANGS:
        return "char"
    return "13a"


def corpus_scores(hyps: Sequence[str], refs: Sequence[str], tgt_lang: str) -> Dict[str, object]:
    """BLEU and chrF of ``hyps`` against one reference each (``refs``, same length and order).

    Returns ``{"bleu": float, "chrf": float, "bleu_signature": str, "chrf_signature": str,
    "tokenize": str, "bleu_text": str, "chrf_text": str}``; the ``*_text`` entries are sacrebleu's
    one-line summaries (``"BLEU = 12.34 45.6/..."``)."""
    from sacrebleu.metrics import BLEU, CHRF

    hyps, refs = list(hyps), list(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    tokenize = bleu_tokenizer(tgt_lang)
    bleu, chrf = BLEU(tokenize=tokenize), CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {
        "bleu": float(bleu_score.score), "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "tokenize": tokenize, "bleu_text": str(bleu_score), "chrf_text": str(chrf_score),
    }


__all__ = ["CHAR_LANGS", "bleu_tokenizer", "corpus_scores", "language_code", "mecab_available"]
