#!/usr/bin/env bash
# On a machine with a CUDA GPU, in one call (~12 minutes on an H100 box with 16 cores):
#   1. build both extensions for the visible GPU (kernels compile on first use otherwise);
#   2. the GPU table: every op against its baselines on CUDA tensors, timed with
#      triton.testing.do_bench, with achieved bandwidth as a fraction of the device's peak
#      (python -m mtkernels.bench.gpu_table; FlashInfer / Liger rows only where already installed);
#   3. the whole test suite (Triton and CUDA backends on the GPU);
#   4. optionally (RUN_BENCH=1) `mtkernels bench`;
# then a summary of the stages and the table again. A failing stage does not stop the others.
# Everything is written under ${OUT:-gpu-check}/: gpu.txt, build.log, gpu_table.{json,md,log},
# tests.log (and bench/, bench.log).
#
# Environment: OUT, MAX_JOBS (default 16), PYTEST_ARGS (default: tests), RUN_BENCH (default 0),
# TABLE_ARGS (extra arguments of gpu_table, e.g. --no-compile), DEADLINE_S (default 690: the test
# stage is interrupted at this many seconds after the start, pytest then reporting what ran, so
# that the summary always prints).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
deadline=${DEADLINE_S:-690}
declare -A rc

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"

echo "== build"
{ python3 -m pip install -q --no-build-isolation --no-deps -e . && python3 -m mtkernels build; } > "$out/build.log" 2>&1
rc[build]=$?
if [ "${rc[build]}" != 0 ]; then tail -40 "$out/build.log"; echo "build failed (rc ${rc[build]}): going on"; fi
python3 -c "import mtkernels; print(mtkernels.backend_report())" 2>&1 | tee -a "$out/gpu.txt"

echo "== GPU table"
rm -f "$out/gpu_table.json" "$out/gpu_table.md"  # never show a previous run's figures
# shellcheck disable=SC2086
timeout -k 10 420 python3 -m mtkernels.bench.gpu_table --out "$out" ${TABLE_ARGS:-} 2>&1 | tee "$out/gpu_table.log"
rc[gpu_table]=${PIPESTATUS[0]}

echo "== tests"
left=$(( deadline - SECONDS ))
[ "$left" -lt 60 ] && left=60
# shellcheck disable=SC2086
timeout -s INT -k 20 "$left" python3 -m pytest -q -p no:cacheprovider -rsfE ${PYTEST_ARGS:-tests} > "$out/tests.log" 2>&1
rc[tests]=$?
tail -25 "$out/tests.log"
[ "${rc[tests]}" = 124 ] && echo "tests interrupted after ${left}s (DEADLINE_S=$deadline): see $out/tests.log"

if [ "${RUN_BENCH:-0}" = 1 ]; then
  echo "== mtkernels bench"
  python3 -m mtkernels bench --out "$out/bench" 2>&1 | tee "$out/bench.log" | tail -45
  rc[bench]=${PIPESTATUS[0]}
fi

echo
echo "== summary ($SECONDS s)"
status=0
for stage in build gpu_table tests bench; do
  [ -n "${rc[$stage]+set}" ] || continue
  echo "  $stage: rc ${rc[$stage]}"
  [ "${rc[$stage]}" = 0 ] || status=1
done
echo
if [ -f "$out/gpu_table.md" ]; then  # written by this run (removed before it)
  cat "$out/gpu_table.md"
  echo
  echo "table: $out/gpu_table.json, $out/gpu_table.md"
else
  echo "no GPU table this run: see $out/gpu_table.log"
fi
exit $status
