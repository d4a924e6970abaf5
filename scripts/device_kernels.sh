#!/bin/bash
# Kernel checks and timings in one device call (sections in the order given):
#
#   bash scripts/device_call.sh run bash scripts/device_kernels.sh tests fwd table inference
#       (carry .devdata/bench/env: the inference tests need monai and friends)
#
#   tests      tests/kernels/test_triton*.py on the GPU (kernels imported from the tree;
#              TEST_WORKERS pytest-xdist workers, default 8: the compiles run in parallel)
#   table      scripts/bench_selective_scan.py: the issue's table
#   table-noreplay  ... --no-replay (the host functions' Python every call, replay.py off)
#   table-public    ... --api public (the public selective_scan, as the anchor was timed)
#   fwd        ... --fwd-variants          bwd   ... --bwd-variants (BWD_LABELS: the
#              default and these comma-separated labels of BWD_CONFIGS only)
#   host       ... --host (CUDA-graph GPU time vs host time a call)
#   times      scripts/profile_host_overhead.py --rows 1,5: GPU time by kernel (torch.profiler)
#   hostprof   scripts/profile_host_overhead.py --rows 3,4 --top 25: host time, cProfile
#   public     ... --public: the same for the public selective_scan (eager autograd)
#   autograd   ... --autograd: host us of a training call's pieces (engine vs ours), replay
#              states; AUTOGRAD_TOP=N adds the torch.profiler table of N rows
#   public-infer  ... --inference --rows 2,3,4: the public inference call taken apart
#   threshold  scripts/bench_serial_threshold.py: mid-length rows, "serial" from 16384 or 2048
#   carry      ... --carry (the carry over chunks alone, by carry block)
#   carrycap   scripts/bench_serial_carry.py: the rows' fwd and fwd+bwd by the carry block's cap
#   aggsplit   ... --rows 1: by the aggregate split (row 1's default 3 first and last)
#   short      ... --short-rows (one-chunk forwards of short sequences by variant, warps)
#   waves      scripts/bench_wave_chunks.py: the "serial" forward by chunk, waves of programs
#   serial     ... --serial-options ("serial" plans side by side)
#   passes     ... --serial-passes (each "serial" pass alone, by plan; PASS_LABELS: the
#              comma-separated labels of SERIAL_PASS_CONFIGS to time)
#   train      ... --train-chunks (a training call by backward chunk and register cap)
#   layout     scripts/bench_bc_layout.py --kernels: B/C state-major against position-major
#   inference  pytest -m gpu tests/inference
#   bound      scripts/bench_arith_bound.py: each pass's arithmetic alone, the targets' bound
#   mamba      scripts/mamba_reference.py build: mamba_ssm's CUDA scan from its sdist, checked
#              (carry .devdata/mamba_ssm, unpacked here by `mamba_reference.py prepare`)
#   table-mamba, table-public-mamba   the table and table-public, with mamba_ssm timed
#              beside ours in the same run (after `mamba`, or building it first); ROUNDS=K
#              times each call K times, ours and mamba_ssm's alternated, medians printed
# Each section's log goes to $OUT/<section>$LOG_TAG.log; its tail is printed. KERNELS_DIR
# (default ./kernels) runs other kernels, e.g. .devdata/old/kernels of device_kernel_ab.sh.
set -o pipefail
mkdir -p /tmp/k "$OUT" && ln -sfn "$(realpath "${KERNELS_DIR:-kernels}")" /tmp/k/medmamba_kernels
K="env PYTHONPATH=/tmp/k:$PWD:${PYTHONPATH:-} python3"
for section in "$@"; do
  log="$OUT/$section${LOG_TAG:-}.log"
  case $section in
    tests) timeout 420 $K -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-8}" tests/kernels/test_triton.py tests/kernels/test_triton_chunks.py \
             tests/kernels/test_triton_fwd_variants.py tests/kernels/test_triton_kept_states.py \
             tests/kernels/test_triton_tile_scans.py tests/kernels/test_triton_bwd_options.py \
             tests/kernels/test_triton_bwd_serial.py tests/kernels/test_serial_waves.py \
             tests/kernels/test_triton_replay.py tests/kernels/test_triton_sums.py \
             tests/kernels/test_triton_chunks_carried.py > "$log" 2>&1 ;;
    table) timeout 300 $K scripts/bench_selective_scan.py > "$log" 2>&1 ;;
    table-noreplay) timeout 300 $K scripts/bench_selective_scan.py --no-replay > "$log" 2>&1 ;;
    table-public) timeout 300 $K scripts/bench_selective_scan.py --api public > "$log" 2>&1 ;;
    fwd) timeout 240 $K scripts/bench_selective_scan.py --fwd-variants > "$log" 2>&1 ;;
    bwd) timeout 300 $K scripts/bench_selective_scan.py --bwd-variants \
           ${BWD_LABELS:+--bwd-configs "$BWD_LABELS"} > "$log" 2>&1 ;;
    host) timeout 240 $K scripts/bench_selective_scan.py --host > "$log" 2>&1 ;;
    times) timeout 120 $K scripts/profile_host_overhead.py --rows 1,5 --top 0 > "$log" 2>&1 ;;
    hostprof) timeout 120 $K scripts/profile_host_overhead.py --rows 3,4 --top 25 > "$log" 2>&1 ;;
    public) timeout 120 $K scripts/profile_host_overhead.py --rows 3,4 --top 30 --public > "$log" 2>&1 ;;
    public-infer) timeout 150 $K scripts/profile_host_overhead.py --rows 2,3,4 --top 25 --inference \
        > "$log" 2>&1 ;;
    autograd) timeout 120 $K scripts/profile_host_overhead.py --rows 3,4 --autograd --top "${AUTOGRAD_TOP:-0}" \
                > "$log" 2>&1 ;;
    threshold) timeout 300 $K scripts/bench_serial_threshold.py > "$log" 2>&1 ;;
    carry) timeout 120 $K scripts/bench_selective_scan.py --carry > "$log" 2>&1 ;;
    carrycap) timeout 300 $K scripts/bench_serial_carry.py > "$log" 2>&1 ;;
    aggsplit) timeout 300 $K scripts/bench_serial_carry.py --rows 1 \
                --settings "split 3,split 1,split 2,split 6,split 3" > "$log" 2>&1 ;;
    short) timeout 200 $K scripts/bench_selective_scan.py --short-rows > "$log" 2>&1 ;;
    waves) timeout 330 $K scripts/bench_wave_chunks.py > "$log" 2>&1 ;;
    layout) timeout 400 $K scripts/bench_bc_layout.py --kernels > "$log" 2>&1 ;;
    serial) timeout 200 $K scripts/bench_selective_scan.py --serial-options > "$log" 2>&1 ;;
    passes) timeout 300 $K scripts/bench_selective_scan.py --serial-passes \
              ${PASS_LABELS:+--pass-configs "$PASS_LABELS"} > "$log" 2>&1 ;;
    train) timeout 560 $K scripts/bench_selective_scan.py --train-chunks > "$log" 2>&1 ;;
    mamba) timeout 540 $K scripts/mamba_reference.py build > "$log" 2>&1 ;;
    table-mamba) timeout 560 $K scripts/bench_selective_scan.py --mamba .devdata/mamba_ssm \
                   --rounds "${ROUNDS:-1}" > "$log" 2>&1 ;;
    table-public-mamba) timeout 560 $K scripts/bench_selective_scan.py --api public \
                          --mamba .devdata/mamba_ssm --rounds "${ROUNDS:-1}" > "$log" 2>&1 ;;
    bound) timeout 400 $K scripts/bench_arith_bound.py > "$log" 2>&1 ;;
    inference) timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/inference \
                 > "$log" 2>&1 ;;
    *) echo "unknown section $section"; exit 2 ;;
  esac
  echo "== $section: exit $?"; tail -n 40 "$log"
done
