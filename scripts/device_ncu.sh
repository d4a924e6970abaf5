#!/bin/bash
# ncu of one bench row (kernels imported from the tree), filtered to the lines that matter:
#   bash scripts/device_ncu.sh ROW DTYPE VARIANT [COUNT]    e.g. 1 fp32 serial 10
# Launches profiled: the first COUNT of `--only ROW --profile` (fwd, fwd, bwd, fwd, bwd...).
# With $OUT set (a device call), the whole report, pipe and instruction sections included,
# is also kept as $OUT/ncu_ROW_DTYPE_VARIANT.txt. KERNELS (a regex, default every scan
# kernel) narrows the launches counted; BREAKDOWN=1 adds the sub-metrics behind the L1 and
# SM throughputs (which unit is the busy one).
mkdir -p /tmp/k && ln -sfn "$PWD/kernels" /tmp/k/medmamba_kernels
report=${OUT:-/tmp}/ncu_$1_$2_$3.txt
metrics='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio$,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active$'
[ -n "${BREAKDOWN:-}" ] && metrics+=',breakdown:l1tex__throughput.avg.pct_of_peak_sustained_elapsed,breakdown:sm__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,smsp__inst_executed_pipe_lsu.sum,l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum'
PYTHONPATH=/tmp/k:$PWD timeout 500 ncu --clock-control none -k regex:"${KERNELS:-_serial|_carry|_bwd|_chunk|_fwd}" -c "${4:-10}" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SchedulerStats --section ComputeWorkloadAnalysis --section InstructionStats \
  --section MemoryWorkloadAnalysis \
  --metrics "$metrics" \
  python3 scripts/bench_selective_scan.py --only "$1" --dtype "$2" --profile --variant "$3" > "$report" 2>&1
grep -E "^  [_a-z].*\(|l1tex__|sm__|smsp__inst|Duration|Throughput|Registers|Occupancy|Grid Size|Cycles Per Issued|Issued Warp|No Eligible|Active Warps|Eligible Warps|Stall|smsp__pcsamp|Issue Slots|Executed Ipc|stalled|pipe_" "$report" |
  grep -v "^    INF"
