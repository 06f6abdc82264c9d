"""`mtkernels bench --quick`: runs end to end, writes the JSON and the plot, checks every fused result."""

import json
import os
import subprocess
import sys

import torch

import mtkernels
from mtkernels.bench import collab
from mtkernels.bench.problems import QUICK_SHAPES

RECORD_FIELDS = {"section", "op", "kind", "backend", "device", "M", "B", "V", "dtype", "time_ms", "peak_mb",
                 "speedup_vs_eager", "speedup_vs_compiled", "speedup_vs_hf", "pct_of_floor", "check",
                 "checked_against_eager"}


def _fused_backend_available() -> bool:
    """Whether the bench (which never uses the Triton interpreter) has a fused backend to time."""
    available = mtkernels.available_backends()
    return "cpu" in available or (torch.cuda.is_available() and ({"triton", "cuda"} & set(available)))


def _run_bench(out_dir):
    """``python -m mtkernels bench --quick --no-compile``; with no fused backend, the reference stands in."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTKERNELS_BACKEND")}
    env["MPLBACKEND"] = "Agg"
    args = [sys.executable, "-m", "mtkernels", "bench", "--quick", "--no-compile", "--out", str(out_dir)]
    if not _fused_backend_available():
        args += ["--backend", "reference"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(args, env=env, cwd=root, capture_output=True, text=True, timeout=300)


def test_bench_quick_writes_checked_results(tmp_path):
    proc = _run_bench(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "collab.json").read_text())
    records, meta = data["records"], data["meta"]
    backends = meta["backends_benchmarked"]
    assert backends and meta["torch_compile"] is False and meta["quick"] is True

    assert records and all(RECORD_FIELDS <= set(r) for r in records)
    assert all(r["time_ms"] > 0 and r["peak_mb"] >= 0 for r in records)
    assert not any(r["backend"] == collab.COMPILED for r in records)

    fused = [r for r in records if r["kind"] == collab.FUSED]
    assert {r["backend"] for r in fused} == set(backends)
    assert all(r["checked_against_eager"] and r["check"]["passed"] for r in fused)
    eager = [r for r in records if r["backend"] == collab.EAGER]
    assert eager and all(r["check"]["passed"] and r["check"]["against"].startswith("reference") for r in eager)

    table = [r for r in records if r["section"] == "table"]
    for shape in QUICK_SHAPES:
        here = [r for r in table if (r["M"], r["B"], r["V"], r["dtype"]) ==
                (shape.models, shape.batch, shape.vocab, shape.dtype_name)]
        for op in collab.OPS.values():
            names = {r["backend"] for r in here if r["op"] == op.name}
            expected = set(backends) | {b for b in op.baselines if b != collab.COMPILED}
            assert names == expected, (shape, op.name, names)
        assert all(r["speedup_vs_eager"] is not None for r in here if r["kind"] != collab.FLOOR)
    assert all(r["speedup_vs_hf"] is not None for r in table if collab.OPS[r["op"]].sample
               and r["kind"] != collab.FLOOR)

    png = tmp_path / "collab_speedup_vs_vocab.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert proc.stdout.count(f"/{len(records)}]") == len(records)  # one progress line per case
    assert "x eager" in proc.stdout and "% floor" in proc.stdout

    ops = json.loads((tmp_path / "mumo.json").read_text())
    assert {r["op"] for r in ops["verify"]} == {"mumo_verify_logits", "mumo_verify_fused"}
    assert {r["op"] for r in ops["head"]} == {"mumo_head_topk", "mumo_head_ce_fwd_bwd"}
    assert all(r["time_ms"] > 0 for r in ops["verify"] + ops["head"])
    if "cpu" in mtkernels.available_backends():
        assert any(r["case"] == "fused-cpu" for r in ops["verify"]) and any(
            r["case"] == "fused-cpu" for r in ops["head"])

    mumo = json.loads((tmp_path / "mumo_generation.json").read_text(encoding="utf-8"))["records"]
    steps = {r["method"]: r for r in mumo if r["bench"] == "mumo_trie"}
    assert steps["trie_forward"]["ms"] > 0 and steps["separate_forwards"]["ms"] > 0
    runs = [r for r in mumo if r["bench"] == "mumo_generation"]
    assert {r["method"] for r in runs} == {"plain_greedy", "mumo_generator"}
    assert all(r["tokens_per_s"] > 0 for r in runs)
    assert all(r["speedup_tokens_per_s"] > 0 for r in runs if r["method"] == "mumo_generator")
    assert "MuMo generation" in proc.stdout
