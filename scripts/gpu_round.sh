#!/usr/bin/env bash
# One round on the GPU machine, after ../shared/gpu/bundle's chunks are stored and installed there:
#   bash scripts/gpu_round.sh tests [FILE...]   # GPU tests (default: test_gpu.py, test_gpu_dali.py);
#                                              # meanwhile makes the benchmark set in the background
#   bash scripts/gpu_round.sh modes    # raw decode strategies on that set (scripts/decode_modes.py)
#   bash scripts/gpu_round.sh bench    # the throughput benchmark on that set (waits for it)
#   bash scripts/gpu_round.sh profile VARIANT...   # scripts/profile_loader.py on that set
# Logs go to $OUT (the device tool brings them back).
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
BENCH_DATA=${BENCH_DATA:-/tmp/bench}

wait_for_bench_set() {   # made in the background by the tests step
  for _ in $(seq 300); do [ -e /tmp/bench_prepare.done ] && return; sleep 2; done
  echo "benchmark set not ready: /tmp/bench_prepare.log"; exit 1
}
without_dali_warnings() {   # line by line: a run cut at its time limit keeps what it printed
  grep --line-buffered -v "_iterator_deprecation\|Please set .reader_name"
}

case "${1:-tests}" in
  tests)
    # the benchmark's default set, made once with all cores while the tests run
    # (setsid: the device tool ends the command's processes when it returns, but not a new session;
    # the marker is written inside that session, or it would never appear)
    setsid nohup bash -c "python3 -m pipelines.throughput --data '$BENCH_DATA' --prepare-only \
       > /tmp/bench_prepare.log 2>&1; touch /tmp/bench_prepare.done" > /dev/null 2>&1 &
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    files=("${@:2}"); [ ${#files[@]} -gt 0 ] || files=(tests/test_gpu.py tests/test_gpu_dali.py)
    python3 -m pytest -m gpu -v -s -p no:cacheprovider "${files[@]}" 2>&1 | tee "$OUT/gpu-tests.log"
    ;;
  modes)
    wait_for_bench_set
    python3 scripts/decode_modes.py "$BENCH_DATA"/*/gops 2>&1 | tee "$OUT/decode-modes.log"
    ;;
  profile)
    wait_for_bench_set
    python3 scripts/profile_loader.py "$BENCH_DATA"/*/gops "${@:2}" 2>&1 | without_dali_warnings \
      | tee "$OUT/profile.log"
    ;;
  bench)
    wait_for_bench_set
    python3 -m pipelines.throughput --data "$BENCH_DATA" --out "$OUT/throughput.json" "${@:2}" \
      2>&1 | without_dali_warnings | tee "$OUT/throughput.log"
    ;;
esac
