#!/usr/bin/env bash
# perf/stat.sh CMD [ARGS...] — counters for CMD: task clock, context switches,
# migrations, page faults, and cycles/instructions where the CPU exposes them.
source "$(dirname "$0")/common.sh"
need_perf
[ $# -gt 0 ] || { echo "usage: perf/stat.sh CMD [ARGS...]" >&2; exit 2; }
events="task-clock,context-switches,cpu-migrations,page-faults"
if [ "$(sample_event)" = cycles ]; then events="$events,cycles,instructions,branch-misses,cache-misses"; fi
exec perf stat -e "$events" -- "$@"
