"""The GPU table (``mtkernels.bench.gpu_table``) on the CPU side: its arithmetic, its formatting, the
rows it builds (timed here with the CPU timer) and its exit without a CUDA device."""

import json
import os
import subprocess
import sys

import pytest
import torch

import mtkernels
from mtkernels.bench import gpu_table as gt
from mtkernels.bench import kd, measure
from mtkernels.bench.problems import Shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name, tb_s", [
    ("NVIDIA H100 80GB HBM3", 3.35),
    ("NVIDIA H100 PCIe", 2.0),
    ("NVIDIA H100 NVL", 3.9),
    ("NVIDIA H200", 4.8),
    ("NVIDIA H200 NVL", 4.8),
    ("NVIDIA A100-SXM4-80GB", 2.0),
    ("NVIDIA A100 80GB PCIe", 2.0),
    ("NVIDIA A100-SXM4-40GB", 1.555),
    ("NVIDIA A100-PCIE-40GB", 1.555),
    ("NVIDIA GH200 480GB", None),
    ("NVIDIA GeForce RTX 4090", None),
    ("", None),
    (None, None),
])
def test_peak_bandwidth_lookup(name, tb_s):
    assert gt.peak_bandwidth_tb_s(name) == tb_s


def test_bandwidth_arithmetic():
    m, b, v = 3, 64, 128256
    inputs = m * b * v * 2
    assert gt.collab_output_bytes("softmax_topk", b, v, top_k=50) == b * (50 * 12 + 4)
    assert gt.collab_output_bytes("sample_topk_topp", b, v) == b * 8
    assert gt.collab_output_bytes("collab_logits", b, v) == b * v * 4
    assert gt.collab_output_bytes("read_once", b, v, models=m, element_size=2) == 6
    assert gt.collab_bytes(m, b, v, 2, 1000) == inputs + 1000 == 49_251_304

    assert gt.achieved_gb_s(10**9, 1.0) == pytest.approx(1000.0)      # 1 GB in 1 ms = 1 TB/s
    assert gt.achieved_gb_s(inputs, 0.02) == pytest.approx(inputs / 2e4)
    assert gt.fraction_of_peak(3350.0, 3.35) == pytest.approx(1.0)
    assert gt.fraction_of_peak(1200.0, 4.8) == pytest.approx(0.25)
    assert gt.achieved_gb_s(None, 1.0) is None and gt.achieved_gb_s(100, None) is None
    assert gt.fraction_of_peak(100.0, None) is None and gt.fraction_of_peak(None, 3.35) is None


def _fake_rows():
    shape, other = "M=3 B=64 V=128256 bf16", "M=3 B=1 V=128256 bf16"
    return [
        gt.timed("softmax_topk", shape, "fused cuda", 0.025, nbytes=49_259_304, peak_mb=0.04),
        gt.timed("softmax_topk", shape, "eager (a)", 0.5, nbytes=49_259_304, peak_mb=200.0, baseline=True),
        gt.not_timed("softmax_topk", shape, "fused triton", "skipped: backend 'triton' is unavailable: no | pipe"),
        gt.not_timed("sample_topk_topp", shape, "FlashInfer", "failed: check: 3 sampled tokens outside"),
        gt.timed("softmax_topk", other, "fused cuda", 0.01, nbytes=769_548),  # no baseline for this shape
        gt.timed("kd forward_kd fwd+bwd", "N=4096 H=2048 V=128256 bf16", "fused cuda", 30.0, peak_mb=1100.0,
                 note="loss 11.2"),
        gt.timed("kd forward_kd fwd+bwd", "N=4096 H=2048 V=128256 bf16", "eager", 90.0, baseline=True),
    ]


def test_finalize_ratios_and_bandwidth():
    rows = gt.finalize(_fake_rows(), peak_tb_s=3.35)
    fused, eager, skipped, failed, other, kd_fused, kd_eager = rows
    assert fused["x_eager"] == pytest.approx(20.0) and eager["x_eager"] == pytest.approx(1.0)
    assert fused["gb_s"] == pytest.approx(49_259_304 / 25_000)
    assert fused["frac_peak"] == pytest.approx(49_259_304 / 25_000 / 3350)
    assert other["x_eager"] is None and other["gb_s"] == pytest.approx(76.9548)  # ratios stay within a shape
    assert kd_fused["x_eager"] == pytest.approx(3.0) and kd_fused["gb_s"] is None and kd_fused["frac_peak"] is None
    for r in (skipped, failed):
        assert r["median_ms"] is None and r["x_eager"] is None and r["gb_s"] is None and r["frac_peak"] is None
    assert gt.finalize(_fake_rows(), peak_tb_s=None)[0]["frac_peak"] is None


