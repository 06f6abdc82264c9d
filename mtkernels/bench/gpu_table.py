"""GPU timings of every op beside its baselines, in one table (JSON + markdown).

    python -m mtkernels.bench.gpu_table --out DIR      # DIR/gpu_table.json, DIR/gpu_table.md; prints the markdown
    python -m mtkernels.bench.gpu_table --quick        # small shapes: checks the table end to end in seconds

Rows, on CUDA tensors, for each shape:

- collab softmax top-k (``fused_collab_softmax(top_k=50)``): each fused GPU backend (``cuda``,
  ``triton``), the eager chain (a) (the baseline the ratio is taken against), ``torch.compile`` of
  (a), and the read-once floor (one ``amax`` per input);
- collab sample (``fused_collab_sample(top_k=50, top_p=0.9)``): each fused GPU backend, the
  Hugging Face warper chain (b) (the baseline), and FlashInfer's
  ``sampling.top_k_top_p_sampling_from_logits`` applied to the combined logits from a torch
  weighted sum, when flashinfer is installed;
- ``collab_logits``: each fused GPU backend and the eager weighted sum (the baseline);
- the self-evolution KD loss (mode ``forward_kd``), forward + backward: each fused GPU backend,
  eager PyTorch (the baseline), Liger-Kernel's ``LigerFusedLinearJSDLoss`` when liger-kernel is
  installed, and the GEMM floor;
- the MuMo ops (bf16): verification scores from logits (beside the eager log-softmax chain and a
  read-once floor) and fused from hidden states (beside ``hidden @ W.T`` + eager and the GEMM), the
  head's top-k (beside ``cat + softmax + topk`` and the two GEMMs) and its cross-entropy forward +
  backward (beside eager concatenated CE and the GEMMs).

Every fused result and baseline is checked before it is timed, as in ``mtkernels bench``
(``mtkernels.bench.collab``; fused KD losses against the eager loss); a case whose check fails, or that raises, is a ``failed: ...`` row,
one that cannot run here (a backend not built, a library not installed) a ``skipped: ...`` row.

Times are the median of ``triton.testing.do_bench`` (``measure.cuda_time_ms``: CUDA events, L2
flushed before each call). The collab ops are memory-bound: their rows give the achieved bandwidth,
bytes that must move (the M inputs read once, the outputs written once) / median time, and its
fraction of the device's peak DRAM bandwidth (``PEAK_BANDWIDTH_TB_S``, by device name; None for
a device not listed). ``x eager`` is the baseline's median / the row's median (above 1: faster).
Peak memory is the most bytes allocated during one call above the inputs (outputs included).

Exit status: 0, or 1 when a row failed (the table is written either way). Without a CUDA device it
prints ``NO_CUDA_LINE`` and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import re
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

JSON_NAME = "gpu_table.json"
MD_NAME = "gpu_table.md"
NO_CUDA_LINE = "no CUDA device: nothing timed"

# Peak DRAM bandwidth in TB/s (vendor figures) by device name, as torch.cuda.get_device_name
# reports it; the first pattern that matches wins.
PEAK_BANDWIDTH_TB_S: Tuple[Tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 2.0),
    (r"\bH100\b.*\bNVL\b", 3.9),
    (r"\bH100\b", 3.35),            # SXM5: "NVIDIA H100 80GB HBM3"
    (r"\bH200\b", 4.8),
    (r"\bA100\b.*\b80\s?GB\b", 2.0),
    (r"\bA100\b", 1.555),           # 40GB
)

GPU_BACKENDS = ("cuda", "triton")
TOP_K_BYTES = 4 + 8  # one float32 probability and one int64 id per kept candidate

COLUMNS = ("op", "shape", "implementation", "median ms", "x eager", "GB/s", "% of peak BW", "peak MB", "note")


class Unavailable(Exception):
    """A row that cannot be timed here; the message says why."""


# --- arithmetic --------------------------------------------------------------------------------------

def peak_bandwidth_tb_s(device_name: Optional[str]) -> Optional[float]:
    """The peak DRAM bandwidth (TB/s) of a device named ``device_name``, or None if not listed."""
    for pattern, tb_s in PEAK_BANDWIDTH_TB_S:
        if device_name and re.search(pattern, device_name, flags=re.IGNORECASE):
            return tb_s
    return None


def collab_bytes(models: int, batch: int, vocab: int, element_size: int, output_bytes: int) -> int:
    """Bytes a collab op must move at least: the M inputs ``(B, V)`` read once, its outputs written once."""
    return models * batch * vocab * element_size + output_bytes


def collab_output_bytes(op: str, batch: int, vocab: int, top_k: int = 50, models: int = 3,
                        element_size: int = 2) -> int:
    """Bytes written by one call of ``op``: top-k probabilities, ids and lse; one int64 token per
    row; the float32 combined logits; or the read-once floor's M scalars."""
    return {"softmax_topk": batch * (top_k * TOP_K_BYTES + 4), "sample_topk_topp": batch * 8,
            "collab_logits": batch * vocab * 4, "read_once": models * element_size}[op]


