"""The token trie of one step's candidates: what one base forward verifies.

Each row's K candidates (a base token, or a word's base tokens) become a trie whose nodes are the
distinct prefixes; node i holds one token, its parent and its depth. A candidate of length l is
the path of nodes ``n_1..n_l``; its token j is predicted by the hidden state *before* it: the
previous step's last hidden state for j = 1, node ``n_{j-1}``'s for j > 1. With the hidden rows
laid out as ``[h_prev ; node 0 ; node 1 ; ...]``, that is row 0 or row ``1 + n_{j-1}``: the
``node_index`` of :func:`mtkernels.mumo_verify_scores_fused`'s trie form.

Rows with fewer nodes than the widest are padded with nodes that attend only to themselves and
that no candidate reads.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import torch

Tensor = torch.Tensor


@dataclasses.dataclass
class TrieBatch:
    """The tries of B rows of K candidates (n = most nodes in a row, L = longest candidate).

    tokens       (B, n)     int64   each node's token (0 on padding nodes)
    depth        (B, n)     int64   0 for a root's child
    tree_mask    (B, n, n)  bool    node q may attend to node k (k is q or an ancestor of q)
    num_nodes    (B,)       int64
    candidate_ids (B, K, L) int64   the candidates' tokens (0 past a candidate's length)
    lengths      (B, K)     int64   in 1..L
    node_index   (B, K, L)  int64   hidden row predicting token j: 0 (h_prev) or 1 + node
    path         (B, K, L)  int64   the node of token j (-1 past the length)
    """

    tokens: Tensor
    depth: Tensor
    tree_mask: Tensor
    num_nodes: Tensor
    candidate_ids: Tensor
    lengths: Tensor
    node_index: Tensor
    path: Tensor

    @property
    def width(self) -> int:
        return self.tokens.shape[1]


def build_tries(candidates: Sequence[Sequence[Sequence[int]]], device=None) -> TrieBatch:
    """The :class:`TrieBatch` of ``candidates[b][c]`` (token lists, each non-empty; every row the
    same K). Shared prefixes become one node; nodes are numbered in order of first appearance."""
    B = len(candidates)
    if B == 0:
        raise ValueError("candidates: expected at least one row")
    K = len(candidates[0])
    if K == 0 or any(len(row) != K for row in candidates):
        raise ValueError("candidates: expected the same number (>= 1) of candidates in every row")
    L = max(len(c) for row in candidates for c in row)
    if min(len(c) for row in candidates for c in row) < 1:
        raise ValueError("candidates: every candidate needs at least one token")

    rows_nodes: List[List[tuple]] = []  # per row: (token, parent) per node
    paths = torch.full((B, K, L), -1, dtype=torch.int64)
    for b, row in enumerate(candidates):
        nodes, index = [], {}
        for c, tokens in enumerate(row):
            parent = -1
            for j, t in enumerate(tokens):
                key = (parent, int(t))
                node = index.get(key)
                if node is None:
                    node = index[key] = len(nodes)
                    nodes.append(key[::-1])
                paths[b, c, j] = node
                parent = node
        rows_nodes.append(nodes)

    n = max(len(nodes) for nodes in rows_nodes)
    tokens = torch.zeros((B, n), dtype=torch.int64)
    depth = torch.zeros((B, n), dtype=torch.int64)
    tree_mask = torch.eye(n, dtype=torch.bool).repeat(B, 1, 1)
    for b, nodes in enumerate(rows_nodes):
        for i, (t, parent) in enumerate(nodes):
            tokens[b, i] = t
            if parent >= 0:
                depth[b, i] = depth[b, parent] + 1
                tree_mask[b, i] |= tree_mask[b, parent]
    lengths = torch.tensor([[len(c) for c in row] for row in candidates], dtype=torch.int64)
    candidate_ids = torch.zeros((B, K, L), dtype=torch.int64)
    for b, row in enumerate(candidates):
        for c, toks in enumerate(row):
            candidate_ids[b, c, : len(toks)] = torch.tensor(toks, dtype=torch.int64)
    node_index = torch.zeros((B, K, L), dtype=torch.int64)
    node_index[:, :, 1:] = (paths[:, :, :-1] + 1).clamp_min(0)
    return TrieBatch(*(t.to(device) for t in (tokens, depth, tree_mask,
                                              torch.tensor([len(x) for x in rows_nodes], dtype=torch.int64),
                                              candidate_ids, lengths, node_index, paths)))
