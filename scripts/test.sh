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
echo "==> the image (scripts/image-check.sh): built twice to the same digest, loaded by podman and containerd"
# A script step, not a cargo test: it builds the image the netns_kubernetes tests run.
set +e
./scripts/image-check.sh
image_status=$?
set -e
echo "==> cargo test (release, netns tests included)"
# --no-fail-fast: a failing test binary never stops the ones after it, so the summary
# below counts every test of every binary.
# Heavy tests (floods, the loss soak, iperf3 runs, 100 concurrent CNI ADDs) never run
# beside timing-sensitive checks: each takes overlayd_test_support::load::heavy(), an
# exclusive flock on $TMPDIR/overlayd-tests.load.lock, while every other root-only test
# holds the same lock shared (load::shared()). So a heavy test waits until it runs
# alone, one at a time, whatever --test-threads is and whichever binaries run at once.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --all-features --no-fail-fast -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
sum() { grep -E '^test result: ' "$log" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
binaries=$(grep -cE '^test result: ' "$log" || true)
grep -E 'ratio|Gb/s' "$log" | grep -v '^test ' || true
left=$(ip netns list | grep -E '^ov[a-z]*[0-9]+x[0-9]+' || true)
if [ -n "$left" ]; then
  echo "test namespaces were left behind: $left" >&2
  status=1
fi
# A binary that crashed prints no "test result" line: cargo's exit status still says so.
echo "${binaries} test binaries; cargo exit status ${status}"
if [ "$failed" -gt 0 ] && [ "$status" -eq 0 ]; then
  status=1
fi
# The closing line alone, in the plain form CI reads ('N passed, N failed, N skipped').
if [ "$image_status" -eq 0 ]; then
  passed=$((passed + 1))
else
  echo "scripts/image-check.sh failed (exit status ${image_status})" >&2
  failed=$((failed + 1))
  status=1
fi
echo "tests: ${passed} passed, ${failed} failed, ${ignored} skipped"
exit "$status"
