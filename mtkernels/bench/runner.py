"""Run the collab benchmark set and turn it into records (one dict per case and problem).

The set has two sections: ``table`` (every op on the table's shapes) and ``sweep`` (the plot's op
on the plot's shapes that the table does not already cover). Within one problem every case sees
the same inputs, so the speed-ups are computed between records of the same shape and device.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import collab
from .measure import Timing, median_time_ms, peak_memory_mb
from .problems import Shape, make_problem

Record = Dict[str, object]
OnRecord = Callable[[int, int, Record], None]


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """What to run: table shapes, sweep (plot) shapes, fused backends, whether to torch.compile."""

    shapes: Sequence[Shape]
    sweep: Sequence[Shape]
    backends: Sequence[str]
    compile: bool = True
    timing: Timing = Timing()


@dataclasses.dataclass(frozen=True)
class Group:
    """The cases that share one problem (shape, device)."""

    section: str
    shape: Shape
    device: torch.device
    specs: List[collab.CaseSpec]


def _devices(backends: Sequence[str]) -> List[torch.device]:
    """The devices the backends run on; with no fused backend, the GPU if there is one, else the CPU."""
    devices = {collab.backend_device(b).type for b in backends}
    if not devices:
        devices = {"cuda" if torch.cuda.is_available() else "cpu"}
    return [torch.device(d) for d in sorted(devices)]


def device_specs(backends: Sequence[str], ops: Sequence[str] = tuple(collab.OPS),
                 compile: bool = True) -> List[Tuple[torch.device, List[collab.CaseSpec]]]:
    """For each device the backends run on, the cases of ``ops`` to run there."""
    return [(device, collab.case_specs([b for b in backends if collab.backend_device(b) == device], ops, compile))
            for device in _devices(backends)]


def plan(config: SuiteConfig) -> List[Group]:
    """The groups to run, in order: per device, the table's shapes then the sweep-only shapes."""
    groups = []
    table = device_specs(config.backends, compile=config.compile)
    sweep = dict(device_specs(config.backends, ops=(collab.SWEEP_OP,), compile=config.compile))
    for device, specs in table:
        groups += [Group("table", shape, device, specs) for shape in config.shapes]
        groups += [Group("sweep", shape, device, sweep[device]) for shape in config.sweep
                   if shape not in config.shapes]
    return groups


def _record(group: Group, case: collab.BoundCase, time_ms: float, peak_mb: float) -> Record:
    shape, spec = group.shape, case.spec
    check = case.check
    return {
        "section": group.section, "op": spec.op, "op_title": collab.OPS[spec.op].title, "kind": spec.kind,
        "backend": spec.variant, "device": group.device.type, "M": shape.models, "B": shape.batch,
        "V": shape.vocab, "dtype": shape.dtype_name, "time_ms": time_ms, "peak_mb": peak_mb,
        "read_gb_per_s": shape.input_bytes / (time_ms * 1e6), "check": check,
        "checked_against_eager": bool(check and check["passed"] and check["against"].startswith("eager")),
    }


def run_group(group: Group, timing: Timing, on_done: Callable[[Record], None]) -> List[Record]:
    """Bind (and check) each case of the group, then time it and measure its peak memory."""
    problem = make_problem(group.shape, group.device)
    records = []
    for spec in group.specs:
        case = collab.bind_case(spec, problem)
        time_ms = median_time_ms(case.fn, group.device, timing)
        record = _record(group, case, time_ms, peak_memory_mb(case.fn, group.device))
        records.append(record)
        on_done(record)
    add_comparisons(records)
    return records


def _time_of(records: Sequence[Record], backend: str, op: Optional[str] = None) -> Optional[float]:
    for r in records:
        if r["backend"] == backend and r["kind"] != collab.FUSED and (op is None or r["op"] == op):
            return r["time_ms"]
    return None


def _ratio(numerator: Optional[float], denominator: float) -> Optional[float]:
    return None if numerator is None else numerator / denominator


def add_comparisons(records: List[Record]) -> None:
    """Add ``speedup_vs_eager``, ``speedup_vs_compiled``, ``speedup_vs_hf`` (sample ops) and
    ``pct_of_floor`` to the records of one problem. Eager and compiled eager are baselines (a) and
    (c), the top-k chain that every op contains; the HF chain (b) is the same op's sampling chain."""
    eager = _time_of(records, collab.EAGER)
    compiled = _time_of(records, collab.COMPILED)
    floor = _time_of(records, collab.READ_ONCE)
    for r in records:
        t = r["time_ms"]
        if r["kind"] == collab.FLOOR:  # the floor is the yardstick, not a contender
            r.update(speedup_vs_eager=None, speedup_vs_compiled=None, speedup_vs_hf=None, pct_of_floor=100.0)
            continue
        r["speedup_vs_eager"] = _ratio(eager, t)
        r["speedup_vs_compiled"] = _ratio(compiled, t)
        r["speedup_vs_hf"] = _ratio(_time_of(records, collab.HF_CHAIN, r["op"]), t)
        r["pct_of_floor"] = None if floor is None else 100.0 * floor / t


def run_suite(config: SuiteConfig, on_record: Optional[OnRecord] = None) -> List[Record]:
    """Run every group of ``plan(config)``; ``on_record(i, n, record)`` is called as each case finishes."""
    groups = plan(config)
    total = sum(len(g.specs) for g in groups)
    records: List[Record] = []

    def done(record: Record) -> None:
        if on_record is not None:
            on_record(len(records) + 1, total, record)
        records.append(record)

    for group in groups:
        run_group(group, config.timing, done)
    return records
