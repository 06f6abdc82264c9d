"""One base forward over a trie of candidates on top of a KV cache, and keeping only the chosen path.

The cache holds, per row, T slots (left padding first, then real tokens; ``past_mask (B, T)`` marks
the real ones). The trie's n nodes are appended as one forward: node q attends to the row's real
past tokens and to its own ancestors (``tree_attention_mask``), at position ``next_position + depth``.
After the pick, :func:`keep_paths` rewrites every layer to ``T + l_max`` slots per row: left padding
grows by ``l_max - l_b``, then the row's T old slots, then its chosen path's l_b nodes. Positions are
passed explicitly every step, so padding never shifts them, and no token is ever recomputed.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def tree_attention_mask(past_mask: Tensor, tree_mask: Tensor, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """The 4-D mask ``(B, 1, n, T + n)`` of a trie forward.

    Args:
        past_mask: ``(B, T)`` 1 where a cache slot holds a real token.
        tree_mask: ``(B, n, n)`` bool, node q may see node k.
        attn_implementation: the model's attention; "eager" takes an additive float mask, the
            others (sdpa, flex, flash) a boolean one (True: attend).
        dtype: the model's dtype (the additive mask's).
    """
    B, n, _ = tree_mask.shape
    past = past_mask.to(torch.bool).unsqueeze(1).expand(B, n, past_mask.shape[1])
    allowed = torch.cat([past, tree_mask.to(past.device)], dim=-1).unsqueeze(1)
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def _layers(cache):
    """(get, set) access to every layer's key and value tensors ``(B, heads, S, d)``."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if type(layer).__name__ != "DynamicLayer":
                raise TypeError(f"MuMo generation needs full-attention cache layers, got {type(layer).__name__}")
        return [(layer, "keys") for layer in layers] + [(layer, "values") for layer in layers]
    if hasattr(cache, "key_cache"):  # older transformers: lists of tensors
        return [(cache.key_cache, i) for i in range(len(cache.key_cache))] + \
               [(cache.value_cache, i) for i in range(len(cache.value_cache))]
    raise TypeError(f"cannot rewrite a cache of type {type(cache).__name__}")


def _get(owner, key):
    return getattr(owner, key) if isinstance(key, str) else owner[key]


def _set(owner, key, value):
    if isinstance(key, str):
        setattr(owner, key, value)
    else:
        owner[key] = value


def keep_paths(cache, past_mask: Tensor, path: Tensor, path_length: Tensor):
    """Keep each row's past and its chosen path's nodes; drop the other trie nodes.

    Args:
        cache: the cache after the trie forward (``T + n`` slots per row).
        past_mask: ``(B, T)`` the mask before the trie forward.
        path: ``(B, l_max)`` int64 node indices of the chosen paths (anything past a row's length).
        path_length: ``(B,)`` int64 in 1..l_max.

    Returns:
        the new past mask ``(B, T + l_max)`` (the cache is rewritten in place).
    """
    B, T = past_mask.shape
    l_max = path.shape[1]
    device = past_mask.device
    slot = torch.arange(T + l_max, device=device).unsqueeze(0)          # (1, T + l_max)
    shift = (l_max - path_length.to(device)).unsqueeze(1)              # extra left padding per row
    src = slot - shift                                                  # index into [old T ; path]
    in_path = src >= T
    path_slot = T + path.to(device).gather(1, (src - T).clamp(0, l_max - 1))
    source = torch.where(in_path, path_slot, src.clamp_min(0))          # into the T + n cache slots
    # the new mask: 0 on the added padding, 1 on the path, the old mask on the old slots
    mask = torch.where(in_path, 1, past_mask.gather(1, src.clamp(0, T - 1))).masked_fill(src < 0, 0)
    for owner, key in _layers(cache):
        t = _get(owner, key)
        index = source.to(t.device).view(B, 1, -1, 1).expand(B, t.shape[1], -1, t.shape[3])
        _set(owner, key, t.gather(2, index))
    return mask.to(past_mask.dtype)
