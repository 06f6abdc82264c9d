"""Installing and first use as a new user meets them, each in a fresh process: the package installs
as pure Python, backends resolve at import without compiling, the first op call compiles (once, into
``$MTKERNELS_CACHE_DIR``), and the C++ code also builds for a baseline x86-64 CPU (no AVX2)."""

import os
import platform
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from mtkernels import jit

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: one op of each family on the cpu backend against the reference.
SMOKE = """
import torch, mtkernels
assert "cpu" in mtkernels.available_backends(), mtkernels.backend_report()
g = torch.Generator().manual_seed(0)
xs = [torch.randn(3, 4099, generator=g), torch.randn(3, 4099, generator=g).bfloat16()]
got = mtkernels.fused_collab_softmax(xs, [1.0, -0.5], top_k=5, temperature=0.7, backend="cpu")
want = mtkernels.fused_collab_softmax(xs, [1.0, -0.5], top_k=5, temperature=0.7, backend="reference")
assert torch.equal(got.ids, want.ids), (got.ids, want.ids)
torch.testing.assert_close(got.probs, want.probs, rtol=1e-5, atol=1e-7)
s, t, y = torch.randn(6, 301, generator=g), torch.randn(6, 301, generator=g), torch.arange(6)
for mode in ("skew", "reverse_kd"):
    a = mtkernels.self_evolution_kd_loss_from_logits(s, t, y, mode=mode, temperature=0.5, backend="cpu")
    b = mtkernels.self_evolution_kd_loss_from_logits(s, t, y, mode=mode, temperature=0.5, backend="reference")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
print("smoke ok", mtkernels.__file__)
"""


def _run(code: str, env: dict, python: str = sys.executable, timeout: int = 900) -> str:
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(ROOT.parent))  # not the checkout: import what is installed
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _env(cache: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != jit.CPU_ARCH_ENV}
    env.update({jit.CACHE_ENV: str(cache)}, **extra)
    return env


def test_import_and_available_backends_compile_nothing(tmp_path):
    out = _run("import mtkernels, os\n"
               "assert 'cpu' in mtkernels.available_backends(), mtkernels.backend_report()\n"
               "mtkernels.backend_report()\n"
               f"assert not os.path.exists({str(tmp_path / 'cache')!r}), 'something was compiled'\n",
               _env(tmp_path / "cache"))
    assert "compiling" not in out


def test_generation_is_imported_on_first_access(tmp_path):
    """``import mtkernels`` (and the ``mtkernels`` command's module) import neither transformers nor
    ``mtkernels.generation`` nor MuMo's generator; the attributes import them on first access."""
    pytest.importorskip("transformers")
    _run("import sys, mtkernels, mtkernels.cli\n"
         "assert 'transformers' not in sys.modules and 'mtkernels.generation' not in sys.modules\n"
         "assert 'mtkernels.mumo.generator' not in sys.modules\n"
         "gen = mtkernels.generation\n"
         "assert mtkernels.mumo.MuMoGenerator.__name__ == 'MuMoGenerator'\n"
         "assert gen.CollabGenerator.__name__ == 'CollabGenerator'\n"
         "try:\n    mtkernels.no_such_attribute\nexcept AttributeError as e:\n    assert 'no_such_attribute' in str(e)\n"
         "else:\n    raise AssertionError('no AttributeError')\n", _env(tmp_path / "cache"))


def test_cache_key_follows_sources_flags_and_arch(monkeypatch):
    plan = jit.cpu_plan()
    assert plan.key == jit.cpu_plan().key
    monkeypatch.setenv(jit.CPU_ARCH_ENV, "x86-64")
    baseline = jit.cpu_plan()
    assert "-march=x86-64" in baseline.cflags and baseline.key != plan.key


def test_cuda_build_plan(monkeypatch):
    """The CUDA plan for --cuda-arch 8.0,9.0 (checked without running nvcc: test_cuda_compile does)."""
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    plan = jit.cuda_plan(["8.0", "9.0"])
    flags = " ".join(plan.cuda_flags)
    assert "arch=compute_80,code=sm_80" in flags and "arch=compute_90,code=sm_90" in flags
    names = {os.path.basename(s) for s in plan.sources}
    assert {"collab.cu", "self_evolution_kd.cu", "bindings.cpp", "kd_bindings.cpp"} <= names


def test_cuda_build_on_a_cpu_torch_says_so():
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    proc = subprocess.run([sys.executable, "-m", "mtkernels", "build", "--cuda-arch", "8.0,9.0", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA build of torch" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 baseline build")
def test_baseline_x86_64_build_takes_the_scalar_paths(tmp_path):
    """-march=x86-64 has no AVX2: the CPU kernels' scalar twins must build and agree with the reference."""
    cache = tmp_path / "cache"
    out = _run(SMOKE, _env(cache, **{jit.CPU_ARCH_ENV: "x86-64"}))
    assert "smoke ok" in out and "compiling the cpu kernels" in out
    assert any(p.name.startswith("mtkernels_cpu_") and p.is_dir() for p in cache.iterdir())


INSTALL_FORMS = {"plain": [], "no-build-isolation": ["--no-build-isolation"], "editable": ["-e"],
                 "editable-no-build-isolation": ["--no-build-isolation", "-e"]}


@pytest.mark.slow
@pytest.mark.parametrize("form", list(INSTALL_FORMS))
def test_pip_install_into_a_fresh_venv(tmp_path, form):
    """``pip install [-e] [--no-build-isolation] .`` into a fresh venv whose torch is the one
    installed here, then first use: import, backends, one op per family (compiled into the cache)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=True).create(env_dir)
    python = str(env_dir / ("Scripts" if os.name == "nt" else "bin") / "python")
    if "--no-build-isolation" in INSTALL_FORMS[form]:  # the caller provides the build requirements
        tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
        build_requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
        subprocess.run([python, "-m", "pip", "install", "-q", *build_requires], check=True, capture_output=True,
                       timeout=600)
    pip = subprocess.run([python, "-m", "pip", "install", "-q", *INSTALL_FORMS[form], str(ROOT)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    if "-e" in INSTALL_FORMS[form]:  # the checkout's package and sources
        package, sources = repr(str(ROOT / "mtkernels")), repr(str(ROOT / "csrc"))
    else:  # a copy in the venv, sources shipped inside the package
        package, sources = "'site-packages'", "os.path.dirname(mtkernels.__file__)"
    installed = ("import os\nfrom mtkernels import jit\n"
                 f"assert {package} in mtkernels.__file__, mtkernels.__file__\n"
                 f"assert jit.source_root().startswith({sources}), jit.source_root()\n")
    cache = Path(os.environ.get(jit.CACHE_ENV) or tmp_path / "cache")  # CI's cache: the build is reused
    env = {k: v for k, v in _env(cache).items() if k != "PYTHONPATH"}  # the venv's own install, nothing else
    assert "smoke ok" in _run(SMOKE + installed, env, python=python)
