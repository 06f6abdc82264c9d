#!/usr/bin/env bash
# On a machine with a CUDA GPU: build both extensions (for the visible GPU), run the whole test
# suite (Triton and CUDA backends on the GPU), then the benchmarks. Logs go to ${OUT:-gpu-check}/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
{ python3 -m pip install -q --no-build-isolation --no-deps -e . && python3 -m mtkernels build; } > "$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; exit 1; }
python3 -c "import mtkernels; print(mtkernels.backend_report())" | tee -a "$out/gpu.txt"
python3 -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-tests} 2>&1 | tee "$out/tests.log" | tail -25
if [ "${RUN_BENCH:-1}" = 1 ]; then
  python3 -m mtkernels bench --out "$out/bench" 2>&1 | tee "$out/bench.log" | tail -45
fi