def achieved_gb_s(nbytes: Optional[int], median_ms: Optional[float]) -> Optional[float]:
    """``nbytes`` moved in ``median_ms`` milliseconds, in GB/s (10⁹ bytes per second)."""
    if nbytes is None or not median_ms:
        return None
    return nbytes / (median_ms * 1e6)


def fraction_of_peak(gb_s: Optional[float], peak_tb_s: Optional[float]) -> Optional[float]:
    """Achieved bandwidth as a fraction of the peak (1.0 = the device's peak), or None."""
    if gb_s is None or peak_tb_s is None:
        return None
    return gb_s / (peak_tb_s * 1e3)


# --- rows ------------------------------------------------------------------------------------------

def timed(op: str, shape: str, implementation: str, median_ms: float, *, nbytes: Optional[int] = None,
          peak_mb: Optional[float] = None, baseline: bool = False, note: str = "", **extra: Any) -> Dict:
    """A row with a time; ``baseline`` marks the row the others of its (op, shape) are compared with."""
    return dict(op=op, shape=shape, implementation=implementation, status="ok", median_ms=median_ms,
                nbytes=nbytes, peak_mb=peak_mb, baseline=baseline, note=note, **extra)


def not_timed(op: str, shape: str, implementation: str, status: str, *, baseline: bool = False) -> Dict:
    """A row without figures: ``status`` is ``"skipped: <reason>"`` or ``"failed: <reason>"``."""
    return dict(op=op, shape=shape, implementation=implementation, status=status, median_ms=None,
                nbytes=None, peak_mb=None, baseline=baseline, note="")


def finalize(rows: List[Dict], peak_tb_s: Optional[float]) -> List[Dict]:
    """Fill ``x_eager`` (baseline median / median, within each (op, shape)), ``gb_s`` and ``frac_peak``."""
    base = {(r["op"], r["shape"]): r["median_ms"] for r in rows if r["baseline"] and r["median_ms"]}
    for r in rows:
        ms = r["median_ms"]
        eager = base.get((r["op"], r["shape"]))
        r["x_eager"] = eager / ms if (ms and eager) else None
        r["gb_s"] = achieved_gb_s(r["nbytes"], ms)
        r["frac_peak"] = fraction_of_peak(r["gb_s"], peak_tb_s)
    return rows


