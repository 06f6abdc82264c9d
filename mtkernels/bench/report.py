"""Present benchmark records: the printed table, the JSON file and the speed-up-vs-V plot."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from . import collab

Record = Dict[str, object]

COLUMNS = ("op", "shape (M, B, V, dtype)", "backend", "time ms", "x eager", "x compiled", "x HF",
           "% floor", "peak MB")


def _num(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(r: Record) -> List[str]:
    return [r["op"], f"({r['M']}, {r['B']}, {r['V']}, {r['dtype']})", f"{r['backend']} ({r['device']})",
            _num(r["time_ms"], ".3f"), _num(r["speedup_vs_eager"], ".2f"), _num(r["speedup_vs_compiled"], ".2f"),
            _num(r["speedup_vs_hf"], ".2f"), _num(r["pct_of_floor"], ".0f"), _num(r["peak_mb"], ".2f")]


def format_table(records: Sequence[Record], section: str = "table") -> str:
    """The records of ``section`` as an aligned text table, a blank line between problems."""
    rows, previous = [], None
    for r in (r for r in records if r["section"] == section):
        problem = (r["M"], r["B"], r["V"], r["dtype"], r["device"])
        if previous is not None and problem != previous:
            rows.append(None)
        rows.append(_row(r))
        previous = problem
    widths = [max([len(c)] + [len(row[i]) for row in rows if row]) for i, c in enumerate(COLUMNS)]
    right = set(range(3, len(COLUMNS)))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(COLUMNS), line(["-" * w for w in widths])]
    out += ["" if row is None else line(row) for row in rows]
    return "\n".join(out)


def write_json(path: str, records: Sequence[Record], meta: Dict) -> None:
    """``{"meta": {...}, "records": [...]}`` at ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "records": list(records)}, f, indent=1)


def _sweep_points(records: Sequence[Record], batch: int, backend: str, key: str):
    """``(V, speed-up)`` pairs of the plot's op (fp32) for one batch size and backend."""
    points = sorted((r["V"], r[key]) for r in records
                    if r["op"] == collab.SWEEP_OP and r["dtype"] == "fp32" and r["B"] == batch
                    and r["backend"] == backend and r[key] is not None)
    return [p[0] for p in points], [p[1] for p in points]


def _log_axes(ax, vocabs: Sequence[int]) -> None:
    """Log-log axes with plain numbers: ticks at the measured V, and at 1-2-5 steps of the speed-up."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(vocabs, [str(v) for v in vocabs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_speedup_vs_vocab(path: str, records: Sequence[Record], batches: Sequence[int]) -> None:
    """One panel per batch size: each fused backend's speed-up over eager (solid) and compiled
    eager (dashed), and torch.compile's own speed-up over eager (grey), against V."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fused = sorted({r["backend"] for r in records if r["kind"] == collab.FUSED and r["op"] == collab.SWEEP_OP})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for backend in fused:
            ax.plot(*_sweep_points(records, batch, backend, "speedup_vs_eager"), "o-", label=f"{backend} vs eager")
            ax.plot(*_sweep_points(records, batch, backend, "speedup_vs_compiled"), "s--",
                    label=f"{backend} vs compiled eager")
        ax.plot(*_sweep_points(records, batch, collab.COMPILED, "speedup_vs_eager"), "^:", color="grey",
                label="torch.compile(eager) vs eager")
        ax.axhline(1.0, color="black", linewidth=0.8)
        _log_axes(ax, sorted({r["V"] for r in records if r["op"] == collab.SWEEP_OP and r["B"] == batch}))
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel("speed-up (x)")
        ax.set_title(f"{collab.OPS[collab.SWEEP_OP].title}, M=3, B={batch}, fp32"
                     + ("" if fused else "\n(no fused backend available)"), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
