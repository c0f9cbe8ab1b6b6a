#!/usr/bin/env bash
# perf/profile-bench.sh [BENCH ARGS...] — profile the broker under load:
# starts a release broker under perf record, drives it with `spate bench`
# (default: produce mode), stops the broker, and draws the flame graph.
#   perf/profile-bench.sh produce --messages 20000000
#   perf/profile-bench.sh consume --messages 20000000
source "$(dirname "$0")/common.sh"
need_perf
root="$(cd "$(dirname "$0")/.." && pwd)"
spate="$root/target/release/spate"
[ -x "$spate" ] || cargo build --release --manifest-path "$root/Cargo.toml"
port=$((20000 + RANDOM % 20000))
data_dir="$(mktemp -d)"
trap 'rm -rf "$data_dir"' EXIT
PERF_DATA="$PERF_OUT/broker.perf.data" "$(dirname "$0")/record.sh" "$spate" serve --listen "127.0.0.1:$port" --data-dir "$data_dir" 2>"$PERF_OUT/broker.log" &
recorder=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$spate" bench --brokers "127.0.0.1:$port" "${@:-produce}"
kill -INT "$(pgrep -f "serve --listen 127.0.0.1:$port" | head -1)"
wait "$recorder" || true
"$(dirname "$0")/flamegraph.sh" "$PERF_OUT/broker.perf.data" "$PERF_OUT/broker-flamegraph.svg"
