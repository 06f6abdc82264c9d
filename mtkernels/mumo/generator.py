"""``MuMoGenerator``: generation with a MuMo head, each step's candidates verified by one base forward.

One step, for every unfinished row (B rows, hidden state ``h (B, d)`` of the last token):

1. the head's top-k over base tokens and words, ``mumo_head_topk(h, W_multi, FFN(h), W_mono)``;
2. each candidate expanded to base tokens (a word to its tokens; cut to the row's remaining budget);
3. one base forward over the candidates' token trie on top of the KV cache (shared prefixes once;
   a 4-D tree mask and explicit positions: ``mumo.tree_cache``);
4. σ of every candidate by ``mumo_verify_scores_fused`` in its trie form, from the trie's hidden
   states and the base head: the length-normalised base log-probability;
5. the pick: argmax σ (ties: the head's higher-ranked candidate), or a draw from softmax(σ / τ) with
   Gumbel noise keyed by (seed, sentence, step), so a sentence's text does not depend on its batch;
6. the chosen path's KV entries and its last hidden state are kept, the other nodes dropped.

With an empty monolingual vocabulary every candidate is one base token, σ is its base
log-probability, and greedy decoding is exactly the base model's greedy decoding.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import torch

import mtkernels

from ..generation.keys import step_keys
from ..generation.model_set import cache_keyword, new_cache, select_cache_rows
from ..generation import special_tokens
from ..gumbel import gumbel_noise
from .head import MuMoHead, base_head_bias, base_head_weight
from .tree_cache import keep_paths, tree_attention_mask
from .trie import build_tries

Tensor = torch.Tensor


@dataclasses.dataclass
class GenerationStats:
    """What the last ``generate`` did: ``steps`` row-steps (one base forward serves all rows of a
    step), ``new_tokens`` base tokens emitted, and their ratio."""

    steps: int = 0
    new_tokens: int = 0
    forwards: int = 0

    @property
    def tokens_per_step(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0


class MuMoGenerator:
    """Decode with ``base_model`` and a trained :class:`~mtkernels.mumo.MuMoHead`.

    Args:
        base_model: a Hugging Face causal LM (``get_decoder()`` and ``get_output_embeddings()``).
        head: the MuMo head for this base model.
        tokenizer: the base tokenizer (for EOS and padding ids).
        k: candidates per step (the paper: 10).
    """

    def __init__(self, base_model, head: MuMoHead, tokenizer=None, *, k: int = 10):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k: expected an int >= 1, got {k!r}")
        self.model = base_model
        self.head = head
        self.tokenizer = tokenizer
        self.k = k
        self.weight = base_head_weight(base_model)
        self.bias = base_head_bias(base_model)
        if head.num_base_tokens != self.weight.shape[0]:
            raise ValueError(f"head: built for {head.num_base_tokens} base tokens, the model's head has "
                             f"{self.weight.shape[0]}")
        self.decoder = base_model.get_decoder()
        self._cache_keyword = cache_keyword(type(self.decoder))
        self.word_tokens = [list(t) for t in head.vocab.base_ids]
        self.eos_token_ids = special_tokens.eos_token_ids([base_model], [tokenizer])
        self.pad_token_id = special_tokens.pad_token_id(tokenizer, base_model, self.eos_token_ids)
        self.last_stats = GenerationStats()

    # --- one step's pieces -------------------------------------------------------------------------
    def _decode(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache) -> Tensor:
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=True, **{self._cache_keyword: cache})
        return out.last_hidden_state

    def candidates(self, hidden: Tensor, budgets: List[int]) -> List[List[List[int]]]:
        """``hidden (B, d)`` → per row, the head's top-k as base-token lists (cut to ``budgets[b]``)."""
        v_multi = self.weight.shape[0]
        k = min(self.k, v_multi + self.head.num_words)
        _, ids, _ = mtkernels.mumo_head_topk(hidden, self.weight, self.head.features(hidden), self.head.mono_weight,
                                             k=k, multi_bias=self.bias)
        out = []
        for b, row in enumerate(ids.tolist()):
            out.append([([i] if i < v_multi else self.word_tokens[i - v_multi])[: budgets[b]] for i in row])
        return out

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, *, max_new_tokens: int = 32,
                 greedy: bool = True, temperature: float = 1.0, seed: Optional[int] = None,
                 eos_token_id=None, pad_token_id: Optional[int] = None,
                 sentence_ids: Optional[Tensor] = None) -> Tensor:
        """Generate up to ``max_new_tokens`` base tokens per row.

        Args:
            input_ids: ``(B, P)`` int64 prompts, left-padded.
            attention_mask: ``(B, P)``, 1 on prompt tokens (default: all ones).
            greedy: argmax σ; else a draw from softmax(σ / temperature) keyed by ``seed``.
            sentence_ids: ``(B,)`` global indices for the sampling keys (default ``arange(B)``).

        Returns:
            ``(B, P + new)`` int64: the prompts, then each row's tokens, ``pad_token_id`` after a
            row's EOS or end (HF's layout). ``self.last_stats`` holds the step counts.
        """
        if input_ids.dim() != 2 or input_ids.dtype != torch.int64:
            raise ValueError(f"input_ids: expected a (B, P) int64 tensor, got {input_ids.dtype} {tuple(input_ids.shape)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        if not greedy and not (temperature > 0):
            raise ValueError(f"temperature: expected > 0 when sampling, got {temperature!r}")
        device = self.weight.device
        B, P = input_ids.shape
        mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).to(device, torch.int64)
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
        eos = special_tokens.token_ids(eos_token_id) if eos_token_id is not None else self.eos_token_ids
        if pad_token_id is None:
            pad_token_id = self.pad_token_id
        if seed is None and not greedy:
            seed = int(torch.randint(0, 2**62, (1,)))
        sentences = (torch.arange(B) if sentence_ids is None else sentence_ids.cpu()).to(torch.int64)
        stats = self.last_stats = GenerationStats()
        generated: List[List[int]] = [[] for _ in range(B)]
        if max_new_tokens == 0 or B == 0:
            return input_ids.clone()

        ids = input_ids.to(device)
        cache = new_cache(self.model)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        hidden = self._decode(ids, mask, positions, cache)[:, -1]
        next_position = mask.sum(-1)
        rows = list(range(B))  # batch slot -> original row
        attn = getattr(self.model.config, "_attn_implementation", "sdpa") or "sdpa"
        step = 0
        while rows:
            budgets = [max_new_tokens - len(generated[r]) for r in rows]
            cands = self.candidates(hidden, budgets)
            trie = build_tries(cands, device=device)
            tree_mask = tree_attention_mask(mask, trie.tree_mask, attn, hidden.dtype)
            trie_hidden = self._decode(trie.tokens, tree_mask, next_position.unsqueeze(1) + trie.depth, cache)
            stats.forwards += 1
            rows_hidden = torch.cat([hidden.unsqueeze(1), trie_hidden], dim=1)
            sigma = mtkernels.mumo_verify_scores_fused(rows_hidden, self.weight, trie.candidate_ids, trie.lengths,
                                                       bias=self.bias, node_index=trie.node_index)
            if greedy:
                pick = sigma.argmax(-1)
            else:
                keys = step_keys(seed, sentences[rows], step).to(sigma.device)
                cand_index = torch.arange(sigma.shape[1], device=sigma.device).expand_as(sigma)
                pick = (sigma / temperature + gumbel_noise(keys, cand_index)).argmax(-1)
            chosen = [row[c] for row, c in zip(cands, pick.tolist())]  # the picks' tokens, already on the host
            slots = torch.arange(len(rows), device=device)
            path = trie.path[slots, pick]                      # (B, L)
            length = trie.lengths[slots, pick]                 # (B,)
            mask = keep_paths(cache, mask, path[:, :max(map(len, chosen))], length)
            next_position = next_position + length
            last = path.gather(1, (length - 1).unsqueeze(1)).squeeze(1)
            hidden = trie_hidden[slots, last]

            keep = []
            for slot, (r, toks) in enumerate(zip(rows, chosen)):
                generated[r].extend(toks)
                stats.steps += 1
                stats.new_tokens += len(toks)
                if not any(t in eos for t in toks) and len(generated[r]) < max_new_tokens:
                    keep.append(slot)
            step += 1
            if len(keep) < len(rows):
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                cache = select_cache_rows(cache, index)
                mask, next_position, hidden = mask[index], next_position[index], hidden[index]
                rows = [rows[s] for s in keep]

        width = max(len(g) for g in generated)
        out = torch.full((B, P + width), int(pad_token_id), dtype=torch.int64)
        out[:, :P] = input_ids.cpu()
        for r, toks in enumerate(generated):
            out[r, P:P + len(toks)] = torch.tensor(toks, dtype=torch.int64)
        return out.to(input_ids.device)
