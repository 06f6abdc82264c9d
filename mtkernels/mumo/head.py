"""``MuMoHead``: the monolingual part of a MuMo head, trained beside a frozen base model.

For a base hidden state ``h`` (the last layer's, after the final norm: what the base ``lm_head``
reads), the head scores ``V_multi + V_mono`` outputs:

    [ h · W_multiᵀ ;  g_mono(FFN(h)) ]       W_multi: the base lm_head (frozen)
    FFN(h) = h + W_down(silu(W_gate h) ⊙ W_up h)      d → d/4 → d, a residual SwiGLU block
    g_mono(f) = f · W_monoᵀ                   W_mono: (V_mono, d)

``W_down`` starts at zero, so FFN starts as the identity, and row j of ``W_mono`` starts as the
mean of the base head's rows for word j's base tokens: an untrained head scores a word by the
mean of its tokens' base logits.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import torch
from torch import nn

from .vocab import MonoVocab

CONFIG_NAME = "mumo_head.json"
WEIGHTS_NAME = "mumo_head.safetensors"
VOCAB_NAME = "mono_vocab.json"


def base_head_weight(base_model) -> torch.Tensor:
    """The base model's output projection ``(V_multi, d)``."""
    head = base_model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError("base_model: expected a causal LM with an output projection (get_output_embeddings())")
    return head.weight


def base_head_bias(base_model) -> Optional[torch.Tensor]:
    return getattr(base_model.get_output_embeddings(), "bias", None)


class SwiGLUBlock(nn.Module):
    """``x + W_down(silu(W_gate x) ⊙ W_up x)``, ``d → inner → d``, ``W_down`` zero at start."""

    def __init__(self, d: int, inner: int, dtype=None, device=None):
        super().__init__()
        self.gate = nn.Linear(d, inner, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(d, inner, bias=False, dtype=dtype, device=device)
        self.down = nn.Linear(inner, d, bias=False, dtype=dtype, device=device)
        nn.init.zeros_(self.down.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class MuMoHead(nn.Module):
    """The trainable monolingual part of a MuMo head for ``base_model`` and ``vocab``.

    Args:
        base_model: a Hugging Face causal LM (its ``lm_head`` is W_multi; it is not copied).
        vocab: the :class:`MonoVocab` whose words the head predicts (``V_mono = len(vocab)``).
        ffn_size: the SwiGLU block's inner size (default ``d // 4``).

    ``features(hidden (N, d)) -> (N, d)`` is FFN(h); ``mono_logits(hidden) -> (N, V_mono)``.
    The kernels take the pieces: ``mumo_head_topk(h, W_multi, head.features(h), head.mono_weight)``.
    Parameters are created in the base head's dtype and on its device.
    """

    def __init__(self, base_model, vocab: MonoVocab, *, ffn_size: Optional[int] = None, _init_rows: bool = True):
        super().__init__()
        w = base_head_weight(base_model)
        v_multi, d = w.shape
        self.vocab = vocab
        self.num_base_tokens = int(v_multi)
        self.hidden_size = int(d)
        self.ffn_size = int(ffn_size) if ffn_size is not None else max(1, d // 4)
        self.ffn = SwiGLUBlock(d, self.ffn_size, dtype=w.dtype, device=w.device)
        with warnings.catch_warnings():  # an empty vocabulary (plain decoding) makes a (0, d) layer
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.mono = nn.Linear(d, len(vocab), bias=False, dtype=w.dtype, device=w.device)
        for ids in vocab.base_ids:
            if max(ids) >= v_multi:
                raise ValueError(f"vocab: base id {max(ids)} is outside the base head's {v_multi} rows")
        if _init_rows:
            self.reset_mono_rows(w)

    @torch.no_grad()
    def reset_mono_rows(self, base_weight: torch.Tensor) -> None:
        """Row j of ``W_mono`` := mean of ``base_weight`` rows of word j's base tokens (in float32)."""
        for j, ids in enumerate(self.vocab.base_ids):
            rows = base_weight.index_select(0, torch.tensor(ids, device=base_weight.device))
            self.mono.weight[j] = rows.float().mean(0).to(self.mono.weight.dtype)

    @property
    def mono_weight(self) -> torch.Tensor:
        """``(V_mono, d)``: g_mono's weight."""
        return self.mono.weight

    @property
    def num_words(self) -> int:
        return len(self.vocab)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden (..., d) -> (..., d)``: FFN(h), the input of g_mono."""
        return self.ffn(hidden.to(self.mono.weight.dtype))

    def mono_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden (..., d) -> (..., V_mono)``."""
        return self.mono(self.features(hidden))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mono_logits(hidden)

    # --- files -----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str) -> None:
        """Write the head (config, weights, vocabulary) to ``directory``; the base model is not saved."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        config = {"format": "mtkernels-mumo-head", "version": 1, "hidden_size": self.hidden_size,
                  "ffn_size": self.ffn_size, "num_base_tokens": self.num_base_tokens, "num_words": self.num_words}
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        self.vocab.save(os.path.join(directory, VOCAB_NAME))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  os.path.join(directory, WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, directory: str, base_model) -> "MuMoHead":
        """A head saved by :meth:`save_pretrained`, for ``base_model`` (checked against the saved sizes)."""
        from safetensors.torch import load_file

        with open(os.path.join(directory, CONFIG_NAME), encoding="utf-8") as f:
            config = json.load(f)
        w = base_head_weight(base_model)
        if (w.shape[0], w.shape[1]) != (config["num_base_tokens"], config["hidden_size"]):
            raise ValueError(f"base_model: its head is {tuple(w.shape)}, the saved MuMo head was trained for "
                             f"({config['num_base_tokens']}, {config['hidden_size']})")
        vocab = MonoVocab.load(os.path.join(directory, VOCAB_NAME))
        head = cls(base_model, vocab, ffn_size=config["ffn_size"], _init_rows=False)
        state = load_file(os.path.join(directory, WEIGHTS_NAME), device=str(w.device))
        head.load_state_dict({k: v.to(w.dtype) for k, v in state.items()})
        return head
