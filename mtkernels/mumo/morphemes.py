"""Morpheme counts, for MuMo's morphemes-per-second measure."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _japanese_tagger():
    try:
        import fugashi
    except ImportError:
        raise ImportError("morphemes: Japanese needs fugashi and a dictionary: pip install 'mtkernels[mumo]' "
                          "(fugashi, unidic-lite)") from None
    return fugashi.Tagger()


def morphemes(text: str, lang: str) -> int:
    """The number of morphemes of ``text`` (whitespace not counted).

    ``lang``: ``"ja"`` / ``"Japanese"``, analysed by MeCab through fugashi with its installed
    dictionary (unidic-lite). Other languages raise ``ValueError``: there is no analyser for them here.
    """
    if str(lang).lower() not in ("ja", "jpn", "japanese"):
        raise ValueError(f"morphemes: lang {lang!r}: only Japanese ('ja') has a morphological analyser here")
    return sum(1 for word in _japanese_tagger()(text) if word.surface.strip())
