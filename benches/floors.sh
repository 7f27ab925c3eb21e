#!/bin/bash
# The machine's floors that issue 16's targets are ratios to (docs/performance.md,
# "Eighth look"): the time of one durable O_DIRECT write of 4 KiB and of 20 KiB
# into already-written blocks, with one writer and with three at once (a 3-node
# cluster on one disk writes three logs together), then the 64-byte loopback round
# trip (benches/rtt2.py). Run it before and after a side-by-side comparison
# (benches/compare.sh); nothing else should be running. Usage: benches/floors.sh
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d -p "${TMPDIR:-/tmp}")
trap 'rm -rf "$dir"' EXIT
for i in 1 2 3; do dd if=/dev/zero of="$dir/f$i" bs=1M count=64 oflag=direct 2>/dev/null; done
# Prints the mean µs per write of `count` durable writes of `bs` into file `i`.
durable() {
  local bs=$1 i=$2 count=$3
  dd if=/dev/zero of="$dir/f$i" bs="$bs" count="$count" oflag=direct,dsync conv=notrunc 2>&1 |
    tail -1 | awk -v n="$count" '{ for (k = 1; k <= NF; k++) if ($k == "s,") t = $(k - 1); printf "%.0f", t * 1e6 / n }'
}
for bs in 4k 20k; do
  echo "durable $bs write, one writer: $(durable $bs 1 2000) $(durable $bs 1 2000) µs"
  for i in 1 2 3; do durable $bs $i 1500 > "$dir/out$i" & done
  wait
  echo "durable $bs write, three writers at once: $(cat "$dir/out1") $(cat "$dir/out2") $(cat "$dir/out3") µs each"
done
for _ in 1 2 3; do echo "loopback round trip: $(python3 "$HERE/rtt2.py")"; done
