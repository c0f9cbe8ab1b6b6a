#!/usr/bin/env bash
# perf/flamegraph.sh [PERF_DATA] [OUT.svg] — fold perf samples with the inferno
# tools and draw a flame graph (default perf/out/perf.data -> perf/out/flamegraph.svg).
# Also prints the hottest functions (self time) as text.
source "$(dirname "$0")/common.sh"
need_perf
data="${1:-$PERF_OUT/perf.data}"
svg="${2:-$PERF_OUT/flamegraph.svg}"
if ! command -v inferno-collapse-perf >/dev/null 2>&1; then
  echo "installing inferno (cargo install inferno)" >&2
  cargo install inferno --locked >&2
fi
folded="$PERF_OUT/stacks.folded"
perf script -i "$data" 2>/dev/null | inferno-collapse-perf > "$folded"
inferno-flamegraph --title "spate: $(basename "$data")" < "$folded" > "$svg"
echo "flame graph: $svg" >&2
echo "hottest functions (share of samples, self):"
perf report -i "$data" --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
