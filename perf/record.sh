#!/usr/bin/env bash
# perf/record.sh CMD [ARGS...] — run CMD under `perf record` with call graphs.
# Output: perf/out/perf.data (override with PERF_DATA). Frequency: PERF_FREQ (default 999 Hz).
source "$(dirname "$0")/common.sh"
need_perf
[ $# -gt 0 ] || { echo "usage: perf/record.sh CMD [ARGS...]" >&2; exit 2; }
data="${PERF_DATA:-$PERF_OUT/perf.data}"
event="$(sample_event)"
echo "perf record: event $event, call graphs via DWARF, output $data" >&2
exec perf record -e "$event" -F "${PERF_FREQ:-999}" --call-graph dwarf,32768 -o "$data" -- "$@"
