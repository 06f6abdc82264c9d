"""Records of (op, shape, device, case) timings and their table, shared by the loss and MuMo benches.

A *group* is the cases of one op at one shape and device: the fused backends, ``eager`` and a floor.
Each record holds the time (median, ms), the peak memory above the inputs (MiB) and, once the group
is complete, ``x_eager`` (how many times faster than eager) and ``x_floor`` (time / the floor's).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import backends
from .measure import Timing, median_time_ms, peak_memory_mb


def timed_record(op: str, shape, device, dtype: torch.dtype, case: str, call: Callable[[], object],
                 timing: Timing) -> Dict:
    """One case timed and measured: ``call()`` runs it once."""
    device = torch.device(device)
    return dict(op=op, shape=tuple(shape), device=device.type, dtype=str(dtype).replace("torch.", ""), case=case,
                time_ms=median_time_ms(call, device, timing), peak_mb=peak_memory_mb(call, device))


def add_ratios(group: List[Dict], floor: str = "gemm-floor") -> None:
    """``x_eager`` and ``x_floor`` of every record of one group (None where that case did not run)."""
    by_case = {r["case"]: r["time_ms"] for r in group}
    for r in group:
        r["x_eager"] = by_case["eager"] / r["time_ms"] if "eager" in by_case else None
        r["x_floor"] = r["time_ms"] / by_case[floor] if floor in by_case else None


def runnable_backends(device, family: str, candidates: Sequence[str]) -> List[str]:
    """The candidates that serve ``family`` on ``device`` tensors here, in order."""
    device = torch.device(device)
    out = []
    for name in candidates:
        try:
            backends.resolve_backend(name, device, family)
        except (RuntimeError, ValueError, NotImplementedError):
            continue
        out.append(name)
    return out


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_case_table(records: Sequence[Dict], shape_title: str, shape_width: int = 22, case_width: int = 14,
                      extra: Sequence[tuple] = ()) -> str:
    """One line per record: op, shape, device, case, time, x eager, / floor, peak MB, then each
    ``(title, key, format)`` of ``extra``."""
    head = (f"{'op':<22}{shape_title:<{shape_width}}{'device':<8}{'case':<{case_width}}{'time ms':>10}{'x eager':>9}"
            f"{'/ floor':>9}{'peak MB':>10}" + "".join(f"{title:>10}" for title, _, _ in extra))
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(f"{r['op']:<22}{str(tuple(r['shape'])):<{shape_width}}{r.get('device', 'cpu'):<8}"
                     f"{r['case']:<{case_width}}{r['time_ms']:>10.1f}{_num(r.get('x_eager'), '.2f'):>9}"
                     f"{_num(r.get('x_floor'), '.2f'):>9}{r['peak_mb']:>10.2f}"
                     + "".join(f"{_num(r.get(key), fmt):>10}" for _, key, fmt in extra))
    return "\n".join(lines)
