#!/usr/bin/env bash
# Starts or stops N local spate nodes on 127.0.0.1, for trying a cluster out.
#
#   scripts/cluster.sh start 3     # nodes 1..3, every one a controller voter
#   scripts/cluster.sh status      # who is up, and the cluster's brokers
#   scripts/cluster.sh stop        # SIGTERM every node started here
#
# Node i listens for Kafka clients on 127.0.0.1:$((BASE_PORT + i)) (9091+i by
# default: 9092, 9093, 9094), for controller traffic on 19091+i and serves
# its admin endpoint on 19643+i. Data and logs go to $SPATE_CLUSTER_DIR
# (./cluster). Extra `--set key=value` settings can follow N. Each node runs
# one shard unless told otherwise, so that three fit on a small machine.
set -euo pipefail

cmd=${1:-}
count=${2:-3}
dir=${SPATE_CLUSTER_DIR:-./cluster}
base_port=${BASE_PORT:-9091}
controller_base=${CONTROLLER_BASE_PORT:-19091}
admin_base=${ADMIN_BASE_PORT:-19643}
bin=${SPATE_BIN:-}

voters() {
    local n=$1 list=""
    for i in $(seq 1 "$n"); do
        list+="${list:+,}$i@127.0.0.1:$((controller_base + i))"
    done
    echo "$list"
}

start() {
    if [[ -z "$bin" ]]; then
        cargo build --release --quiet
        bin=./target/release/spate
    fi
    mkdir -p "$dir"
    local quorum
    quorum=$(voters "$count")
    for i in $(seq 1 "$count"); do
        if [[ -f "$dir/node-$i.pid" ]] && kill -0 "$(cat "$dir/node-$i.pid")" 2>/dev/null; then
            echo "node $i is already running (pid $(cat "$dir/node-$i.pid"))"
            continue
        fi
        "$bin" serve \
            --set node_id="$i" \
            --set listen="127.0.0.1:$((base_port + i))" \
            --set controller_listen="127.0.0.1:$((controller_base + i))" \
            --set controller_quorum_voters="$quorum" \
            --set admin_listen="127.0.0.1:$((admin_base + i))" \
            --set data_dir="$dir/node-$i" \
            --set shards=1 --set pin_shards=false \
            "${@:3}" >"$dir/node-$i.log" 2>&1 &
        echo $! >"$dir/node-$i.pid"
        echo "node $i: kafka 127.0.0.1:$((base_port + i)), pid $!, log $dir/node-$i.log"
    done
    for i in $(seq 1 "$count"); do
        for _ in $(seq 1 300); do
            curl -fs "http://127.0.0.1:$((admin_base + i))/v1/ready" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fs "http://127.0.0.1:$((admin_base + i))/v1/ready" >/dev/null 2>&1 \
            || { echo "node $i is not ready; see $dir/node-$i.log" >&2; exit 1; }
    done
    echo "cluster of $count ready; bootstrap servers: $(seq -s, -f "127.0.0.1:%g" $((base_port + 1)) $((base_port + count)))"
}

stop() {
    local pids=()
    for pidfile in "$dir"/node-*.pid; do
        [[ -f "$pidfile" ]] || continue
        pids+=("$(cat "$pidfile")")
        kill "${pids[-1]}" 2>/dev/null || true
        rm -f "$pidfile"
    done
    # Wait for the nodes to finish their clean shutdown (at most 30 s each),
    # so that a new start finds the ports and data directories free.
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    echo "stopped"
}

status() {
    for pidfile in "$dir"/node-*.pid; do
        [[ -f "$pidfile" ]] || continue
        local node=${pidfile##*/node-}
        node=${node%.pid}
        if kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "node $node: up"; else echo "node $node: down"; fi
    done
}

case "$cmd" in
    start) start "$@" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start N [--set key=value ...] | stop | status" >&2; exit 2 ;;
esac
