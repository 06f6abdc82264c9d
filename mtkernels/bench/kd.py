"""Self-evolution KD loss, forward + backward: the cases shared by ``mtkernels bench``,
``benchmarks/bench_kd.py`` and the GPU table (``mtkernels.bench.gpu_table``), on CPU tensors and,
where there is a CUDA device, on CUDA tensors.

- ``fused-<backend>``: :func:`mtkernels.self_evolution_kd_loss` (mode ``forward_kd``): the ``cpu``
  backend on CPU tensors, the ``cuda`` and ``triton`` backends on CUDA tensors;
- ``eager``: forward_kd in plain PyTorch (full logits, float32 log-softmaxes, autograd);
- ``liger-chunked-jsd``: Liger-Kernel's ``LigerFusedLinearJSDLoss(beta=0)`` (forward KL with the
  same 0.5 / 0.5 weights), when liger-kernel is installed: ``compiled=False`` on CPU tensors, its
  default ``compiled=True`` on CUDA tensors;
- ``gemm-floor``: the four GEMMs alone (student logits, the two student-gradient GEMMs, teacher logits).

A case that cannot run here raises ``Unavailable`` with the reason, from ``make_case``. The
vocabulary-parallel loss on several processes against one is ``mtkernels.bench.kd_vocab_parallel``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import mtkernels
from mtkernels import backends

from .case_table import add_ratios, format_case_table, timed_record
from .measure import Timing

Shape = Tuple[int, int, int]  # (N, H, V)
DEFAULT_SHAPES: List[Shape] = [(512, 256, 32000)]
LARGE_SHAPES: List[Shape] = [(4096, 1024, 32000), (1024, 1024, 128256)]

DEVICES: Tuple[str, ...] = ("cpu", "cuda")
# The fused backends each device's cases are named after (listed even where one cannot run, so
# that the pytest ids are the same on every machine and a missing backend shows as a skip).
FUSED_CANDIDATES: Dict[str, Tuple[str, ...]] = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}
BASELINE_CASES: Tuple[str, ...] = ("eager", "liger-chunked-jsd", "gemm-floor")
OP = "kd_forward_kd_fwd_bwd"


class Unavailable(Exception):
    """A case that cannot run on this machine; the message says why."""


def cuda_missing_reason() -> Optional[str]:
    """Why CUDA tensors cannot be used here, or None when they can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA device (this torch, {torch.__version__}, is not a CUDA build)"
    return "no CUDA device (torch.cuda.is_available() is False)"


def devices() -> List[str]:
    """The devices whose tensors the cases run on here: the CPU, and CUDA when there is a device."""
    return [d for d in DEVICES if d == "cpu" or cuda_missing_reason() is None]


def _serves(backend: str, device: torch.device) -> bool:
    try:
        backends.resolve_backend(backend, device, "kd")
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    return True


def kd_backends(device="cpu") -> List[str]:
    """Fused backends with KD kernels that run on ``device`` tensors here (never the reference;
    Triton only on a GPU, never under its CPU interpreter)."""
    device = torch.device(device)
    if device.type == "cuda" and cuda_missing_reason() is not None:
        return []
    available = mtkernels.available_backends()
    return [b for b in FUSED_CANDIDATES.get(device.type, ())
            if b in available and backends.has_kernel(b, "kd", "rows") and _serves(b, device)]


def case_names(device="cpu") -> List[str]:
    """Every case named for ``device``, whether or not it can run here."""
    return [f"fused-{b}" for b in FUSED_CANDIDATES[torch.device(device).type]] + list(BASELINE_CASES)


def make_inputs(shape: Shape, device="cpu", dtype: torch.dtype = torch.float32):
    """``(h_s (N,H), W_s (V,H), h_t (N,H), W_t (V,H), labels (N,))``, every tenth label ignored.

    Drawn in float32 on the CPU from one seed (the same values on every device), then cast to
    ``dtype`` (hidden states and weights) and moved to ``device``."""
    n, h, v = shape
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::10] = -100
    floats = (torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5,
              torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) / h**0.5)
    return tuple(t.to(device, dtype) for t in floats) + (labels.to(device),)


def _with_grad(h, w):
    return h.detach().requires_grad_(), w.detach().requires_grad_()


