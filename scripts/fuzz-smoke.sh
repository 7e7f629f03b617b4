#!/usr/bin/env bash
# Smoke run of every cargo-fuzz target in fuzz/: a few seconds each, starting from its
# committed corpus. Fails on the first crash, leak or invariant violation (libFuzzer
# writes the input to fuzz/artifacts/<target>/). The long runs are in fuzz/README.md.
#
# Needs cargo-fuzz (installed here if missing) and a nightly compiler: `+nightly` when
# rustup has one, else the default toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz only
# passes -Z flags). FUZZ_SMOKE_SECONDS sets the time per target (default 5).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SMOKE_SECONDS:-5}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly fuzz)
  echo "==> fuzz smoke: nightly toolchain ($(rustc +nightly --version))"
else
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo fuzz)
  echo "==> fuzz smoke: no nightly; default toolchain with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

# Same flags for the build and every run, so nothing is rebuilt in between.
flags=(--sanitizer address)
"${cargo[@]}" build "${flags[@]}"

# New corpus entries go to a scratch directory; the committed corpus is only read.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
targets=$("${cargo[@]}" list)
for t in $targets; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  if ! "${cargo[@]}" run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    # The panic message (or sanitizer report) and where libFuzzer saved the input.
    grep -m 3 -A 4 -E 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log" >&2 || tail -n 40 "$log" >&2
    grep -E 'Test unit written to' "$log" >&2 || true
    echo "fuzz smoke: $t failed; reproduce with the artifact above (see fuzz/README.md)" >&2
    exit 1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  echo "fuzz smoke: $t ok, ${runs} runs in ${seconds} s"
done
