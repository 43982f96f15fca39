#!/usr/bin/env bash
# One round on the GPU machine (after ../shared/gpu/bundle's chunks are stored there):
#   bash scripts/gpu_round.sh tests    # GPU tests; starts making the benchmark set in the background
#   bash scripts/gpu_round.sh bench    # the throughput benchmark on that set
# Logs go to $OUT (the device tool brings them back).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BENCH_DATA=${BENCH_DATA:-/tmp/bench}
bench_set() {   # the benchmark's default set, made with all cores (the benchmark reuses it)
  python3 -c "
from pipelines.throughput import main; import sys
sys.argv=['x','--data','$BENCH_DATA']
from dali_gop.synthetic import make_dataset
make_dataset('$BENCH_DATA/hevc-1600x900-240f-g30-b0-10x6/videos', clips=10, cameras=6, frames=240,
             width=1600, height=900, gop=30, codec='hevc', textured=True)"
}
case "${1:-tests}" in
  tests)
    (setsid nohup bash -c "$(declare -f bench_set); BENCH_DATA=$BENCH_DATA; bench_set" \
      > "$OUT/../bench_set.log" 2>&1 &)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    python3 -m pytest -m gpu -v -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
    ;;
  bench)
    while pgrep -f make_dataset > /dev/null; do sleep 2; done
    python3 -m pipelines.throughput --data "$BENCH_DATA" --out "$OUT/throughput.json" "${@:2}" \
      2>&1 | tee "$OUT/throughput.log"
    ;;
esac