def fused(backend: str) -> Callable:
    def step(h, w, ht, wt, labels):
        h, w = _with_grad(h, w)
        loss = mtkernels.self_evolution_kd_loss(h, w, ht, wt, labels, mode="forward_kd", backend=backend)
        loss.backward()
        return loss.detach()
    return step


def eager(h, w, ht, wt, labels, lam=0.5):
    """forward_kd the way it is written in PyTorch: the GEMMs in the inputs' dtype, the rest in float32."""
    h, w = _with_grad(h, w)
    log_q = torch.log_softmax((h @ w.T).float(), dim=-1)
    log_p = torch.log_softmax((ht @ wt.T).detach().float(), dim=-1)
    valid = labels != -100
    ce = torch.nn.functional.nll_loss(log_q, labels, ignore_index=-100, reduction="sum")
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)[valid].sum()
    loss = ((1 - lam) * ce + lam * kl) / valid.sum()
    loss.backward()
    return loss.detach()


def gemm_floor(h, w, ht, wt, labels):
    s = h @ w.T
    return s @ w, s.T @ h, ht @ wt.T


def liger(device="cpu") -> Callable:
    """Liger-Kernel's chunked fused-linear JSD loss as forward KL; raises ImportError without it."""
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    wanted = dict(beta=0.0, weight_hard_loss=0.5, weight_soft_loss=0.5, ignore_index=-100,
                  compiled=torch.device(device).type == "cuda")
    accepted = inspect.signature(LigerFusedLinearJSDLoss.__init__).parameters
    missing = [k for k in ("beta", "weight_hard_loss", "weight_soft_loss") if k not in accepted]
    if missing:
        raise ImportError(f"this liger-kernel's LigerFusedLinearJSDLoss takes no {', '.join(missing)}")
    loss_fn = LigerFusedLinearJSDLoss(**{k: v for k, v in wanted.items() if k in accepted})

    def step(h, w, ht, wt, labels):
        h, w = _with_grad(h, w)
        loss = loss_fn(h, w, ht, wt, labels)
        loss.backward()
        return loss.detach()
    return step


def make_case(name: str, device="cpu") -> Callable:
    """The step function ``fn(h, w, ht, wt, labels)`` of case ``name`` on ``device`` tensors, or
    ``Unavailable`` saying why it cannot run here."""
    device = torch.device(device)
    if device.type == "cuda" and cuda_missing_reason() is not None:
        raise Unavailable(cuda_missing_reason())
    if name.startswith("fused-"):
        backend = name[len("fused-"):]
        if backend in kd_backends(device):
            return fused(backend)
        state = mtkernels.backend_report().get(backend, "not a backend")
        if state.startswith("available"):
            state = f"{state}, but it runs no KD kernel on {device.type} tensors here"
        raise Unavailable(f"backend {backend!r} is {state}")
    if name == "liger-chunked-jsd":
        try:
            return liger(device)
        except ImportError as exc:
            raise Unavailable(f"liger-kernel is not installed or too old ({exc})") from None
    if name == "eager":
        return eager
    if name == "gemm-floor":
        return gemm_floor
    raise ValueError(f"unknown KD case {name!r}; one of {', '.join(case_names(device))}")


def cases(device="cpu") -> Dict[str, Callable[[], Callable]]:
    """Case name -> factory of its step function (a factory raises ``Unavailable`` instead of
    returning, so one missing case only skips that case)."""
    return {name: (lambda name=name: make_case(name, device)) for name in case_names(device)}


def run(shapes=DEFAULT_SHAPES, timing: Timing = Timing(), devices: Sequence[str] = ("cpu",),
        dtype: torch.dtype = torch.float32) -> List[Dict]:
    """One record per (shape, device, case) that can run here: time, peak memory above the inputs,
    ratios to eager and to the floor of the same shape and device."""
    records = []
    for device in devices:
        device = torch.device(device)
        for shape in shapes:
            args = make_inputs(shape, device, dtype)
            group = []
            for name in case_names(device):
                try:
                    fn = make_case(name, device)
                except Unavailable:
                    continue
                group.append(timed_record(OP, shape, device, dtype, name, lambda fn=fn: fn(*args), timing))
            add_ratios(group)
            records += group
    return records


def format_table(records: List[Dict]) -> str:
    return format_case_table(records, "(N, H, V)", case_width=20)
