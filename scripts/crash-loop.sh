#!/usr/bin/env bash
# Crash loop (issue 6): N rounds (default 100) of `kill -9` of the broker under
# acks=all confluent-kafka producer processes, on topics with 64 KiB segments,
# with DeleteRecords, topic churn and SIGKILLed producers; after every restart
# each acknowledged record is verified at its offset (tests/clients/crash_loop.py).
# Exits non-zero at the first violation, leaving the data in /tmp/crashloop-failure-<round>.
#
#   scripts/crash-loop.sh [N] [crash_loop.py options, e.g. --seconds 3 --seed 42 --workdir DIR --port-retry]
# (--port-retry: restart on a new port when spate's port check refuses the
# killed broker's port, instead of stopping there; see crash_loop.py.)
#   SPATE_BIN=/path/to/spate scripts/crash-loop.sh 100   # use this binary, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-100}"
shift || true

if [ -z "${SPATE_BIN:-}" ]; then
  cargo build --release
  SPATE_BIN="$PWD/target/release/spate"
fi

if ! .venv/bin/python -c 'import confluent_kafka, kafka, pytest' >/dev/null 2>&1; then
  echo "==> creating .venv with the Python Kafka clients"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r tests/clients/requirements.txt
fi

exec .venv/bin/python tests/clients/crash_loop.py --rounds "$rounds" --spate-bin "$SPATE_BIN" "$@"
