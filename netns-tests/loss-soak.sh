#!/usr/bin/env bash
# Loss soak, on demand: N overlayd nodes (3-5) in network namespaces with packet loss on
# every node's underlay egress (tc netem, or an nftables rule where the kernel has no
# netem), sampled every second for DURATION seconds. Fails if any node is ever declared
# dead. CI runs the same test for 60 s.
#
#   sudo netns-tests/loss-soak.sh [DURATION_SECS=300] [NODES=5] [LOSS_PERCENT=10]
#
# Set OVERLAYD_FAULT_SEED to replay a run (the seed is printed). Everything runs inside
# namespaces the test creates and deletes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
require_root
install_deps
export OVERLAYD_SOAK_SECS="${1:-300}"
export OVERLAYD_SOAK_NODES="${2:-5}"
export OVERLAYD_SOAK_LOSS="${3:-10}"
echo "==> ${OVERLAYD_SOAK_NODES} nodes, ${OVERLAYD_SOAK_LOSS} % loss, ${OVERLAYD_SOAK_SECS} s"
exec cargo test --release --features netns-tests --test netns_faults -- \
  --exact d_loss_soak_no_false_deaths --nocapture