def test_markdown_table():
    rows = gt.finalize(_fake_rows(), peak_tb_s=3.35)
    meta = dict(device="NVIDIA H100 80GB HBM3", peak_bandwidth_tb_s=3.35, torch="2.13.0", cuda="12.8",
                triton="3.9.0", mtkernels="0.2.0", timer=measure.GPU_TIMER)
    md = gt.format_markdown(rows, meta)
    lines = md.splitlines()
    assert lines[0] == "## GPU timings: NVIDIA H100 80GB HBM3 (peak DRAM bandwidth 3.35 TB/s)"
    assert "triton.testing.do_bench" in md
    header = lines.index("| " + " | ".join(gt.COLUMNS) + " |")
    assert lines[header + 1] == "|---|---|---|---:|---:|---:|---:|---:|---|"
    body = lines[header + 2:]
    assert len(body) == len(rows) and all(line.startswith("| ") and line.endswith(" |") for line in body)
    assert body[0] == "| softmax_topk | M=3 B=64 V=128256 bf16 | fused cuda | 0.0250 | 20.00 | 1970 | 58.8 | 0.0 |  |"
    assert body[1] == ("| softmax_topk | M=3 B=64 V=128256 bf16 | eager (a) *(baseline)* | 0.500 | 1.00 | 98.5 "
                       "| 2.94 | 200.0 |  |")
    assert body[2] == ("| softmax_topk | M=3 B=64 V=128256 bf16 | fused triton | – | – | – | – | – | "
                       "skipped: backend 'triton' is unavailable: no \\| pipe |")
    assert body[3].endswith("| – | – | – | – | – | failed: check: 3 sampled tokens outside |")
    assert body[4] == "| softmax_topk | M=3 B=1 V=128256 bf16 | fused cuda | 0.0100 | – | 77.0 | 2.30 | – |  |"
    assert body[5] == ("| kd forward_kd fwd+bwd | N=4096 H=2048 V=128256 bf16 | fused cuda | 30.0 | 3.00 | – | – "
                       "| 1100.0 | loss 11.2 |")
    assert all(len(line.split(" | ")) == len(gt.COLUMNS) for line in body)

    unknown = gt.format_markdown(gt.finalize(_fake_rows(), None), dict(meta, peak_bandwidth_tb_s=None))
    assert "peak DRAM bandwidth unknown" in unknown.splitlines()[0]


def test_write_table_json_and_markdown(tmp_path):
    rows = gt.finalize(_fake_rows(), peak_tb_s=4.8)
    meta = dict(device="NVIDIA H200", peak_bandwidth_tb_s=4.8)
    json_path, md_path = gt.write_table(str(tmp_path / "out"), rows, meta)
    assert os.path.basename(json_path) == gt.JSON_NAME and os.path.basename(md_path) == gt.MD_NAME
    data = json.loads(open(json_path).read())
    assert data == {"meta": meta, "rows": rows}
    assert open(md_path).read() == gt.format_markdown(rows, meta)


