#!/bin/bash
# Side-by-side comparison of ringlog binaries (docs/performance.md, "Issue 16",
# second session): R rounds, each running every case with every binary in turn,
# DUR measured after 2 s warmup; one line per run: name, case, records/s, p50 µs,
# server CPU µs per record, p99 µs. CASES picks cases (default: all but bulk). A
# third field adds bench flags to every run of that entry (TLS against plaintext,
# issue 18). Usage:
#   DUR=5s benches/compare.sh 3 old:path/to/old/ringlog new:target/release/ringlog | tee out
#   CASES="pipe c64 c1 bulk" benches/compare.sh 3 plain:target/release/ringlog "tls:target/release/ringlog:--tls"
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
for _ in $(seq "$R"); do for nb in "$@"; do n=${nb%%:*}; rest=${nb#*:}; b=${rest%%:*}
  # Flags after a second colon, split on spaces.
  f=(); [[ "$rest" == *:* ]] && read -ra f <<< "${rest#*:}"
  has pipe && run "$n pipe" "$b" --clients 64 --inflight 32 --connections 16 --record-size 256 "${f[@]}"
  has c64 && run "$n c64" "$b" --clients 64 --record-size 256 "${f[@]}"
  has n1s1 && run "$n n1s1" "$b" --nodes 1 --shards 1 --clients 64 --inflight 8 --connections 8 "${f[@]}"
  has n1s2 && run "$n n1s2" "$b" --nodes 1 --shards 2 --clients 64 --inflight 8 --connections 8 "${f[@]}"
  has c1 && run "$n c1" "$b" --clients 1 --record-size 256 "${f[@]}"
  # Bulk: 64 KiB records, 16 clients with 4 in flight each; MB/s = records/s / 16.
  has bulk && run "$n bulk" "$b" --clients 16 --inflight 4 --connections 4 --record-size 65536 "${f[@]}"
done; done
