#!/usr/bin/env bash
# A three-node overlayd cluster in network namespaces on this machine: builds
# overlayd, starts one daemon per node on a shared underlay switch (198.18.0.0/24),
# attaches two pods to each node (10.244.N.0/24), pings every pod from every pod,
# prints `overlayd status` of node 1 and an iperf3 figure, and tears everything down
# on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
require_root
install_deps

TAG="ovdemo$$"
NODES=3
WORK=$(mktemp -d /tmp/overlayd-demo.XXXXXX)
PIDS=()

cleanup() {
  echo "==> tearing down"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^${TAG}" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> building overlayd (release)"
cargo build --release --quiet --bin overlayd
BIN="$PWD/target/release/overlayd"

echo "==> underlay: a switch namespace and ${NODES} node namespaces"
ip netns add "${TAG}sw"
ip -n "${TAG}sw" link add br0 type bridge
ip -n "${TAG}sw" link set br0 up
for i in $(seq 1 $NODES); do
  ns="${TAG}n$i"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add eth0 netns "$ns" type veth peer name "p$i" netns "${TAG}sw"
  ip -n "${TAG}sw" link set "p$i" master br0 up
  ip -n "$ns" addr add "198.18.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
done

mac() { printf '02:00:00:00:%02x:01' "$1"; }
echo "==> starting overlayd on each node"
for i in $(seq 1 $NODES); do
  args=(--node-name "node$i" --subnet "10.244.$i.0/24" --advertise-addr "198.18.0.$i"
        --vtep-mac "$(mac "$i")" --state-dir "$WORK/state$i" --run-dir "$WORK/run$i")
  for j in $(seq 1 $NODES); do
    [ "$i" = "$j" ] || args+=(--static-peer "10.244.$j.0/24,198.18.0.$j,$(mac "$j")")
  done
  ip netns exec "${TAG}n$i" "$BIN" "${args[@]}" >"$WORK/node$i.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 $NODES); do
  for _ in $(seq 50); do "$BIN" status --run-dir "$WORK/run$i" >/dev/null 2>&1 && break; sleep 0.1; done
  "$BIN" status --run-dir "$WORK/run$i" >/dev/null || { cat "$WORK/node$i.log"; exit 1; }
  echo "    node$i up: subnet 10.244.$i.0/24, underlay 198.18.0.$i"
done

echo "==> attaching two pods to each node"
PODS=()
for i in $(seq 1 $NODES); do
  for k in 2 3; do
    pod="${TAG}p$i$k"
    ip netns add "$pod"
    ip -n "$pod" link set lo up
    ip link add "veth$k" netns "${TAG}n$i" type veth peer name eth0 netns "$pod"
    ip -n "${TAG}n$i" link set "veth$k" mtu 1450 master ovl0 up
    ip -n "$pod" link set eth0 mtu 1450 up
    ip -n "$pod" addr add "10.244.$i.$k/24" dev eth0
    ip -n "$pod" route add default via "10.244.$i.1"
    PODS+=("$pod:10.244.$i.$k")
    echo "    pod 10.244.$i.$k on node$i"
  done
done

echo "==> ping matrix (rows: from, columns: to)"
printf '%-14s' ""
for dst in "${PODS[@]}"; do printf '%-13s' "${dst#*:}"; done; echo
fail=0
for src in "${PODS[@]}"; do
  printf '%-14s' "${src#*:}"
  for dst in "${PODS[@]}"; do
    if [ "$src" = "$dst" ]; then printf '%-13s' "-"; continue; fi
    if ip netns exec "${src%%:*}" ping -c 1 -W 1 -q "${dst#*:}" >/dev/null 2>&1; then
      printf '%-13s' "ok"
    else
      printf '%-13s' "FAIL"; fail=1
    fi
  done
  echo
done

echo "==> overlayd status (node1)"
"$BIN" status --run-dir "$WORK/run1"

echo "==> iperf3, pod 10.244.1.2 -> pod 10.244.2.2, 1 TCP stream, 5 s"
ip netns exec "${TAG}p22" iperf3 -s -1 -B 10.244.2.2 >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do ip netns exec "${TAG}p22" ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.1; done
ip netns exec "${TAG}p12" iperf3 -c 10.244.2.2 -t 5 -f g | grep -E "sender|receiver"

if [ "$fail" = 1 ]; then echo "==> some pods could not reach each other"; exit 1; fi
echo "==> every pod reached every pod"