def test_rows_built_on_cpu(monkeypatch):
    """Every row the table builds, on CPU tensors with the CPU timer: the fused CPU backend stands in
    for the GPU ones, so each op's rows, checks, skips and ratios are exercised here."""
    monkeypatch.setattr(measure, "cuda_time_ms",
                        lambda fn, device="cuda", warmup_ms=25, rep_ms=100: measure.median_time_ms(
                            fn, "cpu", measure.Timing(warmup=1, min_runs=2, max_runs=3, budget_s=0.05)))
    fused = "cpu" in mtkernels.available_backends()
    monkeypatch.setattr(gt, "GPU_BACKENDS", ("cpu", "cuda") if fused else ("cuda",))
    cpu = torch.device("cpu")
    rows = gt.collab_rows(Shape(3, 2, 4000, torch.bfloat16), cpu, compile=False, rep_ms=10)
    rows += gt.kd_rows((64, 32, 1000), torch.bfloat16, cpu, rep_ms=10)
    gt.finalize(rows, peak_tb_s=3.35)

    by = {(r["op"], r["implementation"]): r for r in rows}
    ops = ["softmax_topk", "sample_topk_topp", "collab_logits", "kd forward_kd fwd+bwd"]
    assert [r["op"] for r in rows] == sorted((r["op"] for r in rows), key=ops.index)
    for op in ops:
        base = [r for r in rows if r["op"] == op and r["baseline"]]
        assert len(base) == 1 and base[0]["status"] == "ok" and base[0]["x_eager"] == pytest.approx(1.0), op
        if not op.startswith("kd"):  # KD's CPU cases are named after the CPU backend only
            cuda_row = by[(op, "fused cuda")]
            assert cuda_row["status"].startswith("skipped: backend 'cuda'") and cuda_row["median_ms"] is None
        if fused:
            row = by[(op, "fused cpu")]
            assert row["status"] == "ok" and row["median_ms"] > 0 and row["x_eager"] > 0, row
            assert op.startswith("kd") or (row["check"]["passed"] and row["gb_s"] > 0 and row["frac_peak"] > 0)
    assert all(r["status"] == "ok" or r["status"].startswith("skipped: ") for r in rows), rows
    assert by[("softmax_topk", "torch.compile of (a)")]["status"] == "skipped: --no-compile"
    floor = by[("softmax_topk", "read-once floor (amax per input)")]
    assert floor["nbytes"] == 3 * 2 * 4000 * 2 + 3 * 2
    assert by[("collab_logits", "eager weighted sum, /τ")]["nbytes"] == 3 * 2 * 4000 * 2 + 2 * 4000 * 4
    kd_rows = [r for r in rows if r["op"].startswith("kd") and "loss" in r]
    assert kd_rows and max(r["loss"] for r in kd_rows) == pytest.approx(min(r["loss"] for r in kd_rows), rel=2e-2)
    if fused:
        assert by[("kd forward_kd fwd+bwd", "fused cpu")]["check"]["against"] == "eager loss"
        # a fused loss that disagrees with eager is reported as failed, without figures
        monkeypatch.setattr(gt, "KD_LOSS_RTOL", -1.0)
        monkeypatch.setattr(kd, "case_names", lambda device: ["fused-cpu"])
        wrong = gt.kd_rows((64, 32, 1000), torch.bfloat16, cpu, rep_ms=10)[0]
        assert wrong["implementation"] == "fused cpu" and wrong["status"].startswith("failed: check: loss")
        assert wrong["median_ms"] is None


def test_mumo_rows_built_on_cpu(monkeypatch):
    """The MuMo rows at the quick shapes on CPU tensors: every fused CPU result checked against eager,
    one baseline per op, floors marked; a fused result that disagrees is a failed row."""
    monkeypatch.setattr(measure, "cuda_time_ms",
                        lambda fn, device="cuda", warmup_ms=25, rep_ms=100: measure.median_time_ms(
                            fn, "cpu", measure.Timing(warmup=1, min_runs=2, max_runs=3, budget_s=0.05)))
    rows = gt.mumo_rows(True, torch.bfloat16, torch.device("cpu"), rep_ms=10)
    gt.finalize(rows, peak_tb_s=None)
    ops = ["mumo verify logits", "mumo verify fused", "mumo head topk", "mumo head ce fwd bwd"]
    assert sorted({r["op"] for r in rows}, key=ops.index) == ops
    for op in ops:
        mine = [r for r in rows if r["op"] == op]
        assert [r["status"] for r in mine if r["baseline"]] == ["ok"], op
        assert sum(r["note"] == "floor" for r in mine) == 1, op
        if "cpu" in mtkernels.available_backends():
            fused = [r for r in mine if r["implementation"] == "fused cpu"]
            assert fused and fused[0]["status"] == "ok" and fused[0]["check"]["passed"], fused
    assert all(r["status"] == "ok" or r["status"].startswith("skipped: ") for r in rows), rows
    if "cpu" in mtkernels.available_backends():
        monkeypatch.setattr(gt, "MUMO_RTOL", -1.0)
        wrong = [r for r in gt.mumo_rows(True, torch.bfloat16, torch.device("cpu"), rep_ms=10)
                 if r["implementation"] == "fused cpu"]
        assert wrong and all(r["status"].startswith("failed: check:") for r in wrong)


def test_gpu_timer_asks_do_bench_for_its_median(monkeypatch):
    triton_testing = pytest.importorskip("triton.testing")
    calls = []

    def do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        calls.append(dict(warmup=warmup, rep=rep, quantiles=quantiles, return_mode=return_mode))
        return 1.5

    monkeypatch.setattr(triton_testing, "do_bench", do_bench)
    assert measure._do_bench_median(lambda: None, 25, 300) == 1.5
    assert calls == [dict(warmup=25, rep=300, quantiles=None, return_mode="median")]

    def old_do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, fast_flush=True):
        calls.append(dict(quantiles=quantiles))
        return [2.5]

    monkeypatch.setattr(triton_testing, "do_bench", old_do_bench)
    assert measure._do_bench_median(lambda: None, 25, 100) == 2.5 and calls[-1] == dict(quantiles=[0.5])


def test_without_cuda_exits_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MTKERNELS_BACKEND")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mtkernels.bench.gpu_table", "--out", str(out)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(gt.NO_CUDA_LINE)
    assert not out.exists()  # no figures written
