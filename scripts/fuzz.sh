#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for SECONDS (default 60),
# one after the other, and prints per target the executions and findings
# (crash, oom, timeout inputs, in hex). Exits 1 if anything was found.
#
#   scripts/fuzz.sh [SECONDS]            all targets
#   FUZZ_TARGETS="batch_validate" ...    a chosen subset
#   FUZZ_SANITIZER=address ...           with ASan (default: none, ~2x faster;
#                                        the fuzzed code is safe Rust)
#
# Needs the nightly toolchain and cargo-fuzz (installed if missing). The
# corpus grows in fuzz/corpus/<target>, findings land in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
sanitizer=${FUZZ_SANITIZER:-none}
read -r -a targets <<<"${FUZZ_TARGETS:-request_decode batch_validate}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
cargo +nightly fuzz build -O -s "$sanitizer"

found=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  before=$(find "artifacts/$target" -type f | sort)
  log="artifacts/$target.log"
  printf '==> %s for %ss\n' "$target" "$seconds"
  # -timeout: one input taking over 10 s is a finding (a hang);
  # -rss_limit_mb: a decoder that trusts a length for allocation is one too.
  status=0
  cargo +nightly fuzz run -O -s "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  printf '    executions: %s (%s/s), corpus: %s inputs, exit status: %s\n' "${execs:-?}" "${rate:-?}" "$corpus" "$status"
  new=$(comm -13 <(echo "$before") <(find "artifacts/$target" -type f | sort) | sed '/^$/d')
  if [ -n "$new" ] || [ "$status" != 0 ]; then
    found=1
    printf '    FINDINGS (log: fuzz/%s):\n' "$log"
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5 | sed 's/^/      /'
    for f in $new; do
      printf '      %s: %s\n' "$f" "$(xxd -p "$f" | tr -d '\n' | head -c 2000)"
    done
  else
    echo "    findings: none"
  fi
done
exit "$found"
