#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image the CRI tests give containerd as its
# `sandbox_image`, offline and reproducibly, as an OCI image archive that
# `ctr -n k8s.io images import` names (io.containerd.image.name).
#
#   scripts/pause-image.sh [--out DIR]
#
# The image is FROM scratch with one file, /pause: a static musl program that does
# what the kubelet's pause does: it waits for a signal, reaps children (it is pid 1
# of the pod's pid namespace) and exits 0 on SIGTERM or SIGINT, so StopPodSandbox
# does not wait for containerd's kill timeout. Its source is below, in this script.
# The OCI layout is written by hand as scripts/image.sh writes it (sorted tar,
# fixed mtime and owners, `gzip -n`, JSON printed with fixed key order), for the
# same reasons; see there.
#
# An archive already built by this very script and toolchain is reused (tests ask
# for it once per containerd). The last line on stdout is:
#   image: <reference> <archive path> <manifest digest>
# Invocations are serialised by a flock on the out dir.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=scripts/lib/oci.sh
source "$ROOT/scripts/lib/oci.sh"
OUT=""
REFERENCE="localhost/overlayd-pause:1"
MUSL_TARGET=x86_64-unknown-linux-musl
# Fixed: the image holds no source revision, so its bytes depend on the program only.
EPOCH=0

usage() {
  echo "usage: $0 [--out DIR]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

die() {
  echo "pause-image.sh: $*" >&2
  exit 1
}
command -v rustc >/dev/null 2>&1 || die "rustc is missing: install a Rust toolchain (rustup)"
[ -d "$(rustc --print sysroot)/lib/rustlib/$MUSL_TARGET" ] ||
  die "the Rust target $MUSL_TARGET is missing: run 'rustup target add $MUSL_TARGET'"
for tool in tar gzip sha256sum flock stat file; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install tar gzip coreutils util-linux file)"
done

OUT="${OUT:-$ROOT/target/pause-image}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd -P)"
exec 9>"$OUT/.lock"
flock 9

ARCHIVE="$OUT/pause.oci.tar"
STAMP="$ARCHIVE.built"
KEY="script=$(cat "$ROOT/scripts/pause-image.sh" "$ROOT/scripts/lib/oci.sh" | sha256sum | cut -d' ' -f1) rustc=$(rustc --version | tr ' ' _)"
if [ -f "$ARCHIVE" ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$KEY" ]; then
  tail -n 1 "$STAMP"
  exit 0
fi
rm -f "$STAMP"

WORK="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- The program ---------------------------------------------------------------------
cat >"$WORK/pause.rs" <<'EOF'
//! The pod sandbox's only process: holds the pod's namespaces until it is told to go.
use std::ffi::c_int;

extern "C" {
    fn signal(sig: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
}

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" fn stop(_: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

extern "C" fn reap(_: c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { waitpid(-1, std::ptr::null_mut(), WNOHANG) } > 0 {}
}

fn main() {
    // SAFETY: installs handlers that call only async-signal-safe functions.
    unsafe {
        signal(SIGINT, stop);
        signal(SIGTERM, stop);
        signal(SIGCHLD, reap);
    }
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { pause() };
    }
}
EOF
ROOTFS="$WORK/rootfs"
mkdir -p "$ROOTFS"
rustc --edition 2021 --target "$MUSL_TARGET" -C opt-level=s -C panic=abort -C strip=symbols \
  -C debuginfo=0 --remap-path-prefix="$WORK=/pause" -o "$ROOTFS/pause" "$WORK/pause.rs" >&2 ||
  die "rustc of the pause program failed"
file -b "$ROOTFS/pause" | grep -Eq 'statically linked|static-pie linked' ||
  die "the pause program is not static: $(file -b "$ROOTFS/pause")"
chmod 0755 "$ROOTFS/pause"

# --- OCI layout (scripts/lib/oci.sh, as scripts/image.sh) ---------------------------
oci_pack "$ROOTFS" "$WORK" "$EPOCH" "$REFERENCE" '{"Entrypoint":["/pause"],"WorkingDir":"/"}' \
  "scripts/pause-image.sh" "" "$ARCHIVE" || die "tar of the image failed"
MANIFEST_DIGEST="$OCI_MANIFEST_DIGEST"

LINE="image: $REFERENCE $ARCHIVE sha256:$MANIFEST_DIGEST"
printf '%s\n%s\n' "$KEY" "$LINE" >"$STAMP"
echo "$LINE"
