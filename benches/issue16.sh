#!/bin/bash
# Issue 16's side-by-side run (docs/performance.md, "Issue 16"): an old and a new
# ringlog binary, 3 rounds alternating, every case 2 s warmup + 8 s measured, the
# machine's floors (benches/floors.sh: durable writes, the 64-byte loopback round
# trip) at the start and the end. Usage:
#   OLD=path/to/old/ringlog NEW=target/release/ringlog OUT=file benches/issue16.sh
# then summarize the JSON lines of OUT.
set -u
OLD=${OLD:?path of the old binary}; NEW=${NEW:-target/release/ringlog}
OUT=${OUT:-issue16.txt}; HERE=$(cd "$(dirname "$0")" && pwd)
run() { echo "$1 $($2 bench --local --duration 8s --warmup 2s "${@:3}" --json 2>/dev/null)" >> "$OUT"; }
# The floors (benches/floors.sh), one "floor ..." line each. Runs before 2026-12-04
# wrote three raw `dd` lines for the 4 KiB write and no 20 KiB or three-writer lines.
floors() { "$HERE/floors.sh" | sed 's/^/floor /' >> "$OUT"; }
floors
for _ in 1 2 3; do for b in old new; do
  if [ "$b" = old ]; then B=$OLD; else B=$NEW; fi
  run "$b n1s1" "$B" --nodes 1 --shards 1 --clients 64 --inflight 8 --connections 8
  run "$b n1s2" "$B" --nodes 1 --shards 2 --clients 64 --inflight 8 --connections 8
  run "$b c64" "$B" --clients 64 --record-size 256
  run "$b c1" "$B" --clients 1 --record-size 256
  run "$b pipe" "$B" --clients 64 --inflight 32 --connections 16 --record-size 256
  # The new binary reports CPU per thread itself; the sampler gives both the same.
  python3 "$HERE/threads.py" 5 5 > "$OUT.threads" &
  run "$b n3s2" "$B" --nodes 3 --shards 2 --clients 64 --inflight 8 --connections 8
  wait; echo "threads $b $(tr '\n' ';' < "$OUT.threads")" >> "$OUT"
done; done
floors; rm -f "$OUT.threads"
