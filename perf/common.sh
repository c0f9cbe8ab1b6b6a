# Shared by the perf scripts: where output goes, and which sampling event works here.
set -euo pipefail
PERF_OUT="${PERF_OUT:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/out}"
mkdir -p "$PERF_OUT"

need_perf() {
  if ! command -v perf >/dev/null 2>&1; then
    echo "perf is missing: apt-get install linux-perf" >&2
    exit 1
  fi
}

# Hardware cycles where the CPU exposes them, else the cpu-clock software
# event (most VMs, including the machines spate is developed on).
sample_event() {
  if perf stat -e cycles true 2>&1 | grep -q "not supported"; then echo cpu-clock; else echo cycles; fi
}
