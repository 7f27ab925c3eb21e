#!/usr/bin/env bash
# How long a new node takes to join a loaded cluster and become a voter on every
# partition: three `ringlog serve` processes on loopback, BYTES of 4 KiB records
# appended with `ringlog bench`, then a fourth node started with `serve --join`,
# timed until `ringlog members` lists it as a voter on every partition.
#
#   cargo build --release && benches/join_time.sh            # 1 GiB over 2 partitions
#   BYTES=268435456 SHARDS=1 benches/join_time.sh
#
# Environment: BYTES (default 1 GiB), SHARDS (partitions, default 2), PORT_BASE
# (default 27400; ports PORT_BASE+10..PORT_BASE+42 are used), DIR (default a new
# temporary directory, removed afterwards).
set -euo pipefail
ulimit -l unlimited 2>/dev/null || true
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/ringlog
BYTES=${BYTES:-1073741824}
SHARDS=${SHARDS:-2}
BASE=${PORT_BASE:-27400}
D=${DIR:-$(mktemp -d)}
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    [ -n "${DIR:-}" ] || rm -rf "$D"
}
trap cleanup EXIT

member() { # node id
    printf '[[nodes]]\nnode_id = %d\npeer_address = "127.0.0.1:%d"\nclient_address = "127.0.0.1:%d"\n' \
        "$1" $((BASE + 10 * $1 + 1)) $((BASE + 10 * $1))
}
config() { # node id, [[nodes]] text
    cat > "$D/node-$1.toml" <<C
node_id = $1
cluster_id = 99
data_dir = "$D/node-$1"
shards = $SHARDS
[listen]
client = "127.0.0.1:$((BASE + 10 * $1))"
peer = "127.0.0.1:$((BASE + 10 * $1 + 1))"
metrics = "127.0.0.1:$((BASE + 10 * $1 + 2))"
$2
C
}
for n in 1 2 3; do config "$n" "$(member 1; member 2; member 3)"; done
config 4 "$(member 4)"
for n in 1 2 3; do
    RUST_LOG=warn "$BIN" serve --config "$D/node-$n.toml" > "$D/log-$n" 2>&1 &
    pids+=($!)
done
ADDR=127.0.0.1:$((BASE + 10))
"$BIN" bench --addr "$ADDR" --count $((BYTES / 4096)) --record-size 4096 --batch 64 \
    --clients 8 --inflight 4 --warmup 0 | tail -2
start=$(date +%s.%N)
RUST_LOG=warn "$BIN" serve --config "$D/node-4.toml" --join "$ADDR" > "$D/log-4" 2>&1 &
pids+=($!)
until [ "$("$BIN" members --addr "$ADDR" 2>/dev/null | awk '$2 == 4 && $3 == "voter"' | wc -l)" -ge "$SHARDS" ]; do
    sleep 0.2
done
end=$(date +%s.%N)
"$BIN" members --addr "$ADDR"
echo "node 4 a voter on all $SHARDS partitions $(echo "$end - $start" | bc) s after it started ($BYTES bytes of 4 KiB records in the cluster)"
