"""Medians and ranges of benches/compare.sh's lines, per case and binary.

Usage: DUR=5s benches/compare.sh 4 old:A new:B | tee out; python3 benches/compare_summary.py out
"""
import collections
import statistics
import sys

COLUMNS = ["records/s", "p50 µs", "CPU µs/record", "p99 µs"]

runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    fields = line.split()
    if len(fields) < 5:
        continue
    runs[(fields[1], fields[0])].append([float(x) for x in fields[2:]])
for (case, name), values in sorted(runs.items()):
    parts = [f"{case:5} {name:8} n={len(values)}"]
    for k, column in enumerate(COLUMNS[: len(values[0])]):
        xs = [v[k] for v in values]
        parts.append(f"{column} {statistics.median(xs):.6g} ({min(xs):.6g} – {max(xs):.6g})")
    print("  ".join(parts))
