"""``MonoVocab``: the target-language words a MuMo head predicts, each with its base-token ids."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from .scripts import JAPANESE, Script, in_scripts, script_ranges
from .segment import TokenTrie, Unit, segment, training_targets

FORMAT = "mtkernels-mono-vocab"
VERSION = 1


def _encode(tokenizer, word: str) -> List[int]:
    return list(tokenizer.encode(word, add_special_tokens=False))


class MonoVocab:
    """A monolingual vocabulary: ``words[j]`` (word id ``V_multi + j`` of the head) and
    ``base_ids[j]``, its tokens in the base tokenizer (always two or more: a word that is one
    base token already needs no extra output).

    Build it with :meth:`from_words` or :meth:`from_tokenizer`; :meth:`segment` and
    :meth:`training_targets` apply forward maximum matching to base-token sequences.
    """

    def __init__(self, words: Sequence[str], base_ids: Sequence[Sequence[int]]):
        if len(words) != len(base_ids):
            raise ValueError(f"MonoVocab: {len(words)} words but {len(base_ids)} base-id sequences")
        self.words: List[str] = [str(w) for w in words]
        self.base_ids: List[Tuple[int, ...]] = [tuple(int(t) for t in ids) for ids in base_ids]
        for w, ids in zip(self.words, self.base_ids):
            if len(ids) < 2:
                raise ValueError(f"MonoVocab: word {w!r} has {len(ids)} base tokens; every word needs two or more")
        self._trie = TokenTrie(self.base_ids)

    def __len__(self) -> int:
        return len(self.words)

    def __repr__(self) -> str:
        return f"MonoVocab({len(self)} words)"

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def from_words(cls, words: Iterable[str], base_tokenizer, *, scripts: Sequence[Script] = JAPANESE) -> "MonoVocab":
        """The words (in order, without repeats) whose characters all lie in ``scripts`` and that
        the base tokenizer splits into two or more tokens.

        Args:
            words: strings; surrounding whitespace is stripped.
            base_tokenizer: the base model's tokenizer (``encode(word, add_special_tokens=False)``).
            scripts: preset names (``"hiragana"``, ``"katakana"``, ``"cjk"``, ``"hangul"``) and/or
                ``(first, last)`` code-point ranges; default: Japanese.
        """
        ranges = script_ranges(scripts)
        kept, ids, seen = [], [], set()
        for word in words:
            word = str(word).strip()
            if word in seen or not in_scripts(word, ranges):
                continue
            seen.add(word)
            tokens = _encode(base_tokenizer, word)
            if len(tokens) >= 2:
                kept.append(word)
                ids.append(tokens)
        return cls(kept, ids)

    @classmethod
    def from_tokenizer(cls, target_tokenizer, base_tokenizer, *, scripts: Sequence[Script] = JAPANESE) -> "MonoVocab":
        """:meth:`from_words` over a target-language tokenizer's vocabulary, in id order: each
        item decoded to text (so byte-level and SentencePiece pieces become words; the word-start
        marker and whitespace are dropped), special tokens skipped."""
        special = set(getattr(target_tokenizer, "all_special_ids", []) or [])
        words = (target_tokenizer.decode([i]).replace("\u2581", " ") for i in range(len(target_tokenizer))
                 if i not in special)
        return cls.from_words(words, base_tokenizer, scripts=scripts)

    # --- segmentation ----------------------------------------------------------------------------

    def segment(self, base_ids: Sequence[int]) -> List[Unit]:
        """Forward maximum matching: ``base_ids`` split into units, each the longest word whose
        base tokens start there (``Unit(start, length, word=j)``), else one base token
        (``Unit(start, 1, None)``)."""
        if isinstance(base_ids, torch.Tensor):
            base_ids = base_ids.tolist()
        return segment(self._trie, base_ids)

    def training_targets(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
                         num_base_tokens: int, ignore_index: int = -100) -> torch.Tensor:
        """``(B, T)`` int64 head targets for base-token ``input_ids (B, T)``: at position t, the
        unit that starts at t + 1 (word j: ``num_base_tokens + j``; else the base token), and
        ``ignore_index`` inside words, at the end and on padding.

        ``num_base_tokens`` is V_multi, the base head's row count (it may exceed the tokenizer's
        length when the head is padded)."""
        return training_targets(self._trie, input_ids, attention_mask, int(num_base_tokens), ignore_index)

    # --- files -----------------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Write the vocabulary as JSON (atomically)."""
        data = {"format": FORMAT, "version": VERSION, "words": self.words, "base_ids": [list(t) for t in self.base_ids]}
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mono-vocab-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> "MonoVocab":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a MonoVocab file (expected format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"{path}: MonoVocab file version {data.get('version')}, this version reads {VERSION}")
        return cls(data["words"], data["base_ids"])
