"""The M models of a collaborative decoder, each with its own KV cache.

Every model sees its own prompt (its own tokens and attention mask, left-padded) and then the
same generated tokens. Per model the state is:

    cache                 a transformers cache (DynamicCache), batch dimension first
    mask  (B, L_m + t)    attention mask: the prompt's, then a 1 per generated token
    next_position (B,)    position of the next token: the number of real tokens so far

Positions come from the attention mask (``cumsum - 1``), so left padding does not shift them.
Rows can be dropped, reordered or repeated (beam search) with :meth:`ModelSet.keep`, which
index-selects every cache, mask and position; later steps run only the rows kept.

On a GPU, the models after the first that share its device run on side streams, so that their
small kernels overlap with the large model's. Every tensor a side-stream model owns (cache, mask,
positions) is created and used on that stream only; the shared inputs and the returned logits
cross with ``wait_stream`` (each phase starts by waiting for the current stream) and
``record_stream`` (so the caching allocator does not hand their memory back too early).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import List, Optional, Sequence

import torch

Tensor = torch.Tensor
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def model_device(model) -> torch.device:
    """Where a model takes its input ids: its input embedding's device (models split over
    devices with a device map take inputs there)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


@functools.lru_cache(maxsize=None)
def _forward_parameters(cls) -> frozenset:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def cache_keyword(cls) -> str:
    """The keyword a model class's forward takes its KV cache by: ``cache`` in recent
    transformers, ``past_key_values`` before."""
    params = _forward_parameters(cls)
    return "cache" if "cache" in params or "past_key_values" not in params else "past_key_values"


def new_cache(model):
    """An empty cache for ``model``: transformers' DynamicCache (with the model's config, so
    sliding-window layers get sliding layers)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers versions whose DynamicCache takes no config
        return DynamicCache()


def select_cache_rows(cache, rows: Tensor):
    """Keep ``rows`` (``(R,)`` int64, may repeat) of a cache's batch dimension, in place through
    the cache's own method when it has one; returns the cache.

    transformers' ``reorder_cache`` index-selects every layer's tensors and moves the indices to
    each layer's device (models split over devices keep layers on several); ``batch_select_indices``
    is the fallback for caches without it."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(rows)
        return cache
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    if isinstance(cache, (tuple, list)):  # legacy tuples of per-layer (key, value, ...) tensors
        return type(cache)(tuple(t.index_select(0, rows.to(t.device)) for t in layer) for layer in cache)
    raise TypeError(f"cannot select rows of a cache of type {type(cache).__name__}")


