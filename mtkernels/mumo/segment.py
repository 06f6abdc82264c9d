"""Forward maximum matching of base-token sequences against a monolingual vocabulary, and the
head's training targets that follow from it.

A *unit* is either a monolingual word (the longest word whose base tokens start at that
position) or one base token. For training, the hidden state just before a unit predicts it: the
word's id ``V_multi + j`` or the base token's id; hidden states whose next token lies inside a
word, and the last position, are ``ignore_index``.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

import torch


class Unit(NamedTuple):
    start: int           # index of the unit's first base token
    length: int          # number of base tokens
    word: Optional[int]  # index into the vocabulary, None for a single base token


class TokenTrie:
    """A trie over base-token sequences; each word's last node holds its index (the first word
    added wins when two words have the same tokens)."""

    def __init__(self, sequences: Sequence[Sequence[int]]):
        self._root: Dict = {}
        self.max_length = 0
        for index, seq in enumerate(sequences):
            node = self._root
            for t in seq:
                node = node.setdefault(int(t), {})
            node.setdefault(None, index)  # key None: a word ends here
            self.max_length = max(self.max_length, len(seq))

    def longest_match(self, ids: Sequence[int], start: int):
        """``(length, word)`` of the longest word that ``ids[start:]`` begins with, or ``(0, None)``."""
        node, best = self._root, (0, None)
        for i in range(start, min(len(ids), start + self.max_length)):
            node = node.get(ids[i])
            if node is None:
                break
            if None in node:
                best = (i - start + 1, node[None])
        return best


def segment(trie: TokenTrie, ids: Sequence[int]) -> List[Unit]:
    """Split ``ids`` into units by forward maximum matching (longest word first, else one token)."""
    ids = [int(t) for t in ids]
    units, i = [], 0
    while i < len(ids):
        length, word = trie.longest_match(ids, i)
        if word is None or length < 2:
            units.append(Unit(i, 1, None))
            i += 1
        else:
            units.append(Unit(i, length, word))
            i += length
    return units


def unit_targets(units: Sequence[Unit], ids: Sequence[int], num_base_tokens: int, ignore_index: int) -> List[int]:
    """Per position ``t`` of ``ids``: the id of the unit that starts at ``t + 1``, else ``ignore_index``."""
    targets = [ignore_index] * len(ids)
    for u in units:
        if u.start == 0:
            continue  # nothing before the first unit predicts it
        targets[u.start - 1] = int(ids[u.start]) if u.word is None else num_base_tokens + u.word
    return targets


def training_targets(trie: TokenTrie, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                     num_base_tokens: int, ignore_index: int = -100) -> torch.Tensor:
    """``(B, T)`` int64 targets for ``input_ids (B, T)``; padding (``attention_mask == 0``, either
    side) is skipped and gets ``ignore_index``."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a (B, T) tensor, got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    out = torch.full(input_ids.shape, ignore_index, dtype=torch.int64)
    ids_rows = input_ids.tolist()
    mask_rows = attention_mask.tolist() if attention_mask is not None else None
    for b, row in enumerate(ids_rows):
        cols = [t for t in range(len(row)) if mask_rows is None or mask_rows[b][t]]
        real = [row[t] for t in cols]
        targets = unit_targets(segment(trie, real), real, num_base_tokens, ignore_index)
        for t, y in zip(cols, targets):
            out[b, t] = y
    return out.to(input_ids.device)
