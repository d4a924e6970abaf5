#!/bin/bash
# ncu of one bench row (kernels imported from the tree), filtered to the lines that matter:
#   bash scripts/device_ncu.sh ROW DTYPE VARIANT [COUNT]    e.g. 1 fp32 serial 10
# Launches profiled: the first COUNT of `--only ROW --profile` (fwd, fwd, bwd, fwd, bwd...).
# With $OUT set (a device call), the whole report, pipe and instruction sections included,
# is also kept as $OUT/ncu_ROW_DTYPE_VARIANT.txt.
mkdir -p /tmp/k && ln -sfn "$PWD/kernels" /tmp/k/medmamba_kernels
report=${OUT:-/tmp}/ncu_$1_$2_$3.txt
PYTHONPATH=/tmp/k:$PWD timeout 500 ncu --clock-control none -k regex:'_serial|_carry|_bwd|_chunk|_fwd' -c "${4:-10}" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats \
  --section MemoryWorkloadAnalysis \
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active$' \
  python3 scripts/bench_selective_scan.py --only "$1" --dtype "$2" --profile --variant "$3" > "$report" 2>&1
grep -E "^  [_a-z].*\(|Duration|Throughput|Registers|Occupancy|Grid Size|Cycles Per Issued|Issued Warp|No Eligible|Active Warps|Eligible Warps|Stall|smsp__pcsamp|Issue Slots|Executed Ipc|stalled|pipe_" "$report" |
  grep -v "^    INF"
