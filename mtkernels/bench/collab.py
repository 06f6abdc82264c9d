"""The collaborative-decoding benchmark cases, shared by ``benchmarks/bench_collab.py`` and ``mtkernels bench``.

An op (``OPS``) is one call of the public API with fixed filter settings, plus the baselines it is
compared with. A case (``CaseSpec``) is an op on one fused backend or one baseline; binding it to
a ``Problem`` (``bind_case``) gives the zero-argument callable to time, after checking its
result: fused results against the eager chain, the eager chain against the reference backend.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import mtkernels

from . import baselines, checks
from .problems import TOP_K, TOP_P, Problem

FUSED, BASELINE, FLOOR = "fused", "baseline", "floor"
EAGER, COMPILED, HF_CHAIN, READ_ONCE = "eager", "compiled_eager", "hf_chain", "read_once_floor"
_KIND = {EAGER: BASELINE, COMPILED: BASELINE, HF_CHAIN: BASELINE, READ_ONCE: FLOOR}


@dataclasses.dataclass(frozen=True)
class Op:
    """One benchmarked call: ``sample`` False → ``fused_collab_softmax(top_k)``, True →
    ``fused_collab_sample(top_k, top_p)``; ``baselines`` are the names it is compared with."""

    name: str
    title: str
    sample: bool
    top_k: int
    top_p: float
    baselines: Sequence[str]


OPS: Dict[str, Op] = {op.name: op for op in (
    Op("softmax_topk", f"fused_collab_softmax(top_k={TOP_K})", False, TOP_K, 1.0, (EAGER, COMPILED, READ_ONCE)),
    Op("sample_topk_topp", f"fused_collab_sample(top_k={TOP_K}, top_p={TOP_P})", True, TOP_K, TOP_P, (HF_CHAIN,)),
    Op("sample_topp", f"fused_collab_sample(top_p={TOP_P})", True, 0, TOP_P, (HF_CHAIN,)),
)}
SWEEP_OP = "softmax_topk"  # the op of the speed-up-vs-V plot


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """``op`` run by ``variant``: a backend name when ``kind == "fused"``, else a baseline name."""

    op: str
    variant: str
    kind: str

    @property
    def label(self) -> str:
        return f"{self.op}[{self.variant}]"


@dataclasses.dataclass
class BoundCase:
    """A case ready to time: ``fn()`` runs it once; ``check`` summarises its correctness check."""

    spec: CaseSpec
    fn: Callable[[], Any]
    check: Optional[Dict]


def backend_device(backend: str) -> torch.device:
    """The device whose tensors a backend is benchmarked on."""
    if backend in ("triton", "cuda") or (backend == "reference" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def bench_backends(requested: Optional[str] = None) -> List[str]:
    """The fused backends to time: every available one but the slow reference (unless
    ``requested`` names it), and Triton only on a GPU, never under TRITON_INTERPRET."""
    available = mtkernels.available_backends()
    if requested is not None:
        report = mtkernels.backend_report()
        if requested not in report:
            raise ValueError(f"unknown backend {requested!r}; one of {', '.join(report)}")
        if requested not in available:
            raise ValueError(f"backend {requested!r} is {report[requested]}")
        candidates = [requested]
    else:
        candidates = [b for b in available if b != "reference"]
    gpu_triton = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    return [b for b in candidates if b != "triton" or gpu_triton]


def case_specs(backends: Sequence[str], ops: Sequence[str] = tuple(OPS), compile: bool = True) -> List[CaseSpec]:
    """Every case of ``ops``: each backend, then each baseline (``compile=False`` drops torch.compile)."""
    specs = []
    for name in ops:
        specs += [CaseSpec(name, backend, FUSED) for backend in backends]
        specs += [CaseSpec(name, b, _KIND[b]) for b in OPS[name].baselines if compile or b != COMPILED]
    return specs


# --- fused ops ------------------------------------------------------------------------------------

def _fused_softmax(problem: Problem, op: Op, backend: str) -> Callable[[], Any]:
    def run():
        return mtkernels.fused_collab_softmax(problem.logits, list(problem.weights), top_k=op.top_k,
                                              temperature=problem.temperature, backend=backend)
    return run


def _fused_sample(problem: Problem, op: Op, backend: str, greedy: bool = False) -> Callable[[], Any]:
    generator = torch.Generator(device=problem.device).manual_seed(0)

    def run():
        return mtkernels.fused_collab_sample(problem.logits, list(problem.weights), temperature=problem.temperature,
                                             top_k=op.top_k, top_p=op.top_p, greedy=greedy,
                                             generator=None if greedy else generator, backend=backend)
    return run


def _bind_fused(spec: CaseSpec, problem: Problem) -> BoundCase:
    """The fused op on ``spec.variant``, checked against the eager chain."""
    op = OPS[spec.op]
    if op.sample:
        fn = _fused_sample(problem, op, spec.variant)
        check = checks.check_sample(fn(), _fused_sample(problem, op, spec.variant, greedy=True)(),
                                    problem, op.top_k, op.top_p)
    else:
        fn = _fused_softmax(problem, op, spec.variant)
        out = fn()
        check = checks.check_softmax_topk(out.probs, out.ids, problem, op.top_k, against="eager chain (a)")
    return BoundCase(spec, fn, check)


# --- baselines ------------------------------------------------------------------------------------

def _bind_eager(spec: CaseSpec, problem: Problem) -> BoundCase:
    """Baseline (a), after checking that it agrees with the reference backend (the spec)."""
    k = OPS[spec.op].top_k
    spec_out = mtkernels.fused_collab_softmax(problem.logits, list(problem.weights), top_k=k,
                                              temperature=problem.temperature, backend="reference")
    check = checks.check_softmax_topk(spec_out.probs, spec_out.ids, problem, k, against="reference backend (spec)")
    return BoundCase(spec, lambda: baselines.eager_softmax_topk(problem.logits, problem.weights,
                                                                problem.temperature, k), check)


def _bind_compiled(spec: CaseSpec, problem: Problem) -> BoundCase:
    """Baseline (c), compiled here (outside any timed region) and checked like a fused op."""
    k = OPS[spec.op].top_k
    compiled = baselines.compile_eager_softmax_topk()

    def run():
        return compiled(problem.logits, problem.weights, problem.temperature, k)

    probs, ids = run()
    return BoundCase(spec, run, checks.check_softmax_topk(probs, ids, problem, k, against="eager chain (a)"))


def _bind_hf(spec: CaseSpec, problem: Problem) -> BoundCase:
    """Baseline (b) with the op's top-k / top-p."""
    op = OPS[spec.op]
    warpers = baselines.hf_warpers(op.top_k, op.top_p)
    return BoundCase(spec, lambda: baselines.hf_sample(problem.logits, problem.weights, problem.temperature,
                                                       warpers), None)


def _bind_read_once(spec: CaseSpec, problem: Problem) -> BoundCase:
    return BoundCase(spec, lambda: baselines.read_once(problem.logits), None)


_BINDERS = {EAGER: _bind_eager, COMPILED: _bind_compiled, HF_CHAIN: _bind_hf, READ_ONCE: _bind_read_once}


def bind_case(spec: CaseSpec, problem: Problem) -> BoundCase:
    """Build the callable of ``spec`` on ``problem``; raises ``checks.CheckFailed`` if its result is wrong."""
    try:
        if spec.kind == FUSED:
            return _bind_fused(spec, problem)
        return _BINDERS[spec.variant](spec, problem)
    except checks.CheckFailed as exc:
        raise checks.CheckFailed(f"{spec.label} on {problem.shape.label} ({problem.device}): {exc}") from None