def _cell(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _sig(value: Optional[float]) -> str:
    """Three significant digits, without an exponent for the values a table shows."""
    if value is None:
        return "–"
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    out = f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"
    return f"{value:.0f}" if abs(float(out)) >= 100 else out  # 99.96 -> "100", not "100.0"


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown_row(r: Dict) -> str:
    note = r["note"] if r["status"] == "ok" else r["status"]
    cells = [r["op"], r["shape"], r["implementation"] + (" *(baseline)*" if r["baseline"] else ""),
             _ms(r["median_ms"]), _cell(r.get("x_eager"), ".2f"), _sig(r.get("gb_s")),
             _sig(None if r.get("frac_peak") is None else 100 * r["frac_peak"]),
             _cell(r["peak_mb"], ".1f"), note.replace("|", "\\|").replace("\n", " ")]
    return "| " + " | ".join(cells) + " |"


def format_markdown(rows: Sequence[Dict], meta: Dict) -> str:
    """The table as markdown, under a header naming the device, its peak bandwidth and the timer."""
    peak = meta.get("peak_bandwidth_tb_s")
    lines = [
        f"## GPU timings: {meta.get('device', '?')} "
        f"(peak DRAM bandwidth {f'{peak} TB/s' if peak else 'unknown: % of peak not given'})",
        "",
        f"torch {meta.get('torch', '?')}, CUDA {meta.get('cuda', '?')}, triton {meta.get('triton', '?')}, "
        f"mtkernels {meta.get('mtkernels', '?')}. Timer: {meta.get('timer', '?')}. "
        "x eager = the baseline's median / the row's median (above 1: faster). "
        "GB/s = (inputs read once + outputs written once) / median.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if c in ("median ms", "x eager", "GB/s", "% of peak BW", "peak MB") else "---"
                       for c in COLUMNS) + "|",
    ]
    lines += [markdown_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def write_table(out_dir: str, rows: Sequence[Dict], meta: Dict) -> Tuple[str, str]:
    """Write ``gpu_table.json`` (``{"meta", "rows"}``) and ``gpu_table.md``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, JSON_NAME), os.path.join(out_dir, MD_NAME)
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": list(rows)}, f, indent=1)
    with open(md_path, "w") as f:
        f.write(format_markdown(rows, meta))
    return json_path, md_path


# --- measuring one row -----------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def measure_row(op: str, shape: str, implementation: str, build: Callable[[], Tuple[Callable[[], Any], Dict]],
                device: torch.device, rep_ms: float, *, nbytes: Optional[int] = None, baseline: bool = False,
                note: str = "") -> Dict:
    """Build the callable (which checks its result first), then its peak memory and median time.

    ``build()`` returns ``(fn, extra)``, ``extra`` going into the row; it raises ``Unavailable``
    for a skipped row. Any other exception gives a failed row, so one row never stops the table."""
    from . import checks, kd
    from .measure import cuda_time_ms, peak_memory_mb

    try:
        fn, extra = build()
        peak_mb = peak_memory_mb(fn, device)
        median_ms = cuda_time_ms(fn, device, rep_ms=rep_ms)
        row = timed(op, shape, implementation, median_ms, nbytes=nbytes, peak_mb=peak_mb, baseline=baseline,
                    note=note, **extra)
    except (Unavailable, kd.Unavailable) as exc:
        row = not_timed(op, shape, implementation, f"skipped: {exc}", baseline=baseline)
    except checks.CheckFailed as exc:
        row = not_timed(op, shape, implementation, f"failed: check: {exc}", baseline=baseline)
    except Exception as exc:  # noqa: BLE001 -- reported in the row, the table goes on
        row = not_timed(op, shape, implementation, f"failed: {_reason(exc)}", baseline=baseline)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    shown = _ms(row["median_ms"]) + " ms" if row["status"] == "ok" else row["status"]
    print(f"[gpu table] {op:<18} {shape:<28} {implementation:<40} {shown}", flush=True)
    return row


# --- backends --------------------------------------------------------------------------------------

def gpu_backends(family: str, kernel_name: str, device="cuda") -> Dict[str, Optional[str]]:
    """For each of ``GPU_BACKENDS``: None if it runs ``family`` kernels on ``device`` tensors here, else why not."""
    import mtkernels
    from mtkernels import backends

    report = mtkernels.backend_report()
    out: Dict[str, Optional[str]] = {}
    for b in GPU_BACKENDS:
        state = report.get(b, "not a backend")
        if not state.startswith("available"):
            out[b] = f"backend {b!r} is {state}"
        elif not backends.has_kernel(b, family, kernel_name):
            out[b] = f"backend {b!r} has no {family}.{kernel_name} kernel"
        else:
            try:
                backends.resolve_backend(b, torch.device(device), family)
                out[b] = None
            except (RuntimeError, ValueError, NotImplementedError) as exc:
                out[b] = f"backend {b!r}: {exc}"
    return out


# --- collab ----------------------------------------------------------------------------------------

def _bound(spec) -> Callable[[Any], Tuple[Callable[[], Any], Dict]]:
    from . import collab

    def build(problem):
        case = collab.bind_case(spec, problem)  # raises CheckFailed on a wrong result
        return case.fn, ({"check": case.check} if case.check else {})
    return build


def flashinfer_sampler():
    """FlashInfer's ``sampling.top_k_top_p_sampling_from_logits`` and its version, or ``Unavailable``."""
    try:
        import flashinfer
        import flashinfer.sampling as sampling
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a build that fails to load
        raise Unavailable(f"flashinfer is not installed ({_reason(exc)}); install it beforehand to compare") \
            from None
    fn = getattr(sampling, "top_k_top_p_sampling_from_logits", None)
    if fn is None:
        raise Unavailable(f"flashinfer {getattr(flashinfer, '__version__', '?')} has no "
                          "sampling.top_k_top_p_sampling_from_logits")
    return fn, getattr(flashinfer, "__version__", "?")


def flashinfer_sample_build(problem, top_k: int, top_p: float) -> Tuple[Callable[[], Any], Dict]:
    """Torch weighted sum → /τ → FlashInfer top-k → top-p sampling; the draws checked against the
    Hugging Face support of the eager combined logits."""
    from . import baselines, checks

    sample, version = flashinfer_sampler()
    old_api = "uniform_samples" in inspect.signature(sample).parameters  # flashinfer < 0.2
    batch = problem.shape.batch

    def run():
        z = baselines.eager_combined_logits(problem.logits, problem.weights, problem.temperature)
        if old_api:
            ids, _ = sample(z, torch.rand(32, batch, device=z.device), top_k, top_p)
            return ids
        return sample(z, top_k, top_p)

    ids = run()
    z = baselines.eager_combined_logits(problem.logits, problem.weights, problem.temperature)
    check = checks.check_sample(ids.long(), z.argmax(dim=-1), problem, top_k, top_p)
    return run, {"check": check, "library_version": version}


def collab_logits_build(problem, backend: str) -> Tuple[Callable[[], Any], Dict]:
    """``mtkernels.collab_logits`` on ``backend``, checked against the eager weighted sum."""
    import mtkernels

    from . import baselines, checks

    def run():
        return mtkernels.collab_logits(problem.logits, list(problem.weights), temperature=problem.temperature,
                                       backend=backend)

    z = run()
    expected = baselines.eager_combined_logits(problem.logits, problem.weights, problem.temperature)
    diff = float((z.double() - expected.double()).abs().max())
    scale = float(expected.abs().max().clamp_min(1.0))
    if not (tuple(z.shape) == tuple(expected.shape) and diff <= 1e-5 * scale):
        raise checks.CheckFailed(f"collab_logits[{backend}]: max |diff| vs eager = {diff:.3g} (scale {scale:.3g})")
    return run, {"check": {"against": "eager weighted sum", "max_abs_diff": diff, "passed": True}}


def collab_rows(shape, device: torch.device, compile: bool, rep_ms: float) -> List[Dict]:
    from . import baselines, collab
    from .problems import TOP_K, make_problem

    problem = make_problem(shape, device)
    m, b, v = shape.models, shape.batch, shape.vocab
    elem = torch.empty((), dtype=shape.dtype).element_size()
    label = shape.label
    rows: List[Dict] = []

    def nbytes(op):
        return collab_bytes(m, b, v, elem, collab_output_bytes(op, b, v, TOP_K, m, elem))

    def row(op, impl, build, bytes_op=None, **kw):
        rows.append(measure_row(op, label, impl, lambda: build(problem), device, rep_ms,
                                nbytes=nbytes(bytes_op or op), **kw))

    def unavailable(reason):
        def build(_):
            raise Unavailable(reason)
        return build

    op = "softmax_topk"
    fused = gpu_backends("collab", "topk", device)
    for backend in GPU_BACKENDS:
        build = (_bound(collab.CaseSpec(op, backend, collab.FUSED)) if fused[backend] is None
                 else unavailable(fused[backend]))
        row(op, f"fused {backend}", build)
    row(op, "eager (a): sum, softmax, topk", _bound(collab.CaseSpec(op, collab.EAGER, collab.BASELINE)),
        baseline=True)
    row(op, "torch.compile of (a)", _bound(collab.CaseSpec(op, collab.COMPILED, collab.BASELINE)) if compile
        else unavailable("--no-compile"))
    row(op, "read-once floor (amax per input)", lambda p: (lambda: baselines.read_once(p.logits), {}),
        bytes_op="read_once", note="floor: streams the inputs once")

    op = "sample_topk_topp"
    sample = collab.OPS[op]
    for backend in GPU_BACKENDS:
        build = (_bound(collab.CaseSpec(op, backend, collab.FUSED)) if fused[backend] is None
                 else unavailable(fused[backend]))
        row(op, f"fused {backend}", build)
    row(op, "HF chain (b): sum, TopK/TopP warpers, multinomial",
        _bound(collab.CaseSpec(op, collab.HF_CHAIN, collab.BASELINE)), baseline=True)
    row(op, "torch sum + FlashInfer top_k_top_p_sampling_from_logits",
        lambda p: flashinfer_sample_build(p, sample.top_k, sample.top_p))

    op = "collab_logits"
    logits_backends = gpu_backends("collab", "logits", device)
    for backend in GPU_BACKENDS:
        build = ((lambda p, backend=backend: collab_logits_build(p, backend)) if logits_backends[backend] is None
                 else unavailable(logits_backends[backend]))
        row(op, f"fused {backend}", build)
    row(op, "eager weighted sum, /τ",
        lambda p: (lambda: baselines.eager_combined_logits(p.logits, p.weights, p.temperature), {}), baseline=True)
    return rows


# --- KD --------------------------------------------------------------------------------------------

_KD_LABELS = {"eager": "eager PyTorch (full logits, fp32 softmax)",
              "liger-chunked-jsd": "Liger LigerFusedLinearJSDLoss(beta=0, compiled={compiled})",
              "gemm-floor": "GEMM floor (the 4 GEMMs alone)"}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


KD_LOSS_RTOL = 1e-2  # fused vs eager loss, both from logits rounded to the weights' dtype


def kd_rows(shape, dtype: torch.dtype, device: torch.device, rep_ms: float) -> List[Dict]:
    """The KD cases on ``shape``; each fused loss is checked against the eager loss before it is timed."""
    from . import checks, kd

    n, h, v = shape
    label = f"N={n} H={h} V={v} {_DTYPE_NAMES.get(dtype, str(dtype))}"
    op = "kd forward_kd fwd+bwd"
    args = kd.make_inputs(shape, device, dtype)
    reference: Dict[str, float] = {}
    rows = []
    for name in kd.case_names(device):
        impl = _KD_LABELS.get(name, name.replace("fused-", "fused ")).format(compiled=device.type == "cuda")

        def build(name=name):
            step = kd.make_case(name, device)

            def run():
                return step(*args)

            out = run()  # compiles what compiles on first use, outside the timed calls
            extra = {"loss": float(out)} if isinstance(out, torch.Tensor) and out.dim() == 0 else {}
            if name.startswith("fused-"):
                if "eager" not in reference:
                    reference["eager"] = float(kd.eager(*args))
                expected = reference["eager"]
                if not abs(extra["loss"] - expected) <= KD_LOSS_RTOL * abs(expected):
                    raise checks.CheckFailed(f"loss {extra['loss']:.6g}, eager {expected:.6g} "
                                             f"(rtol {KD_LOSS_RTOL})")
                extra["check"] = {"against": "eager loss", "eager_loss": expected, "passed": True}
            return run, extra

        rows.append(measure_row(op, label, impl, build, device, rep_ms, baseline=name == "eager",
                                note="floor" if name == "gemm-floor" else ""))
    for r in rows:
        if "loss" in r:
            r["note"] = f"loss {r['loss']:.6g}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


MUMO_RTOL = 2e-2  # fused vs eager, both from bf16 inputs (the eager chains upcast at different points)


def _first_float(out) -> torch.Tensor:
    """The output a MuMo case is checked by: scores, top-k probabilities, or the loss."""
    if isinstance(out, tuple):
        out = out[0] if not hasattr(out, "values") else out.values
    return out.detach().float()


def _mumo_check(out, expected: torch.Tensor) -> Dict:
    from . import checks

    got = _first_float(out)
    if got.shape != expected.shape:
        raise checks.CheckFailed(f"shape {tuple(got.shape)}, eager {tuple(expected.shape)}")
    err = (got - expected).abs()
    if not bool((err <= MUMO_RTOL * (1 + expected.abs())).all()):  # NaN fails too
        raise checks.CheckFailed(f"max |fused - eager| {err.max().item():.3g} (rtol = atol = {MUMO_RTOL})")
    return {"check": {"against": "eager chain", "passed": True}}


def mumo_rows(quick: bool, dtype: torch.dtype, device: torch.device, rep_ms: float) -> List[Dict]:
    """The MuMo ops: verification from logits and from hidden states, the head's top-k and its
    cross-entropy (forward + backward), each fused GPU backend beside its eager chain and floor;
    fused results are checked against eager before they are timed."""
    from . import mumo_head, mumo_verify

    dt = _DTYPE_NAMES.get(dtype, str(dtype))
    logits_shape, fused_shape = ((2, 10, 4, 8000), (2, 10, 4, 64, 8000)) if quick else \
        ((8, 10, 4, 128256), (8, 10, 4, 4096, 128256))
    head_shape, ce_shape = ((4, 64, 8000, 2000), (256, 64, 8000, 2000)) if quick else \
        ((16, 4096, 128256, 30000), (4096, 2048, 128256, 30000))
    groups = [
        ("mumo verify logits", f"B,K,L,V={logits_shape} {dt}", mumo_verify.logits_inputs(logits_shape, device, dtype),
         mumo_verify.logits_cases(device), "read-floor"),
        ("mumo verify fused", f"B,K,L,H,V={fused_shape} {dt}", mumo_verify.fused_inputs(fused_shape, device, dtype),
         mumo_verify.fused_cases(device), "gemm-floor"),
    ]
    for op, shape in (("mumo_head_topk", head_shape), ("mumo_head_ce_fwd_bwd", ce_shape)):
        cases = {}
        for name in mumo_head.case_names(device):
            try:
                cases[name] = mumo_head.make_case(op, name, device)
            except mumo_head.Unavailable:
                continue
        groups.append((op.replace("_", " "), f"N,H,Vm,Vw={shape} {dt}", mumo_head.make_inputs(shape, device, dtype),
                       cases, "gemm-floor"))
    rows = []
    for op, label, args, cases, floor in groups:
        expected = _first_float(cases["eager"](*args))
        for name, fn in cases.items():
            def build(fn=fn, name=name):
                out = fn(*args)  # compiles what compiles on first use, outside the timed calls
                extra = _mumo_check(out, expected) if name.startswith("fused-") else {}
                return (lambda: fn(*args)), extra

            rows.append(measure_row(op, label, name.replace("fused-", "fused "), build, device, rep_ms,
                                    baseline=name == "eager", note="floor" if name == floor else ""))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- the table -------------------------------------------------------------------------------------

def shapes(quick: bool):
    """``(collab shapes, KD shapes (N, H, V), KD dtype)``."""
    from .problems import Shape

    if quick:
        return [Shape(3, 4, 8000, torch.bfloat16)], [(256, 128, 8000)], torch.bfloat16
    return ([Shape(3, 1, 128256, torch.bfloat16), Shape(3, 64, 128256, torch.bfloat16)],
            [(4096, 2048, 128256)], torch.bfloat16)


def _versions() -> Dict[str, Optional[str]]:
    import mtkernels

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "mtkernels": mtkernels.__version__, "python": platform.python_version()}


