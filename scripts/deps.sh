#!/usr/bin/env bash
# Installs the system packages overlayd's demo and tests use (Debian/Ubuntu, as root).
# Sourced by scripts/test.sh and scripts/demo.sh; installs only what is missing.
set -euo pipefail

OVERLAYD_APT_PACKAGES=(
  iproute2            # ip, bridge, ss: namespaces, veths, kernel vxlan reference
  iputils-ping        # ping across nodes
  iperf3              # throughput beside kernel vxlan
  procps              # sysctl
  kmod                # modprobe for the kernel vxlan reference and sch_netem
  systemd             # systemd-analyze verify of config/overlayd.service
  iptables nftables   # the CNI plugin's ipMasq rule
  containernetworking-plugins  # reference loopback/portmap/bandwidth/tuning/host-local/static
  podman runc busybox-static   # the real-runtime CNI test
  util-linux          # nsenter
  g++                 # libFuzzer's C++ sources, for scripts/fuzz-smoke.sh
  wireguard-go wireguard-tools  # a plain WireGuard peer for the encrypted dataplane's interop test
  containerd file     # scripts/image-check.sh: ctr images import; image.sh: is overlayd-cni static
  musl-tools          # the musl linker wrapper, should overlayd-cni ever link C code
  protobuf-compiler   # protoc: k8s-cri's build script (the CRI tests' client, netns_cri)
)

install_deps() {
  local missing=()
  for pkg in "${OVERLAYD_APT_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
    exit 1
  fi
  # overlayd-cni is linked statically against musl (scripts/image.sh).
  if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx x86_64-unknown-linux-musl ||
      rustup target add x86_64-unknown-linux-musl
  fi
  # The vxlan module backs the kernel reference; a built-in or missing module is fine.
  modprobe vxlan 2>/dev/null || true
  # netem gives the loss soak its packet loss; without it the test uses an nftables rule.
  modprobe sch_netem 2>/dev/null || true
}

require_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0 needs root: it creates network namespaces (run it with sudo)" >&2
    exit 1
  fi
}
