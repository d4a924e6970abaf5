#!/bin/bash
# Earlier kernels against the tree's in one device call, the two alternating:
#
#   git archive REV kernels | tar -x -C .devdata/old        (here, before the call)
#   bash scripts/device_kernel_ab.sh ROWS [BENCH_ARGS...]   (on the device, carry .devdata/old)
#
# ROWS: bench rows (1-6), comma-separated. For each version ("old", then "new"; AB_ROUNDS
# times, default 1): GPU time kernel by kernel of each row's forward and fwd+bwd
# (scripts/profile_host_overhead.py --top 0), then with BENCH_ARGS (e.g. --reverse
# --dtype fp32) each row's do_bench line (scripts/bench_selective_scan.py --only R).
# Logs: $OUT/ab_<version><round>.log; their tails are printed.
set -o pipefail
rows=$1; shift
mkdir -p /tmp/old /tmp/new "$OUT"
ln -sfn "$PWD/.devdata/old/kernels" /tmp/old/medmamba_kernels
ln -sfn "$PWD/kernels" /tmp/new/medmamba_kernels
for round in $(seq "${AB_ROUNDS:-1}"); do
  for version in old new; do
    log="$OUT/ab_$version$round.log"
    K="env PYTHONPATH=/tmp/$version:$PWD:${PYTHONPATH:-} python3"
    { timeout 150 $K scripts/profile_host_overhead.py --rows "$rows" --top 0
      for row in ${rows//,/ }; do
        timeout 100 $K scripts/bench_selective_scan.py --only "$row" "$@" | grep -E "^[0-9]+, "
      done; } > "$log" 2>&1
    echo "== $version, round $round: exit $?"; grep -v "^ *$" "$log" | tail -n 24
  done
done
