#!/bin/bash
# Where a kernel's warps stall, instruction by instruction (ncu source counters):
#   bash scripts/device_ncu_source.sh ROW DTYPE KERNEL_REGEX [SKIP [BWD_CONFIG]]
# profiles launch SKIP (0-based) of the kernels matching KERNEL_REGEX in
# `bench_selective_scan.py --only ROW --profile` (its backward in BWD_CONFIG, a label of
# bench_scan_variants.BWD_CONFIGS, if given) and prints the SASS instructions with the
# most stall samples, then the samples summed by opcode (scripts/ncu_source_table.py).
# With $OUT set (a device call) the report's source page is kept as $OUT/src_*.csv.
set -o pipefail
mkdir -p /tmp/k && ln -sfn "$PWD/kernels" /tmp/k/medmamba_kernels
name=src_$1_$2_$(echo "$3" | tr -cd 'a-z_')_${4:-0}$(echo "${5:-}" | tr -cd 'a-z0-9')
rep=/tmp/$name
PYTHONPATH=/tmp/k:$PWD timeout 400 ncu --clock-control none -k regex:"$3" -s "${4:-0}" -c 1 \
  --section SourceCounters --section WarpStateStats --import-source no -f -o "$rep" \
  python3 scripts/bench_selective_scan.py --only "$1" --dtype "$2" --profile \
  ${5:+--bwd-configs "$5"} > /tmp/$name.log 2>&1
tail -3 /tmp/$name.log
ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "${OUT:-/tmp}/$name.csv" 2>&1
python3 scripts/ncu_source_table.py "${OUT:-/tmp}/$name.csv"
