#!/bin/bash
# Side-by-side comparison of ringlog binaries (docs/performance.md, "Issue 16",
# second session): R rounds, each running every case with every binary in turn,
# DUR measured after 2 s warmup; one line per run: name, case, records/s, p50 µs,
# server CPU µs per record, p99 µs. CASES picks cases (default: all five). Usage:
#   DUR=5s benches/compare.sh 3 old:path/to/old/ringlog new:target/release/ringlog | tee out
#   python3 benches/compare_summary.py out   # medians and ranges per case and binary
set -u
R=${1:?rounds}; shift
run() {
  local out
  out=$($2 bench --local --duration "${DUR:-5s}" --warmup 2s "${@:3}" --json 2>/dev/null | tail -1)
  python3 -c '
import json, sys
d = json.loads(sys.argv[2])
print(sys.argv[1], round(d["records_per_sec"]), d["latency_us"]["p50"],
      round(d["server_cpu_us_per_record"], 2), d["latency_us"]["p99"])' "$1" "$out"
}
has() { [[ " ${CASES:-pipe c64 n1s1 n1s2 c1} " == *" $1 "* ]]; }
for _ in $(seq "$R"); do for nb in "$@"; do n=${nb%%:*}; b=${nb#*:}
  has pipe && run "$n pipe" "$b" --clients 64 --inflight 32 --connections 16 --record-size 256
  has c64 && run "$n c64" "$b" --clients 64 --record-size 256
  has n1s1 && run "$n n1s1" "$b" --nodes 1 --shards 1 --clients 64 --inflight 8 --connections 8
  has n1s2 && run "$n n1s2" "$b" --nodes 1 --shards 2 --clients 64 --inflight 8 --connections 8
  has c1 && run "$n c1" "$b" --clients 1 --record-size 256
done; done
