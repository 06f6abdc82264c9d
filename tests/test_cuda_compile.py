"""The CUDA kernels (csrc/cuda/*.cu) compile for sm_80 and sm_90 without register spills.

Runs on machines without a GPU: it only needs nvcc (skipped when there is none). ptxas -v reports,
per kernel, its registers, stack frame and spill bytes; any spill fails, and so does a stack frame
(a non-inlined device call or a local array indexed at run time: a sign of slow code).
"""

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
ARCHS = ["80", "90"]


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


NVCC = _nvcc()

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda/bin)")


def _include_flags():
    flags = ["-I", os.path.join(ROOT, "csrc")]
    cccl = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))), "include", "cccl")
    if os.path.isdir(cccl):  # CUDA 13 keeps cub / thrust / libcu++ here
        flags += ["-I", cccl]
    return flags


def _short(name: str) -> str:
    """``topk_split_kernel`` or ``mass_split_kernel<16>`` from a mangled (Itanium ABI) kernel name."""
    base, i = name, name.find("_ZN") + 3
    while i > 2 and i < len(name) and name[i].isdigit():  # the nested name: <length><identifier>...
        digits = re.match(r"\d+", name[i:]).group()
        ident = name[i + len(digits):i + len(digits) + int(digits)]
        i += len(digits) + int(digits)
        if ident.endswith("_kernel"):
            base = ident
            break
    template = re.search(r"_kernelILi(\d+)E", name)
    return base + (f"<{template.group(1)}>" if template else "")


def parse_ptxas(log: str):
    """``{kernel: {"registers": n, "stack": bytes, "spill_stores": bytes, "spill_loads": bytes}}``."""
    kernels, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            kernels[current] = {}
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            kernels[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            kernels[current]["registers"] = int(m.group(1))
    return kernels


@pytest.mark.skipif(not SOURCES, reason="no csrc/cuda/*.cu")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_compiles_without_spills(source, arch, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-O3", "-Xptxas", "-v", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           *_include_flags(), source, "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{log[-6000:]}"
    kernels = parse_ptxas(log)
    entries = {name: info for name, info in kernels.items() if info.get("registers") is not None}
    assert entries, f"no kernels found in the ptxas output:\n{log[-3000:]}"
    print(f"\n{os.path.basename(source)} sm_{arch}:")
    for name, info in sorted(entries.items(), key=lambda kv: _short(kv[0])):
        print(f"  {_short(name):28s} {info['registers']:3d} registers, stack {info.get('stack', 0)} B")
    spills = {_short(n): i for n, i in entries.items() if i.get("spill_stores", 0) or i.get("spill_loads", 0)}
    assert not spills, f"register spills on sm_{arch}: {spills}"
    stacks = {_short(n): i["stack"] for n, i in entries.items() if i.get("stack", 0)}
    assert not stacks, f"stack frames on sm_{arch} (non-inlined call or dynamically indexed local array): {stacks}"