class ModelSet:
    """M causal LMs decoded in lockstep, one KV cache each.

    ``prefill`` runs every model once on its whole prompt; each ``step`` runs every model once on
    one new token per row, reusing its cache (no prefix is recomputed). Logits come back on
    ``output_device`` (default: the first model's device), one ``(B, V_m)`` tensor per model, in
    the model's dtype (float32 when it is not one the collab ops take).
    """

    def __init__(self, models: Sequence[torch.nn.Module], output_device: Optional[torch.device] = None, *,
                 overlap: bool = True):
        if not models:
            raise ValueError("ModelSet: need at least one model")
        self.models = list(models)
        self.devices = [model_device(m) for m in self.models]
        self.output_device = torch.device(output_device) if output_device is not None else self.devices[0]
        params = [_forward_parameters(type(m)) for m in self.models]
        self._cache_keyword = [cache_keyword(type(m)) for m in self.models]
        self._logits_to_keep = ["logits_to_keep" in p for p in params]
        first = self.devices[0]
        # side streams only where they can overlap: models on the first model's GPU
        self.streams = [torch.cuda.Stream(device=d) if overlap and m > 0 and d.type == "cuda" and d == first else None
                        for m, d in enumerate(self.devices)]
        self.caches: List = [None] * len(self.models)
        self.masks: List[Optional[Tensor]] = [None] * len(self.models)
        self.next_positions: List[Optional[Tensor]] = [None] * len(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def batch_size(self) -> int:
        return 0 if self.masks[0] is None else self.masks[0].shape[0]

    @contextlib.contextmanager
    def _on_stream(self, m: int, *shared: Tensor):
        """Run model ``m``'s work on its side stream (if it has one): the stream first waits for
        the current one, and ``shared`` tensors (made on the current stream) are marked as used
        there."""
        stream = self.streams[m]
        if stream is None:
            yield
            return
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        for t in shared:
            if t.device.type == "cuda":
                t.record_stream(stream)
        with torch.cuda.stream(stream):
            yield

    def _join(self, logits: List[Tensor]) -> List[Tensor]:
        """The current stream waits for every side stream; the logits are marked as used on it."""
        for m, stream in enumerate(self.streams):
            if stream is not None:
                current = torch.cuda.current_stream(stream.device)
                current.wait_stream(stream)
                logits[m].record_stream(current)
        return logits

    def _forward(self, m: int, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": self.masks[m], "position_ids": position_ids,
                  "use_cache": True, self._cache_keyword[m]: self.caches[m]}
        if self._logits_to_keep[m]:
            kwargs["logits_to_keep"] = 1
        out = self.models[m](**kwargs)
        for name in ("cache", "past_key_values"):  # the model may hand back a new cache object
            returned = getattr(out, name, None)
            if returned is not None:
                self.caches[m] = returned
                break
        logits = out.logits[:, -1, :]
        if logits.dtype not in LOGIT_DTYPES:
            logits = logits.float()
        return logits.to(self.output_device)

    def prefill(self, input_ids: Sequence[Tensor], attention_mask: Sequence[Tensor]) -> List[Tensor]:
        """Run each model on its prompt.

        Args:
            input_ids: M tensors ``(B, L_m)`` int64, left-padded.
            attention_mask: M tensors ``(B, L_m)``, 1 for prompt tokens, 0 for padding.

        Returns:
            M tensors ``(B, V_m)``: each model's logits for the first new token.
        """
        if len(input_ids) != len(self.models) or len(attention_mask) != len(self.models):
            raise ValueError(f"prefill: expected {len(self.models)} input_ids and attention masks, one per model")
        out = []
        for m, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            device = self.devices[m]
            with self._on_stream(m, ids, mask):
                ids, mask = ids.to(device), mask.to(device=device, dtype=torch.int64)
                positions = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
                self.caches[m] = new_cache(self.models[m])
                self.masks[m] = mask
                self.next_positions[m] = mask.sum(-1)
                out.append(self._forward(m, ids, positions))
        return self._join(out)

    def step(self, tokens: Tensor) -> List[Tensor]:
        """Append one token per row (``(B,)`` int64) to every model; returns M ``(B, V_m)`` logits
        for the next token."""
        out = []
        for m, device in enumerate(self.devices):
            with self._on_stream(m, tokens):
                ids = tokens.to(device).view(-1, 1)
                mask = self.masks[m]
                self.masks[m] = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                positions = self.next_positions[m].view(-1, 1)
                out.append(self._forward(m, ids, positions))
                self.next_positions[m] = self.next_positions[m] + 1
        return self._join(out)

    def keep(self, rows: Tensor) -> None:
        """Keep only ``rows`` (``(R,)`` int64 indices into the current batch; repeats allowed),
        in that order, in every model's cache, mask and positions."""
        rows = rows.to(torch.int64)
        for m, device in enumerate(self.devices):
            with self._on_stream(m, rows):
                r = rows.to(device)
                self.caches[m] = select_cache_rows(self.caches[m], r)
                self.masks[m] = self.masks[m].index_select(0, r)
                self.next_positions[m] = self.next_positions[m].index_select(0, r)
        for m, stream in enumerate(self.streams):  # later work on the current stream sees the selection
            if stream is not None:
                torch.cuda.current_stream(stream.device).wait_stream(stream)

    def release(self) -> None:
        """Drop the caches (their memory goes back as soon as nothing else holds them)."""
        self.caches = [None] * len(self.models)
        self.masks = [None] * len(self.models)
        self.next_positions = [None] * len(self.models)
