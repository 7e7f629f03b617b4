#!/usr/bin/env bash
# Everything needed to pass the tests, from a fresh machine: system packages, then
# formatting, lints, a fuzz smoke run, unit tests, and the root-only network-namespace tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
require_root
install_deps
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "==> fuzz smoke run (scripts/fuzz-smoke.sh)"
./scripts/fuzz-smoke.sh
echo "==> cargo test (release, netns tests included)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --all-features -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '; ([0-9]+) failed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
grep -E 'ratio|Gb/s' "$log" | grep -v '^test ' || true
left=$(ip netns list | grep -E '^ov[a-z]*[0-9]+x[0-9]+' || true)
if [ -n "$left" ]; then
  echo "test namespaces were left behind: $left" >&2
  exit 1
fi
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