def build_table(quick: bool = False, compile: bool = True, kd: bool = True, mumo: bool = True
                ) -> Tuple[List[Dict], Dict]:
    """Time every row on the current CUDA device: ``(rows, meta)``."""
    import mtkernels

    from .measure import GPU_TIMER
    from .problems import TEMPERATURE, TOP_K, TOP_P, WEIGHTS

    device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device)
    peak = peak_bandwidth_tb_s(name)
    start = time.perf_counter()
    collab_shapes, kd_shapes, kd_dtype = shapes(quick)
    rows: List[Dict] = []
    for shape in collab_shapes:
        rows += collab_rows(shape, device, compile, rep_ms=100)
    if kd:
        for shape in kd_shapes:
            rows += kd_rows(shape, kd_dtype, device, rep_ms=300)
    if mumo:
        rows += mumo_rows(quick, torch.bfloat16, device, rep_ms=100)
    finalize(rows, peak)
    meta = dict(device=name, capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                peak_bandwidth_tb_s=peak, timer=GPU_TIMER, **_versions(),
                backends=mtkernels.backend_report(), quick=quick, torch_compile=compile,
                collab=dict(weights=list(WEIGHTS), temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P),
                bytes=("collab: M·B·V·element size (inputs read once) + outputs (top-k: B·k·12 + B·4; "
                       "sample: B·8; collab_logits: B·V·4)"),
                seconds=round(time.perf_counter() - start, 1))
    return rows, meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtkernels.bench.gpu_table", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-table", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small shapes (checks the table end to end)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile row")
    parser.add_argument("--no-kd", dest="kd", action="store_false", help="skip the KD loss rows")
    parser.add_argument("--no-mumo", dest="mumo", action="store_false", help="skip the MuMo rows")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is not a CUDA build" if torch.version.cuda is None
               else "torch.cuda.is_available() is False")
        print(f"{NO_CUDA_LINE} ({why})", flush=True)
        return 0
    rows, meta = build_table(args.quick, args.compile, args.kd, args.mumo)
    json_path, md_path = write_table(args.out, rows, meta)
    print()
    print(format_markdown(rows, meta))
    print(f"wrote {json_path} and {md_path}")
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"{len(failed)} row(s) failed: see their notes", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
