"""Ahead-of-time compile specs of every Triton kernel: each constexpr / num_warps / dtype variant
its launcher picks, in the form ``triton.compile`` takes (tests/test_triton_aot.py compiles them
for sm_80 and sm_90 and checks that none spills).

Each spec is a dict:

- ``name``: ``kernel[dtypes;constexprs;w<num_warps>]``, ``;D`` when the ints are divisible by 16;
- ``fn``: the ``@triton.jit`` kernel;
- ``signature``: ``{argument: type}`` in kernel order (``"*fp32"``, ``"i32"``, ..., ``"constexpr"``);
- ``constexprs``: ``{name: value}``;
- ``num_warps``;
- ``attrs``: ``{(argument index,): [["tt.divisibility", 16]]}``, the JIT's specialisation of
  aligned pointers (every pointer) and, for aligned specs, of the row strides and lengths;
- ``options``: the launch options (``utils.LAUNCH_OPTIONS``).

So that a compile is ``triton.compile(ASTSource(fn=spec["fn"], signature=spec["signature"],
constexprs=spec["constexprs"], attrs=spec["attrs"]), target=..., options=dict(spec["options"],
num_warps=spec["num_warps"]))``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import torch

from . import collab, mumo_head, self_evolution_kd
from .collab_kernels import (MAX_MODELS, collab_gumbel_argmax_kernel, collab_logits_kernel,
                             collab_threshold_mass_kernel, collab_topk_kernel)
from .kd_kernels import kd_rows_kernel
from .mumo_head_kernels import ce_rows_kernel
from .utils import LAUNCH_OPTIONS


def _signature(fn, types: Dict[str, str]) -> Dict[str, str]:
    """Argument types in kernel order; arguments not in ``types`` are constexprs."""
    return {name: types.get(name, "constexpr") for name in fn.arg_names}


def _divisibility(signature: Dict[str, str], ints: Iterable[str]) -> dict:
    """tt.divisibility=16 on every pointer (the JIT sees aligned tensors) and on ``ints``."""
    names = list(signature)
    divisible = [n for n, t in signature.items() if t.startswith("*")] + list(ints)
    return {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}


def _spec(fn, dtypes: Sequence[str], signature: Dict[str, str], constexprs: dict, num_warps: int,
          aligned_ints: Sequence[str]) -> dict:
    tag = ",".join(f"{k}={v}" for k, v in constexprs.items() if k != "NUM_MODELS")
    aligned = bool(aligned_ints)
    return dict(name=f"{fn.fn.__name__}[{'/'.join(dtypes)};{tag};w{num_warps}{';D' if aligned else ''}]",
                fn=fn, signature=signature, constexprs=constexprs, num_warps=num_warps,
                attrs=_divisibility(signature, aligned_ints), options=dict(LAUNCH_OPTIONS))


# --- collab ----------------------------------------------------------------------------------------

def _collab_signature(fn, dtypes: Sequence[str], extra: Dict[str, str]) -> Dict[str, str]:
    """Models' pointers (unused slots repeat model 0), int32 row strides, weights, temperatures,
    V, the given extra arguments, constexprs last."""
    dtypes = list(dtypes) + [dtypes[0]] * (MAX_MODELS - len(dtypes))
    types = {f"x{i}": f"*{d}" for i, d in enumerate(dtypes)}
    types.update({f"st{i}": "i32" for i in range(MAX_MODELS)}, w_ptr="*fp32", tau_ptr="*fp32", inv_tau_ptr="*fp64",
                 V="i32", **extra)
    return _signature(fn, types)


def _collab_spec(fn, dtypes: Sequence[str], extra: Dict[str, str], num_warps: int, **constexprs) -> dict:
    # one model: row strides and V divisible by 16 (V = 32000, 152064, ...), as the JIT then
    # specialises them; several models: unaligned rows (padded heads, V = 4099, ...)
    aligned_ints = [f"st{i}" for i in range(len(dtypes))] + ["V"] if len(dtypes) == 1 else []
    return _spec(fn, dtypes, _collab_signature(fn, dtypes, extra), dict(constexprs, NUM_MODELS=len(dtypes)),
                 num_warps, aligned_ints)


def collab_specs() -> List[dict]:
    """Every collab kernel with the constexpr variants and num_warps its launcher picks: each dtype,
    1 and 4 models, and the tile / K_PAD range (tiles from the smallest to the largest, k from 1 to
    1024)."""
    mixed = ["fp32", "bf16", "fp16", "bf16"]  # 4 models: the most loads in flight
    singles = [["fp32"], ["bf16"], ["fp16"]]
    specs = []
    topk_extra = dict(k="i32", cand_ptr="*i64", part_max_ptr="*fp32", part_sum_ptr="*fp32")
    topk_shapes = [(16, 16), (1024, 1), (1024, 128), (4096, 1), (4096, 8), (4096, 64), (4096, 512), (8192, 1024)]
    for dtypes, shapes in [(mixed, topk_shapes)] + [(d, [(4096, 64)]) for d in singles]:
        for tile, k_pad in shapes:
            warps = collab.num_warps_for(tile, max_warps=collab.TOPK_MAX_WARPS)
            specs.append(_collab_spec(collab_topk_kernel, dtypes, topk_extra, warps, TILE=tile, K_PAD=k_pad,
                                      BITONIC=True))
    stream = [(collab_logits_kernel, dict(out_ptr="*fp32")),
              (collab_threshold_mass_kernel, dict(thr_ptr="*fp32", cut_ptr="*i64", active_ptr="*i8", lse_ptr="*fp32",
                                                  T="i32", mass_ptr="*fp32", count_ptr="*i32")),
              (collab_gumbel_argmax_kernel, dict(thr_ptr="*fp32", cut_ptr="*i64", keys_ptr="*i64", best_ptr="*i64",
                                                 best_z_ptr="*fp32"))]
    for fn, extra in stream:
        for dtypes, tiles in [(mixed, (512, 4096))] + [(d, (4096,)) for d in singles]:
            for tile in tiles:
                specs.append(_collab_spec(fn, dtypes, extra, collab.num_warps_for(tile), TILE=tile))
    return specs


# --- self-evolution KD -----------------------------------------------------------------------------

_KD_TYPES = dict(student_ptr="*fp32", teacher_ptr="*fp32", labels_ptr="*i64", hard_ptr="*i8",
                 grad_scale_ptr="*fp32", loss_ptr="*fp32", d_ptr="*fp32", is_hard_ptr="*i8",
                 stride_s="i32", stride_t="i32", row_len_s="i32", vocab="i32", ignore_index="i32",
                 hard_rule="i32", loss_kind="i32", compute_grad="i32",
                 lam="fp32", log_lam="fp32", lam_log_lam="fp32", log_beta="fp32", log_1m_beta="fp32",
                 beta="fp32", gamma="fp32", inv_temperature="fp32")


def kd_specs() -> List[dict]:
    """kd_rows_kernel at every BLOCK / num_warps the GPU launcher picks (fp32 logits); the largest
    BLOCK also with row strides, row length and vocab divisible by 16 (V = 32000, 152064, ...), as
    the JIT specialises them."""
    signature = _signature(kd_rows_kernel, _KD_TYPES)
    specs = []
    blocks = self_evolution_kd.GPU_BLOCKS
    for block in blocks:
        warps = self_evolution_kd.kd_config(block, torch.device("cuda"))[1]
        for aligned in ([False, True] if block == blocks[-1] else [False]):
            aligned_ints = ["stride_s", "stride_t", "row_len_s", "vocab"] if aligned else []
            specs.append(_spec(kd_rows_kernel, ["fp32"], signature, dict(BLOCK=block), warps, aligned_ints))
    return specs


# --- MuMo head --------------------------------------------------------------------------------------

_CE_TYPES = dict(logits_ptr="*fp32", targets_ptr="*i64", grad_scale_ptr="*fp32", loss_ptr="*fp32", stride="i32",
                 cols="i32", ignore_index="i32", compute_grad="i32")


def mumo_head_specs() -> List[dict]:
    """ce_rows_kernel at every BLOCK / num_warps the GPU launcher picks; the largest BLOCK also with
    the row stride and length divisible by 16, as the JIT specialises them."""
    signature = _signature(ce_rows_kernel, _CE_TYPES)
    specs = []
    blocks = mumo_head.GPU_BLOCKS
    for block in blocks:
        warps = mumo_head.ce_config(block, torch.device("cuda"))[1]
        for aligned in ([False, True] if block == blocks[-1] else [False]):
            specs.append(_spec(ce_rows_kernel, ["fp32"], signature, dict(BLOCK=block), warps,
                               ["stride", "cols"] if aligned else []))
    return specs


def specs() -> List[dict]:
    """Every kernel's specs: collab_specs() + kd_specs() + mumo_head_specs()."""
    return collab_specs() + kd_specs() + mumo_head_specs()
