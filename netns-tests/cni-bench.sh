#!/usr/bin/env bash
# Benchmark (run on demand, not pass/fail): median ADD and DEL latency of overlayd-cni
# over N pods, next to the reference bridge + host-local measured in the same run, the
# median VERSION exec time, and the binary's size (file, stripped, mapped segments).
# Everything happens in namespaces this script creates and deletes on exit (trap).
# Needs root, iproute2, python3, containernetworking-plugins, binutils (strip, size).
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
ours_masq = json.dumps({"cniVersion": "1.0.0", "name": "ovlmasq", "type": "overlayd-cni", "ipMasq": True,
                        "runDir": f"{tmp}/run", "dataDir": f"{tmp}/data"}).encode()
theirs = json.dumps({"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                     "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.244.20.0/24",
                                                 "dataDir": f"{tmp}/hl"}}).encode()

def spawn_ms(argv, env=None, conf=b""):
    t = time.perf_counter()
    p = subprocess.run(argv, input=conf, env=env, capture_output=True)
    return (time.perf_counter() - t) * 1000, p

# Each measurement is paired with an exec of /bin/true just before it (same driver, same
# moment), so "net" figures subtract the spawn cost even while the machine is busy.
lat = {k: [] for k in ("ours-add", "ours-del", "masq-add", "masq-del", "ref-add", "ref-del", "version")}
net = {k: [] for k in lat}
true_ms = []

def run(key, path, cmd, cid, netns, ifname, conf):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": f"{os.path.dirname(bin_)}:{ref}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    base, _ = spawn_ms(["/bin/true"])
    dt, p = spawn_ms([path], env, conf)
    if p.returncode != 0:
        sys.exit(f"{path} {cmd} {cid} failed: {p.stdout!r} {p.stderr!r}")
    lat[key].append(dt)
    net[key].append(dt - base)
    true_ms.append(base)

for i in range(1, n + 1):
    ns = f"/var/run/netns/{tag}-p{i}"
    run("ours-add", bin_, "ADD", f"b{i}", ns, "eth0", ours)
    run("ref-add", f"{ref}/bridge", "ADD", f"b{i}", ns, "eth1", theirs)
for i in range(1, n + 1):
    ns = f"/var/run/netns/{tag}-p{i}"
    run("ours-del", bin_, "DEL", f"b{i}", ns, "eth0", ours)
    run("ref-del", f"{ref}/bridge", "DEL", f"b{i}", ns, "eth1", theirs)
# ipMasq on (the rule is installed by the first ADD and found by the others).
for i in range(1, n + 1):
    run("masq-add", bin_, "ADD", f"m{i}", f"/var/run/netns/{tag}-p{i}", "eth0", ours_masq)
for i in range(1, n + 1):
    run("masq-del", bin_, "DEL", f"m{i}", f"/var/run/netns/{tag}-p{i}", "eth0", ours_masq)
for _ in range(n):
    run("version", bin_, "VERSION", "", "", "", b'{"cniVersion":"1.0.0"}')

med = {k: statistics.median(v) for k, v in lat.items()}
nmed = {k: statistics.median(v) for k, v in net.items()}
with open("/proc/loadavg") as f:
    load = f.read().split()[0]
print(f"pods: {n}, load average {load}   (median ms per exec; driver: python in the node netns)")
print(f"                      raw ADD  raw DEL   net ADD  net DEL")
print(f"  overlayd-cni        {med['ours-add']:7.2f}  {med['ours-del']:7.2f}   {nmed['ours-add']:7.2f}  {nmed['ours-del']:7.2f}")
print(f"  ... with ipMasq     {med['masq-add']:7.2f}  {med['masq-del']:7.2f}   {nmed['masq-add']:7.2f}  {nmed['masq-del']:7.2f}")
print(f"  bridge+host-local   {med['ref-add']:7.2f}  {med['ref-del']:7.2f}   {nmed['ref-add']:7.2f}  {nmed['ref-del']:7.2f}")
print(f"  speed-up (raw)      {med['ref-add']/med['ours-add']:6.1f}x  {med['ref-del']/med['ours-del']:6.1f}x")
print(f"  VERSION exec        raw {med['version']:.2f}   net {nmed['version']:.2f}   (/bin/true exec {statistics.median(true_ms):.2f})")
PY
# Size: the file as built, stripped of symbols and debug info, and what exec maps
# (text + data + bss). Debug sections are on disk only; exec does not load them.
STRIPPED=$(mktemp /tmp/cni-bench-bin.XXXXXX)
strip -o "$STRIPPED" "$BIN"
read -r TEXT DATA BSS _ < <(size "$BIN" | tail -1)
echo "  binary $BIN: file $(stat -c %s "$BIN") B, stripped $(stat -c %s "$STRIPPED") B, text $TEXT B, data+bss $((DATA + BSS)) B"
rm -f "$STRIPPED"
