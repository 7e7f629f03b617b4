#!/usr/bin/env bash
# Everything needed to pass the tests, from a fresh machine: system packages, then
# formatting, lints, unit tests, and the root-only network-namespace tests.
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
echo "==> cargo test (release, netns tests included)"
cargo test --workspace --release --all-features
left=$(ip netns list | grep -E '^ov[a-z]*[0-9]+x[0-9]+' || true)
if [ -n "$left" ]; then
  echo "test namespaces were left behind: $left" >&2
  exit 1
fi
