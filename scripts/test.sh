#!/usr/bin/env bash
# Runs every test spate has, installing what they need first when missing:
# Debian's kcat (and Node.js if absent), a Python venv (.venv) with
# confluent-kafka, kafka-python, aiokafka, pytest and prometheus-client (its
# text-format parser checks /metrics), and kafkajs from npm.
# Safe to run again; installs are skipped once present.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  log "installing ${missing[*]} (apt)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if ! .venv/bin/python -c 'import confluent_kafka, kafka, aiokafka, pytest, prometheus_client' >/dev/null 2>&1; then
  log "creating .venv with the Python Kafka clients"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/clients/requirements.txt
fi

if [ ! -d tests/clients/node/node_modules/kafkajs ]; then
  log "installing kafkajs (npm)"
  (cd tests/clients/node && npm install --no-audit --no-fund --no-package-lock --silent)
fi

log "format and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings

log "build"
cargo build --release --workspace

log "Rust unit and integration tests (real broker binary over TCP)"
# Each test keeps its broker's data directory for inspection; remove them once they pass.
rm -rf "${TMPDIR:-/tmp}"/spate-test-*
cargo test --release --workspace
rm -rf "${TMPDIR:-/tmp}"/spate-test-*

log "real-client tests: kcat, confluent-kafka, kafka-python, aiokafka, kafkajs"
SPATE_BIN="$PWD/target/release/spate" .venv/bin/pytest -q -p no:warnings -p no:cacheprovider tests/clients
