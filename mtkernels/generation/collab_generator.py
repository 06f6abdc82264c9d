"""``CollabGenerator``: batched collaborative decoding of Hugging Face causal LMs.

A large model and any number of small ones (MT-tuned experts, proxy-tuning's expert and
anti-expert) decode in lockstep, each with its own KV cache; every step's M logit tensors go
straight into the fused collab ops (``fused_collab_sample`` for greedy decoding and sampling,
``fused_collab_softmax`` for beam search), which combine them as ``Σ_m w_m·logits_m``.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .beam_search import beam_search, check_early_stopping
from .keys import random_seed
from .model_set import ModelSet, model_device
from .prompts import left_pad, translation_prompts
from .row_params import RowParams
from .sampling_loop import sample_loop
from .special_tokens import eos_token_ids, pad_token_id
from .stopping import StopCriteria
from .vocab_check import model_label, resolve_tokenizers

Tensor = torch.Tensor
IdsArg = Union[Tensor, Sequence[Tensor]]
_SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p")


def _embedding_rows(model) -> Optional[int]:
    try:
        return model.get_input_embeddings().weight.shape[0]
    except (AttributeError, NotImplementedError):
        return None


class CollabGenerator:
    """Collaborative decoding with one large model and M - 1 small models.

    ``z = Σ_m w_m·logits_m`` over the models' shared vocabulary (the smallest of their vocabulary
    sizes: models of one tokenizer whose heads are padded differently are fine), then greedy
    decoding, sampling (temperature, top-k → top-p → min-p) or beam search.

    Args:
        large_model: a Hugging Face causal LM (``models[0]``); logits of every model are moved to
            its device.
        small_models: a sequence of causal LMs (may be empty: the large model alone, a baseline).
            Models may sit on different devices.
        weights: the combination weights: None (all 1), one float (every model), M floats
            (large first; negative weights allowed, e.g. proxy-tuning's ``[1, 1, -1]`` for base +
            expert − anti-expert), an ``(M,)`` tensor or a ``(B, M)`` tensor of per-row weights
            (then B must match each call; or pass ``weights=`` to ``generate`` / ``translate``).
        tokenizer: one tokenizer, or a list of M (each model's prompt goes through its own chat
            template); None loads each model's tokenizer from its directory when it has one.
            Every tokenizer given or found in a model's directory must have the same vocabulary
            and BOS / EOS / UNK ids: a ``ValueError`` is raised here, before any forward pass.
        backend: the collab ops' backend (``"auto"``, ``"reference"``, ``"cpu"``, ...).
        overlap_streams: on a GPU, run the small models that share the large model's device on
            side streams, so that their kernels overlap with the large model's (same results).

    Generation stops per row at an end-of-sequence token (the tokenizers' EOS and every model's
    ``generation_config.eos_token_id``), a stop string, or ``max_new_tokens``; finished rows leave
    the batch (and every model's cache). Padding: the tokenizer's pad token, else EOS.

    The attention implementation is the one each model was loaded with: pass
    ``attn_implementation="flash_attention_2"`` (or ``"sdpa"``) to ``from_pretrained`` to choose it.
    Left padding and per-row position ids are handled here for every implementation.
    """

    def __init__(self, large_model, small_models: Sequence = (), weights=None, tokenizer=None, *,
                 backend: str = "auto", overlap_streams: bool = True):
        if isinstance(small_models, torch.nn.Module):
            small_models = [small_models]
        self.models = [large_model, *(small_models or [])]
        self.num_models = len(self.models)
        self.backend = backend
        self.overlap_streams = bool(overlap_streams)
        self.weights = self._normalize_weights(weights, None) if weights is not None else [1.0] * self.num_models
        self.tokenizers = resolve_tokenizers(self.models, tokenizer)  # raises before any forward pass
        self.tokenizer = self.tokenizers[0]
        self.device = model_device(large_model)
        self.vocab_sizes = [_embedding_rows(m) for m in self.models]
        self.eos_token_ids: List[int] = eos_token_ids(self.models, self.tokenizers)
        self.pad_token_id: int = pad_token_id(self.tokenizer, self.models[0], self.eos_token_ids)

    # --- arguments --------------------------------------------------------------------------------

    def _normalize_weights(self, weights, batch: Optional[int]):
        """M floats, or a ``(B, M)`` float tensor on the large model's device."""
        m = self.num_models
        if isinstance(weights, numbers.Real) and not isinstance(weights, bool):
            weights = [float(weights)] * m
        if isinstance(weights, Tensor):
            if weights.dim() == 0:
                weights = [float(weights)] * m
            elif weights.dim() == 1:
                if weights.shape[0] != m:
                    raise ValueError(f"weights: expected {m} values (one per model), got shape {tuple(weights.shape)}")
                weights = [float(v) for v in weights.tolist()]
            elif weights.dim() == 2:
                if weights.shape[1] != m or (batch is not None and weights.shape[0] != batch):
                    want = f"({batch if batch is not None else 'B'}, {m})"
                    raise ValueError(f"weights: expected shape {want} for {m} models, got {tuple(weights.shape)}")
                if not weights.is_floating_point():
                    raise TypeError(f"weights: expected a floating-point tensor, got {weights.dtype}")
                if not bool(torch.isfinite(weights).all()):
                    raise ValueError("weights: every weight must be finite")
                return weights if batch is None else weights.to(device=model_device(self.models[0]))
            else:
                raise ValueError(f"weights: expected M floats, (M,) or (B, M), got shape {tuple(weights.shape)}")
        if not isinstance(weights, (list, tuple)) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in weights):
            raise TypeError(f"weights: expected a float, M floats, an (M,) or a (B, M) tensor, got {weights!r}")
        if len(weights) != m:
            raise ValueError(f"weights: expected {m} floats (large model first, then {m - 1} small), got "
                             f"{len(weights)}: {list(weights)}")
        if not all(math.isfinite(float(v)) for v in weights):
            raise ValueError(f"weights: every weight must be finite, got {list(weights)}")
        return [float(v) for v in weights]

    def _model_inputs(self, input_ids: IdsArg, attention_mask) -> Tuple[List[Tensor], List[Tensor]]:
        m = self.num_models
        if isinstance(input_ids, Tensor):
            ids = [input_ids] * m
            if attention_mask is not None and not isinstance(attention_mask, Tensor):
                raise TypeError("attention_mask: with one input_ids tensor, expected one tensor or None")
            masks = [attention_mask] * m
        elif isinstance(input_ids, (list, tuple)) and len(input_ids) == m and all(
                isinstance(x, Tensor) for x in input_ids):
            ids = list(input_ids)
            if attention_mask is None:
                masks = [None] * m
            elif isinstance(attention_mask, (list, tuple)) and len(attention_mask) == m:
                masks = list(attention_mask)
            else:
                raise TypeError(f"attention_mask: with one input_ids tensor per model, expected a list of {m} "
                                f"masks (or None)")
        else:
            raise TypeError(f"input_ids: expected a (B, L) tensor or a list of {m} such tensors (one per model)")
        batch = ids[0].shape[0] if ids[0].dim() == 2 else -1
        for k, (x, mask) in enumerate(zip(ids, masks)):
            name = "input_ids" if isinstance(input_ids, Tensor) else f"input_ids[{k}]"
            if x.dim() != 2 or x.shape[0] != batch or x.shape[1] == 0:
                raise ValueError(f"{name}: expected a non-empty (B, L) tensor with the same B for every model, got "
                                 f"shape {tuple(x.shape)}")
            if x.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"{name}: expected an integer tensor, got {x.dtype}")
            if mask is None:
                mask = self._infer_mask(x)
            elif tuple(mask.shape) != tuple(x.shape):
                raise ValueError(f"attention_mask: expected shape {tuple(x.shape)} like {name}, "
                                 f"got {tuple(mask.shape)}")
            mask = mask.to(device=x.device, dtype=torch.int64)
            if not bool((mask[:, -1] == 1).all()):
                raise ValueError("attention_mask: the last column must be 1 in every row (prompts must be "
                                 "left-padded: padding first, prompt last)")
            real = x.masked_select(mask.bool())
            rows = self.vocab_sizes[k]
            if rows is not None and real.numel() and (int(real.min()) < 0 or int(real.max()) >= rows):
                raise ValueError(f"{name}: token ids must be in [0, {rows}) for {model_label(k)}, got "
                                 f"[{int(real.min())}, {int(real.max())}]")
            ids[k], masks[k] = x.to(torch.int64), mask
        return ids, masks

    def _infer_mask(self, ids: Tensor) -> Tensor:
        """As Hugging Face does: pad positions are masked when the pad token is not an EOS token."""
        pad = self.pad_token_id
        if pad not in self.eos_token_ids and bool((ids == pad).any()):
            return (ids != pad).to(torch.int64)
        return torch.ones_like(ids, dtype=torch.int64)

    def _row_param(self, value, name: str, batch: int, device):
        if isinstance(value, Tensor):
            if value.dim() != 1 or value.shape[0] != batch:
                raise ValueError(f"{name}: expected a scalar or a ({batch},) tensor, got shape {tuple(value.shape)}")
            return value.to(device)
        return value

    # --- decoding ---------------------------------------------------------------------------------

    def _generate_lists(self, input_ids: IdsArg, attention_mask=None, *, max_new_tokens: int = 256,
                        greedy: Optional[bool] = None, temperature=None, top_k=None, top_p=None, min_p=None,
                        seed: Optional[int] = None, sentence_ids=None, num_beams: int = 1,
                        length_penalty: float = 1.0, early_stopping: Union[bool, str] = False,
                        stop_strings: Union[str, Sequence[str], None] = None,
                        weights=None) -> Tuple[Tensor, List[List[int]]]:
        """``(the large model's prompt (B, L_0), B lists of generated ids)``."""
        ids, masks = self._model_inputs(input_ids, attention_mask)
        batch = ids[0].shape[0]
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1:
            raise ValueError(f"num_beams: expected an int >= 1, got {num_beams!r}")
        sampling_given = [n for n, v in zip(_SAMPLING_OPTIONS, (temperature, top_k, top_p, min_p)) if v is not None]
        if greedy is None:
            greedy = not sampling_given
        if not isinstance(greedy, bool):
            raise TypeError(f"greedy: expected a bool or None, got {type(greedy).__name__}")
        if num_beams > 1 and (not greedy or sampling_given):
            raise ValueError(f"num_beams={num_beams}: beam search does not sample; drop "
                             f"{', '.join(sampling_given) or 'greedy=False'}")
        early_stopping = check_early_stopping(early_stopping)
        if sentence_ids is None:
            sentence_ids = torch.arange(batch, dtype=torch.int64)
        else:
            sentence_ids = torch.as_tensor(sentence_ids, dtype=torch.int64).cpu().flatten()
            if sentence_ids.shape[0] != batch or bool((sentence_ids < 0).any()):
                raise ValueError(f"sentence_ids: expected {batch} indices >= 0, one per row")
        if seed is None:
            seed = 0 if greedy else random_seed()
        device = self.device
        w = self._normalize_weights(self.weights if weights is None else weights, batch)
        params = RowParams(w, *(self._row_param(v, n, batch, device) for n, v in
                                zip(_SAMPLING_OPTIONS, (1.0 if temperature is None else temperature,
                                                        0 if top_k is None else top_k,
                                                        1.0 if top_p is None else top_p,
                                                        0.0 if min_p is None else min_p))))
        stop = StopCriteria(self.eos_token_ids, stop_strings, self.tokenizer)
        if max_new_tokens == 0:
            return ids[0], [[] for _ in range(batch)]
        model_set = ModelSet(self.models, output_device=device, overlap=self.overlap_streams)
        try:
            with torch.no_grad():
                logits = model_set.prefill(ids, masks)
                if num_beams > 1:
                    generated = beam_search(model_set, logits, params, num_beams=num_beams,
                                            max_new_tokens=max_new_tokens, stop=stop, length_penalty=length_penalty,
                                            early_stopping=early_stopping, backend=self.backend)
                else:
                    generated = sample_loop(model_set, logits, params, greedy=greedy, seed=int(seed),
                                            sentence_ids=sentence_ids, max_new_tokens=max_new_tokens, stop=stop,
                                            backend=self.backend)
        finally:
            model_set.release()
        return ids[0], generated

    def generate(self, input_ids: IdsArg, attention_mask=None, *, max_new_tokens: int = 256,
                 greedy: Optional[bool] = None, temperature=None, top_k=None, top_p=None, min_p=None,
                 seed: Optional[int] = None, sentence_ids=None, num_beams: int = 1, length_penalty: float = 1.0,
                 early_stopping: Union[bool, str] = False, stop_strings: Union[str, Sequence[str], None] = None,
                 weights=None) -> Tensor:
        """Generate continuations of left-padded prompts, like Hugging Face's ``generate``.

        Args:
            input_ids: ``(B, L)`` int64 shared by every model, or a list of M ``(B, L_m)`` tensors
                (one prompt per model, e.g. through each model's own chat template).
            attention_mask: ``(B, L)`` (or a list of M), 1 for tokens, 0 for the left padding.
                None: every token counts, except pad tokens when the pad token is not an EOS
                token (as in HF).
            max_new_tokens: at most this many new tokens per row.
            greedy: argmax decoding (lowest id on ties; the sampling options are then unused).
                None: greedy unless a sampling option (temperature, top_k, top_p, min_p) is given.
            temperature, top_k, top_p, min_p: sampling options (floats / int, or ``(B,)``
                tensors); defaults 1.0, 0 (off), 1.0 (off), 0.0 (off); filters apply top-k →
                top-p → min-p. The models' generation_config sampling defaults are not used.
            seed: with ``sentence_ids``, fixes the sampling noise: row b's t-th token uses the key
                ``keys.step_keys(seed, sentence_ids[b], t)``, so a sentence's output does not
                depend on the batch it is in. None: a random seed (from torch's global RNG).
            sentence_ids: ``(B,)`` global sentence indices; default ``0..B-1``.
            num_beams, length_penalty, early_stopping: beam search (``num_beams > 1``) as in HF;
                scores are sums of log-probabilities / (generated length ** length_penalty).
            stop_strings: a string or strings that end a row once its generated text contains
                them (the token completing one is kept).
            weights: this call's weights (as the constructor's; ``(B, M)`` for per-row weights).

        Returns:
            ``(B, L_0 + T)`` int64 on the prompt's device: the large model's prompt followed by the
            new tokens, ``pad_token_id`` after a row's end (T: the longest row's new tokens).
        """
        prompt, generated = self._generate_lists(
            input_ids, attention_mask, max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature,
            top_k=top_k, top_p=top_p, min_p=min_p, seed=seed, sentence_ids=sentence_ids, num_beams=num_beams,
            length_penalty=length_penalty, early_stopping=early_stopping, stop_strings=stop_strings,
            weights=weights)
        width = max((len(g) for g in generated), default=0)
        out = torch.full((prompt.shape[0], prompt.shape[1] + width), self.pad_token_id, dtype=torch.int64)
        out[:, :prompt.shape[1]] = prompt.cpu()
        for row, tokens in enumerate(generated):
            if tokens:
                out[row, prompt.shape[1]:prompt.shape[1] + len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        return out.to(prompt.device)

    def prompts(self, texts: Sequence[str], src_lang: str, tgt_lang: str) -> List[List[List[int]]]:
        """Each model's translation prompts: ``[model][sentence] -> ids``, through each model's
        tokenizer (chat template with the generation prompt, or plain text without one)."""
        if any(t is None for t in self.tokenizers):
            raise ValueError("translate: needs a tokenizer (pass tokenizer=, or load the models from directories "
                             "that hold one)")
        cache: Dict[int, List[List[int]]] = {}
        out = []
        for tok in self.tokenizers:
            if id(tok) not in cache:
                cache[id(tok)] = translation_prompts(tok, texts, src_lang, tgt_lang)
            out.append(cache[id(tok)])
        return out

    def translate(self, texts: Sequence[str], src_lang: str, tgt_lang: str, *, batch_size: int = 16,
                  max_new_tokens: int = 256, sentence_ids: Optional[Sequence[int]] = None, weights=None,
                  **decoding) -> List[str]:
        """Translate ``texts`` from ``src_lang`` to ``tgt_lang`` (codes such as ``"ja"`` or names
        such as ``"Japanese"``) with Llama-3's translation prompt.

        Args:
            texts: the sentences; translations come back in the same order.
            batch_size: sentences per batch (batches are formed from sentences of similar prompt
                length; a sentence's output does not depend on its batch).
            max_new_tokens: per sentence.
            sentence_ids: global indices of ``texts`` (default ``0..N-1``): sampling keys derive
                from them, so a corpus split over ranks gives the same outputs as one process.
            weights: as in :meth:`generate`; ``(N, M)`` for per-sentence weights.
            decoding: :meth:`generate`'s decoding options (greedy by default; ``temperature``,
                ``top_k``, ``top_p``, ``min_p``, ``seed``, ``num_beams``, ``length_penalty``,
                ``early_stopping``, ``stop_strings``).

        Returns:
            One string per text: the generated tokens after the prompt, decoded without special
            tokens, cut at the first stop string, stripped of surrounding whitespace.
        """
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings (wrap a single sentence in a list)")
        texts = list(texts)
        if not texts:
            return []
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        ids = list(range(len(texts))) if sentence_ids is None else [int(i) for i in sentence_ids]
        if len(ids) != len(texts):
            raise ValueError(f"sentence_ids: expected {len(texts)} indices, got {len(ids)}")
        per_model = self.prompts(texts, src_lang, tgt_lang)
        if isinstance(weights, Tensor) and weights.dim() == 2:
            if weights.shape[0] != len(texts):
                raise ValueError(f"weights: expected ({len(texts)}, {self.num_models}) per-sentence weights, got "
                                 f"{tuple(weights.shape)}")
        greedy = decoding.get("greedy")
        samples = greedy is False or (greedy is None and any(decoding.get(n) is not None for n in _SAMPLING_OPTIONS))
        if samples and decoding.get("seed") is None:
            decoding["seed"] = random_seed()  # one seed for every batch of this call
        stop = StopCriteria(self.eos_token_ids, decoding.get("stop_strings"), self.tokenizer)
        order = sorted(range(len(texts)), key=lambda i: -len(per_model[0][i]))
        results: List[Optional[str]] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch_ids, batch_masks = [], []
            for prompts in per_model:
                x, mask = left_pad([prompts[i] for i in rows], self.pad_token_id)
                batch_ids.append(x)
                batch_masks.append(mask)
            w = weights[torch.tensor(rows)] if isinstance(weights, Tensor) and weights.dim() == 2 else weights
            _, generated = self._generate_lists(batch_ids, batch_masks, max_new_tokens=max_new_tokens,
                                                sentence_ids=[ids[i] for i in rows], weights=w, **decoding)
            for i, tokens in zip(rows, generated):
                if tokens and tokens[-1] in stop.eos_token_ids:
                    tokens = tokens[:-1]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                results[i] = stop.cut_text(text).strip()
        return results
