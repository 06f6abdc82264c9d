"""Ahead-of-time compile of every Triton kernel for sm_80 and sm_90: no register spills.

No GPU is needed: ``triton.compile`` on an ``ASTSource`` runs Triton's whole pipeline down to a
cubin (with the ptxas that ships with Triton), and the bundled ``cuobjdump`` reports each
kernel's resources. A kernel that spills shows STACK or LOCAL > 0. The kernels and each
constexpr / num_warps / dtype variant the launchers use come from ``mtkernels.triton.aot_specs``:
``specs()`` lists them all, each with its signature, attrs and launch options.

The compile runs in a subprocess without TRITON_INTERPRET (conftest.py sets it for the kernel
tests, and under the interpreter ``@triton.jit`` gives functions that cannot be compiled).
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
CUOBJDUMP = os.path.join(NVIDIA_BIN, "cuobjdump")
PTXAS = os.path.join(NVIDIA_BIN, "ptxas")

# Compiles every spec for one capability; writes <out>/<i>.cubin and <out>/manifest.json.
# Specs compile in a pool of processes (each compile is single-threaded).
_COMPILE = r"""
import json, os, sys
from concurrent.futures import ProcessPoolExecutor
import triton
from triton.backends.compiler import GPUTarget
from mtkernels.triton import aot_specs

out_dir, cap = sys.argv[1], int(sys.argv[2])

def build(j):
    spec = aot_specs.specs()[j]
    src = triton.compiler.ASTSource(fn=spec["fn"], signature=spec["signature"],
                                    constexprs=spec["constexprs"], attrs=spec["attrs"])
    options = dict(spec["options"], num_warps=spec["num_warps"])
    compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=options)
    path = os.path.join(out_dir, f"{j}.cubin")
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    return dict(name=spec["name"], function=compiled.metadata.name, cubin=path)

if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        manifest = list(pool.map(build, range(len(aot_specs.specs()))))
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)
"""

_USAGE = re.compile(r"Function ([^\s:]+):\s*\n\s*(.*)")


def _tools_missing():
    missing = [p for p in (CUOBJDUMP, PTXAS) if not os.access(p, os.X_OK)]
    return f"Triton's bundled {', '.join(map(os.path.basename, missing))} not found in {NVIDIA_BIN}" if missing else None


def _resource_usage(cubin):
    """{function name: {"REG": n, "STACK": n, "LOCAL": n, ...}} from cuobjdump."""
    text = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin], check=True, capture_output=True,
                          text=True).stdout
    usage = {}
    for name, fields in _USAGE.findall(text):
        usage[name] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", fields)}
    return usage


@pytest.mark.skipif(_tools_missing() is not None, reason=_tools_missing() or "")
@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_without_spills(capability, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "0")  # silences 3.9's notice; launch options set it anyway
    proc = subprocess.run([sys.executable, "-c", _COMPILE, str(tmp_path), str(capability)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"ahead-of-time compile failed:\n{proc.stderr[-6000:]}"
    with open(tmp_path / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest, "aot_specs.specs() is empty"

    problems, table = [], []
    for entry in manifest:
        usage = _resource_usage(entry["cubin"])
        assert entry["function"] in usage, f"{entry['name']}: no resource usage reported: {usage}"
        res = usage[entry["function"]]
        table.append(f"sm_{capability} REG={res.get('REG', '?'):>3} {entry['name']}")
        if "REG" not in res or res["REG"] <= 0:
            problems.append(f"{entry['name']}: REG not reported ({res})")
        if res.get("STACK", -1) != 0 or res.get("LOCAL", -1) != 0:
            problems.append(f"{entry['name']}: spills (STACK={res.get('STACK')}, LOCAL={res.get('LOCAL')})")
    print("\n".join(table))
    assert not problems, "\n".join(problems)


def test_bitonic_topk_path_under_interpreter():
    """The GPU's tl.topk path of collab_topk_kernel, checked for values on a small case (the
    interpreter runs it slowly, so the kernel tests use the repeated-min path on the CPU)."""
    if os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available():
        pytest.skip("checks the interpreter; on a GPU the kernel tests cover this path")
    from mtkernels.reference import kernels as ref
    from mtkernels.triton import collab

    g = torch.Generator().manual_seed(1)
    x = torch.randint(-4, 4, (2, 70), generator=g).float()  # ties
    x[1, 5:40] = float("-inf")
    y = torch.randn(2, 73, generator=g).to(torch.bfloat16)
    weights, temperature = torch.tensor([[1.0, 0.5], [1.0, 0.0]]), torch.tensor([0.7, 1.0])
    for k in (1, 6, 40):
        values, ids, lse = collab.topk([x, y], weights, temperature, 70, k, bitonic=True)
        rv, rids, rlse = ref.topk([x, y], weights, temperature, 70, k)
        torch.testing.assert_close(values, rv)
        torch.testing.assert_close(lse, rlse)
        assert torch.equal(ids, rids)
