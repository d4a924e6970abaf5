#!/bin/bash
# ncu of one bench row (kernels imported from the tree), filtered to the lines that matter:
#   bash scripts/device_ncu.sh ROW DTYPE VARIANT [COUNT]    e.g. 1 fp32 serial 10
# Launches profiled: the first COUNT of `--only ROW --profile` (fwd, fwd, bwd, fwd, bwd...).
mkdir -p /tmp/k && ln -sfn "$PWD/kernels" /tmp/k/medmamba_kernels
PYTHONPATH=/tmp/k:$PWD timeout 500 ncu --clock-control none -k regex:'_serial|_carry|_bwd|_chunk|_fwd' -c "${4:-10}" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats \
  python3 scripts/bench_selective_scan.py --only "$1" --dtype "$2" --profile --variant "$3" 2>&1 |
  grep -E "^  [_a-z].*\(|Duration|Throughput|Registers|Occupancy|Grid Size|Cycles Per Issued|Issued Warp|No Eligible|Active Warps|Eligible Warps|Stall|smsp__pcsamp" |
  grep -v "^    INF"
