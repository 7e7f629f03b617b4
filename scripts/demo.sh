#!/usr/bin/env bash
# A three-node overlayd cluster in network namespaces on this machine: builds
# overlayd and its CNI plugin, starts one daemon per node on a shared underlay switch
# (198.18.0.0/24) with gossip (every node is given the other nodes as seeds, in its own
# order, and they found the cluster by agreement),
# lets each node lease its pod subnet, attaches two pods per node with the real
# overlayd-cni plugin, pings every pod from every pod, prints `overlayd status` of
# node1 and an iperf3 figure, and tears everything down on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
require_root
install_deps

TAG="ovdemo$$"
NODES=3
WORK=$(mktemp -d /tmp/overlayd-demo.XXXXXX)
PIDS=()
PODS=()

step() { printf '\n==> %s\n' "$*"; }

cni() { # cni NODE COMMAND POD: runs the plugin as a runtime on NODE would
  local node=$1 cmd=$2 pod=$3
  local conf="{\"cniVersion\":\"1.0.0\",\"name\":\"overlayd\",\"type\":\"overlayd-cni\",\"runDir\":\"$WORK/run$node\",\"dataDir\":\"$WORK/ipam$node\",\"logFile\":\"$WORK/cni$node.log\"}"
  echo "$conf" | ip netns exec "${TAG}n$node" env CNI_COMMAND="$cmd" CNI_CONTAINERID="$pod" \
    CNI_NETNS="/var/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$CNI"
}

cleanup() {
  step "tearing down"
  for entry in "${PODS[@]}"; do
    IFS=: read -r node pod _ <<<"$entry"
    cni "$node" DEL "$pod" >/dev/null 2>&1 || true
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^${TAG}" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  rm -rf "$WORK"
  echo "    done: no namespace, process or file of the demo is left"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "building overlayd and overlayd-cni (release)"
cargo build --release --quiet -p overlayd --bin overlayd && cargo build --release --quiet -p overlayd-cni
BIN="$PWD/target/release/overlayd"
CNI="$PWD/target/release/overlayd-cni"

step "underlay: a switch namespace and ${NODES} node namespaces (198.18.0.1-${NODES})"
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

step "making a cluster key (overlayd genkey) that signs all gossip"
(umask 077 && "$BIN" genkey >"$WORK/secret")

step "starting overlayd on each node (each is given the other nodes as seeds, in its own order; no node is special)"
# One cluster, both dataplanes: node2 runs the userspace dataplane (TUN), the
# others the default --dataplane auto, which picks the kernel's vxlan device here.
DATAPLANES=(auto userspace auto auto auto auto auto auto auto)
for i in $(seq 1 $NODES); do
  seeds=""
  for k in $(seq 1 $((NODES - 1))); do
    seeds="$seeds${seeds:+,}198.18.0.$(( (i + k - 1) % NODES + 1 ))"
  done
  peers=(--peers "$seeds")
  dataplane=${DATAPLANES[$((i - 1))]}
  echo "    node$i --peers $seeds --dataplane $dataplane"
  ip netns exec "${TAG}n$i" "$BIN" --node-name "node$i" --advertise-addr "198.18.0.$i" \
    "${peers[@]}" --secret-file "$WORK/secret" --dataplane "$dataplane" \
    --state-dir "$WORK/state$i" --run-dir "$WORK/run$i" >"$WORK/node$i.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 $NODES); do
  subnet=""
  for _ in $(seq 100); do
    # node.json appears once the node holds a subnet.
    subnet=$(grep -o '"subnet": *"[^"]*"' "$WORK/run$i/node.json" 2>/dev/null | cut -d'"' -f4 || true)
    [ -n "$subnet" ] && break
    sleep 0.1
  done
  [ -n "$subnet" ] || { echo "node$i got no subnet:"; cat "$WORK/node$i.log"; exit 1; }
  echo "    node$i leased $subnet"
done

step "which dataplane each node uses (overlayd status)"
for i in $(seq 1 $NODES); do
  echo "    node$i: $("$BIN" status --run-dir "$WORK/run$i" | grep -m1 '^  dataplane' | sed 's/^ *dataplane *//')"
done

step "attaching two pods to each node with the overlayd-cni plugin"
for i in $(seq 1 $NODES); do
  for k in a b; do
    pod="${TAG}p$i$k"
    ip netns add "$pod"
    result=$(cni "$i" ADD "$pod")
    ip=$(echo "$result" | grep -o '"address": *"[^"]*"' | head -1 | cut -d'"' -f4 | cut -d/ -f1)
    [ -n "$ip" ] || { echo "ADD failed: $result"; exit 1; }
    PODS+=("$i:$pod:$ip")
    echo "    $pod on node$i: $ip"
  done
done

step "ping matrix (rows: from, columns: to)"
printf '%-14s' ""
for dst in "${PODS[@]}"; do printf '%-13s' "${dst##*:}"; done; echo
fail=0
for src in "${PODS[@]}"; do
  IFS=: read -r _ spod sip <<<"$src"
  printf '%-14s' "$sip"
  for dst in "${PODS[@]}"; do
    dip=${dst##*:}
    if [ "$sip" = "$dip" ]; then printf '%-13s' "-"; continue; fi
    if ip netns exec "$spod" ping -c 1 -W 1 -q "$dip" >/dev/null 2>&1; then printf '%-13s' "ok"; else printf '%-13s' "FAIL"; fail=1; fi
  done
  echo
done

step "overlayd status (node1)"
"$BIN" status --run-dir "$WORK/run1"

IFS=: read -r _ src_pod _ <<<"${PODS[0]}"
IFS=: read -r _ dst_pod dst_ip <<<"${PODS[2]}"
step "iperf3 from a pod on node1 to a pod on node2, 1 TCP stream, 5 s"
ip netns exec "$dst_pod" iperf3 -s -1 -B "$dst_ip" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do ip netns exec "$dst_pod" ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.1; done
ip netns exec "$src_pod" iperf3 -c "$dst_ip" -t 5 -f g | grep -E "sender|receiver"

if [ "$fail" = 1 ]; then step "some pods could not reach each other"; exit 1; fi
step "every pod reached every pod"
