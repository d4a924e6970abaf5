"""Summarise an ncu source page (`ncu -i R --page source --csv --print-source sass`).

    python scripts/ncu_source_table.py report.csv [--top 40]

Prints the instructions with the most warp-stall samples (with their per-reason counts
where the page has them), then the samples summed by opcode. Used by
scripts/device_ncu_source.sh on the GPU machine.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    with open(args.csv, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    # a "Kernel Name" line comes before the header
    lines = lines[next((i for i, line in enumerate(lines) if line.startswith('"Address"')), 0):]
    rows = list(csv.DictReader(lines))
    if not rows:
        print("no rows in", args.csv)
        return 1
    columns = list(rows[0])
    total_key = next((c for c in columns if c.startswith("Warp Stall Sampling (All")), None)
    if total_key is None:
        print("no stall sampling column")
        return 1
    reasons = [c for c in columns if c.startswith("stall_") and "Not Issued" not in c]
    total = sum(_number(r[total_key]) for r in rows) or 1.0
    print(f"\n{len(rows)} instructions, {total:.0f} samples")
    by_samples = sorted(rows, key=lambda r: -_number(r[total_key]))
    for r in by_samples[:args.top]:
        parts = [f"{k[6:]}={r[k]}" for k in reasons if _number(r[k]) >= 0.05 * _number(r[total_key])
                 and _number(r[k]) > 0]
        print(f"{100 * _number(r[total_key]) / total:5.1f}%  {r.get('Address', ''):>6}  "
              f"{r.get('Source', '')[:60]:<60}  {' '.join(parts)[:120]}")
    by_op: collections.Counter = collections.Counter()
    for r in rows:
        op = r.get("Source", "").split()
        op = [w for w in op if not w.startswith("@")]
        by_op[op[0].split(".")[0] if op else "?"] += _number(r[total_key])
    print("\nsamples by opcode:")
    for op, n in by_op.most_common(20):
        print(f"{100 * n / total:5.1f}%  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
