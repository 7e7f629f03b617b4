#!/usr/bin/env bash
# Benchmark (run on demand, not pass/fail): median ADD and DEL latency of overlayd-cni
# over N pods, next to the reference bridge + host-local measured in the same run, and
# the median VERSION exec time. Everything happens in namespaces this script creates and
# deletes on exit (trap). Needs root, iproute2, python3, containernetworking-plugins.
#
#   sudo netns-tests/cni-bench.sh            # builds the release binary first
#   sudo BIN=/path/to/overlayd-cni N=50 netns-tests/cni-bench.sh
set -euo pipefail

N=${N:-50}
REF=${REF:-/usr/lib/cni}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${BIN:-}" ]]; then
  cargo build --release -q -p overlayd-cni --manifest-path "$ROOT/Cargo.toml"
  BIN="$ROOT/target/release/overlayd-cni"
fi

TAG="cnib$$"
NODE="$TAG-node"
TMP=$(mktemp -d /tmp/cni-bench.XXXXXX)
cleanup() {
  for i in $(seq 1 "$N"); do ip netns del "$TAG-p$i" 2>/dev/null || true; done
  ip netns del "$NODE" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

ip netns add "$NODE"
ip -n "$NODE" link set lo up
ip -n "$NODE" link add ovl0 type bridge
ip -n "$NODE" addr add 10.244.1.1/24 dev ovl0
ip -n "$NODE" link set ovl0 up
mkdir -p "$TMP/run" "$TMP/data" "$TMP/hl"
echo '{"node_name":"bench","subnet":"10.244.1.0/24","gateway":"10.244.1.1","bridge":"ovl0","mtu":1450,"cluster_cidr":"10.244.0.0/16"}' >"$TMP/run/node.json"
for i in $(seq 1 "$N"); do ip netns add "$TAG-p$i"; done

# The driver runs inside the node namespace and times each plugin exec itself, so the
# `ip netns exec` set-up cost is paid once, not per measurement.
ip netns exec "$NODE" python3 - "$BIN" "$REF" "$TMP" "$TAG" "$N" <<'PY'
import json, os, statistics, subprocess, sys, time
bin_, ref, tmp, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ours = json.dumps({"cniVersion": "1.0.0", "name": "ovl", "type": "overlayd-cni",
                   "runDir": f"{tmp}/run", "dataDir": f"{tmp}/data"}).encode()
theirs = json.dumps({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                     "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.244.20.0/24",
                                                 "dataDir": f"{tmp}/hl"}}).encode()

def run(path, cmd, cid, netns, ifname, conf):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": f"{os.path.dirname(bin_)}:{ref}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    t = time.perf_counter()
    p = subprocess.run([path], input=conf, env=env, capture_output=True)
    dt = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"{path} {cmd} {cid} failed: {p.stdout!r} {p.stderr!r}")
    return dt

lat = {k: [] for k in ("ours-add", "ours-del", "ref-add", "ref-del", "version")}
for i in range(1, n + 1):
    ns = f"/var/run/netns/{tag}-p{i}"
    lat["ours-add"].append(run(bin_, "ADD", f"b{i}", ns, "eth0", ours))
    lat["ref-add"].append(run(f"{ref}/bridge", "ADD", f"b{i}", ns, "eth1", theirs))
for i in range(1, n + 1):
    ns = f"/var/run/netns/{tag}-p{i}"
    lat["ours-del"].append(run(bin_, "DEL", f"b{i}", ns, "eth0", ours))
    lat["ref-del"].append(run(f"{ref}/bridge", "DEL", f"b{i}", ns, "eth1", theirs))
for _ in range(n):
    lat["version"].append(run(bin_, "VERSION", "", "", "", b'{"cniVersion":"1.0.0"}'))
# A baseline measured the same way: exec of /bin/true, i.e. the driver's own spawn cost.
true_ms = []
for _ in range(n):
    t = time.perf_counter()
    subprocess.run(["/bin/true"], input=b"", capture_output=True)
    true_ms.append((time.perf_counter() - t) * 1000)

med = {k: statistics.median(v) for k, v in lat.items()}
print(f"pods: {n}   (median milliseconds per exec, driver: python subprocess in the node netns)")
print(f"  overlayd-cni        ADD {med['ours-add']:6.2f}   DEL {med['ours-del']:6.2f}")
print(f"  bridge+host-local   ADD {med['ref-add']:6.2f}   DEL {med['ref-del']:6.2f}")
print(f"  speed-up            ADD {med['ref-add']/med['ours-add']:5.1f}x   DEL {med['ref-del']/med['ours-del']:5.1f}x")
base = statistics.median(true_ms)
print(f"  overlayd-cni VERSION exec {med['version']:.2f}   (/bin/true exec {base:.2f}, the spawn cost in every figure)")
print(f"  minus spawn cost:   ours ADD {med['ours-add']-base:.2f}  ref ADD {med['ref-add']-base:.2f}  VERSION {med['version']-base:.2f}")
PY
