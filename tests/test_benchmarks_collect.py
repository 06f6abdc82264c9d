"""Every benchmark file collects (the benchmarks themselves run with ``--benchmark-only``, not in the
test suite): a renamed helper or a broken import in ``benchmarks/`` fails here, in a fresh process."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarks_collect():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs them
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p",
                           "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    files = {line.split("::")[0] for line in collected}
    expected = {f"benchmarks/{name}" for name in os.listdir(os.path.join(ROOT, "benchmarks"))
                if name.startswith("bench_") and name.endswith(".py")}
    assert files == expected, (sorted(expected - files), proc.stdout[-2000:])
