#!/usr/bin/env bash
# Builds the overlayd container image, offline and reproducibly, as an OCI image
# archive (an OCI layout in a tar) that `podman load -i` and
# `ctr -n k8s.io images import` both accept and name.
#
#   scripts/image.sh [--variant current|next|skew] [--out DIR]
#
# The image is FROM scratch: overlayd (glibc, dynamically linked, with its ldd
# closure copied from this host's Debian files), overlayd-cni (static, musl) and
# Debian's nft with its ldd closure. Nothing is pulled from a registry.
# overlayd stays on glibc, dynamically linked: musl's malloc slows the userspace
# packet path, and a static glibc still dlopens NSS modules for name lookups; nft
# needs glibc and its libraries anyway, so the closure is shared. overlayd-cni is
# static because it is copied onto the host and exec'd there, whatever its libc.
#
# Why the OCI layout is written by hand (tar, gzip, sha256sum, printf) rather than
# with `buildah`/`podman build --timestamp`: every byte is then under this script's
# control and visible in it. buildah (1.28 in Debian 12) needs a container storage,
# mounts and a runtime to build FROM scratch, and the bytes it writes depend on its
# version and its storage driver; a hand-written layout needs only coreutils, GNU
# tar and gzip, and the same inputs give the same bytes.
#
# Reproducibility:
#   - SOURCE_DATE_EPOCH defaults to the commit time of HEAD; it is the image's
#     `created`, and the mtime of every file in the layer.
#   - binaries are built in their own target dir (target/image-build, never
#     target/release, whose binaries carry test-only features) with debug info
#     off, symbols stripped and the checkout dir and cargo home remapped, so that a
#     build from another clone at another path gives the same bytes;
#   - the layer tar has sorted names, uid/gid 0, numeric owners, fixed modes and
#     no atime/ctime; it is compressed with `gzip -n` (no name, no timestamp);
#   - config, manifest and index JSON are printed with fixed key order and no
#     whitespace.
# Inputs that still change the bytes: the Rust toolchain, Cargo.lock, the source
# tree, and the Debian packages the libraries and nft are copied from.
#
# The last line on stdout is:
#   image: <reference> <archive path> <manifest digest> <uncompressed rootfs MB>
# Invocations are serialised by a flock on target/image/.lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=scripts/lib/oci.sh
source "$ROOT/scripts/lib/oci.sh"
VARIANT=current
OUT=""

usage() {
  echo "usage: $0 [--variant current|next|skew] [--out DIR]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --variant) [ $# -ge 2 ] || usage; VARIANT="$2"; shift 2 ;;
    --variant=*) VARIANT="${1#*=}"; shift ;;
    --out) [ $# -ge 2 ] || usage; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

case "$VARIANT" in
  # Test images of other gossip protocol versions (src/control/message.rs): overlayd
  # built with the test-wire-version feature (one build for both), and the version
  # in the image's environment: next speaks 2 (accepted by 1), skew speaks 9 (refused
  # by 1, and refusing it).
  current) WIRE_VERSION=""; SUFFIX="" ;;
  # One past this release's gossip protocol (BUILD_VERSION in src/control/message.rs).
  next)
    BUILD_VERSION=$(sed -n 's/^pub(crate) const BUILD_VERSION: u8 = \([0-9]*\);$/\1/p' "$ROOT/src/control/message.rs")
    [ -n "$BUILD_VERSION" ] || { echo "no BUILD_VERSION in src/control/message.rs" >&2; exit 2; }
    WIRE_VERSION=$((BUILD_VERSION + 1)); SUFFIX="-next" ;;
  skew) WIRE_VERSION=9; SUFFIX="-skew" ;;
  *) echo "unknown variant '$VARIANT' (current, next or skew)" >&2; exit 2 ;;
esac

die() {
  echo "image.sh: $*" >&2
  exit 1
}

# --- What the build needs, named when missing ------------------------------------
GNU_TARGET=x86_64-unknown-linux-gnu
MUSL_TARGET=x86_64-unknown-linux-musl
NFT_BIN=/usr/sbin/nft

command -v cargo >/dev/null 2>&1 || die "cargo is missing: install a Rust toolchain (rustup)"
command -v rustc >/dev/null 2>&1 || die "rustc is missing: install a Rust toolchain (rustup)"
[ -d "$(rustc --print sysroot)/lib/rustlib/$MUSL_TARGET" ] ||
  die "the Rust target $MUSL_TARGET is missing (overlayd-cni is linked statically with it): run 'rustup target add $MUSL_TARGET'"
command -v cc >/dev/null 2>&1 || die "cc is missing (the linker cargo uses): apt-get install gcc"
[ -x "$NFT_BIN" ] || die "$NFT_BIN is missing (the kernel dataplane runs it): apt-get install nftables"
for tool in git tar gzip sha256sum ldd file flock stat du sort; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (apt-get install git tar gzip coreutils libc-bin file util-linux)"
done
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is needed (--sort=name, --pax-option)"

OUT="${OUT:-$ROOT/target/image}"
mkdir -p "$OUT" "$ROOT/target/image"
OUT="$(cd "$OUT" && pwd)"

# One build at a time: the cargo target dir and the work dirs are shared.
exec 9>"$ROOT/target/image/.lock"
flock 9

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

cd "$ROOT"
GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null)" || die "not a git checkout: $ROOT (the image labels carry the commit)"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)"
fi
export SOURCE_DATE_EPOCH
CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
DIRTY=""
if ! git diff --quiet HEAD -- 2>/dev/null; then
  DIRTY="-dirty"
  echo "==> note: the work tree has uncommitted changes; they are built in (revision label $GIT_COMMIT$DIRTY)" >&2
fi

# The package version of overlayd, from the [package] table of Cargo.toml.
VERSION="$(awk '
  /^\[/ { in_pkg = ($0 == "[package]") }
  in_pkg && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)"
[ -n "$VERSION" ] || die "cannot read the package version from $ROOT/Cargo.toml"
REFERENCE="localhost/overlayd:${VERSION}${SUFFIX}"
# Not taken from `git remote`: a clone's remote is the path it was cloned from, and
# the label would then differ between clones.
SOURCE_URL="${OVERLAYD_SOURCE_URL:-https://github.com/overlayd/overlayd}"

# --- A clean tree's archive is reused ---------------------------------------------------
# The variants differ in a build variable, so cargo recompiles overlayd whenever the
# variant changes; an archive already built from this commit, clean, by this script,
# is printed again instead (tests ask for each variant, some more than once).
ARCHIVE="$OUT/overlayd-$VARIANT.oci.tar"
STAMP="$ARCHIVE.built"
KEY="commit=$GIT_COMMIT epoch=$SOURCE_DATE_EPOCH variant=$VARIANT script=$(cat "$ROOT/scripts/image.sh" "$ROOT/scripts/lib/oci.sh" | sha256sum | cut -d' ' -f1)"
if [ -z "$DIRTY" ] && [ -f "$ARCHIVE" ] && [ -f "$STAMP" ] && [ "$(head -n 1 "$STAMP")" = "$KEY" ]; then
  echo "==> $ARCHIVE: already built from $GIT_COMMIT by this script; not rebuilt" >&2
  tail -n 1 "$STAMP"
  exit 0
fi
rm -f "$STAMP"

# --- Build ---------------------------------------------------------------------------
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"
CARGO_HOME_DIR="$(cd "$CARGO_HOME_DIR" 2>/dev/null && pwd || echo "$CARGO_HOME_DIR")"
export CARGO_TARGET_DIR="$ROOT/target/image-build"
export CARGO_PROFILE_RELEASE_DEBUG=0
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_PROFILE_RELEASE_INCREMENTAL=false
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
# Applied to the target crates only (an explicit --target keeps build scripts and
# proc macros out of RUSTFLAGS); cargo leaves RUSTFLAGS out of -C metadata, so the
# differing checkout path does not change symbol hashes.
# `-C strip=symbols` here too: Cargo.toml's [profile.release.package.overlayd-cni]
# would otherwise leave overlayd-cni's symbols in (RUSTFLAGS come last and win).
export RUSTFLAGS="--remap-path-prefix=$ROOT=/overlayd --remap-path-prefix=$CARGO_HOME_DIR=/cargo -C strip=symbols"

echo "==> building overlayd-cni (static, $MUSL_TARGET) in target/image-build" >&2
cargo build --locked --release -p overlayd-cni --bin overlayd-cni --target "$MUSL_TARGET" >&2 ||
  die "cargo build of overlayd-cni for $MUSL_TARGET failed"
FEATURES=()
if [ -n "$WIRE_VERSION" ]; then
  FEATURES=(--features test-wire-version)
fi
echo "==> building overlayd ($GNU_TARGET${WIRE_VERSION:+, test-wire-version for gossip protocol $WIRE_VERSION}) in target/image-build" >&2
cargo build --locked --release -p overlayd --bin overlayd --target "$GNU_TARGET" "${FEATURES[@]}" >&2 ||
  die "cargo build of overlayd for $GNU_TARGET failed"
echo "==> built in $(elapsed)" >&2

OVERLAYD_BIN="$CARGO_TARGET_DIR/$GNU_TARGET/release/overlayd"
CNI_BIN="$CARGO_TARGET_DIR/$MUSL_TARGET/release/overlayd-cni"
[ -x "$OVERLAYD_BIN" ] || die "the build left no $OVERLAYD_BIN"
[ -x "$CNI_BIN" ] || die "the build left no $CNI_BIN"

# overlayd-cni is copied onto hosts of any libc: it must be static.
file -b "$CNI_BIN" | grep -Eq 'statically linked|static-pie linked' ||
  die "overlayd-cni is not statically linked: $(file -b "$CNI_BIN")"
for bin in "$CNI_BIN" "$OVERLAYD_BIN"; do
  file -b "$bin" | grep -q ', stripped' || die "$bin is not stripped: $(file -b "$bin")"
done
if ldd "$CNI_BIN" >/dev/null 2>&1 && ! ldd "$CNI_BIN" 2>&1 | grep -q 'statically linked'; then
  die "overlayd-cni has dynamic dependencies: $(ldd "$CNI_BIN" 2>&1 | tr '\n' ' ')"
fi

# --- Root filesystem -----------------------------------------------------------------
WORK="$(mktemp -d "$OUT/.image-$VARIANT.XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
ROOTFS="$WORK/rootfs"
umask 022
mkdir -p "$ROOTFS"/{usr/local/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,run,var/lib,tmp}
chmod 1777 "$ROOTFS/tmp"
# Debian 12's merged /usr: /lib and /lib64 are links into /usr, where the
# interpreter path /lib64/ld-linux-x86-64.so.2 resolves.
ln -s usr/lib "$ROOTFS/lib"
ln -s usr/lib64 "$ROOTFS/lib64"
ln -s usr/sbin "$ROOTFS/sbin"
ln -s usr/bin "$ROOTFS/bin"
mkdir -p "$ROOTFS/usr/bin"

install -m 0755 "$OVERLAYD_BIN" "$ROOTFS/usr/local/bin/overlayd"
install -m 0755 "$CNI_BIN" "$ROOTFS/usr/local/bin/overlayd-cni"
install -m 0755 "$NFT_BIN" "$ROOTFS/usr/sbin/nft"

# Copies the shared libraries a binary loads (its ldd closure) from this host into
# the rootfs, at the path ldd names with /lib and /lib64 folded into /usr.
copy_closure() {
  local bin="$1" path dest
  ldd "$bin" >/dev/null 2>&1 || die "ldd cannot read $bin"
  while read -r path; do
    [ -n "$path" ] || continue
    case "$path" in
      /lib/*|/lib64/*) dest="/usr$path" ;;
      *) dest="$path" ;;
    esac
    [ -e "$ROOTFS$dest" ] && continue
    mkdir -p "$(dirname "$ROOTFS$dest")"
    cp -L "$path" "$ROOTFS$dest"
    chmod 0755 "$ROOTFS$dest"
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
  if ldd "$bin" | grep -q 'not found'; then
    die "$bin has libraries ldd cannot find: $(ldd "$bin" | grep 'not found' | tr '\n' ' ')"
  fi
}
copy_closure "$OVERLAYD_BIN"
copy_closure "$NFT_BIN"

# /etc stays empty: overlayd and nft read nothing from it (nft names protocols from
# /etc/protocols only when printing rules, which the dataplane does not parse; it
# reads counters). The runtime mounts /etc/hosts and /etc/resolv.conf over it.

# The image's nft must run from the image: program a ruleset and read its counters
# as JSON (as the kernel dataplane does) in a throwaway network namespace, chrooted into the
# rootfs. Needs root; the host's own namespaces are not touched.
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1 && command -v chroot >/dev/null 2>&1; then
  # The shape of the kernel dataplane's ruleset (src/dataplane/kernel/ruleset.rs):
  # named counters, a verdict map, a concatenated counter map and a raw payload match.
  cat >"$WORK/check.nft" <<'EOF'
add table inet overlayd_image_check
delete table inet overlayd_image_check
table inet overlayd_image_check {
	counter unknown_sender {
	}
	counter rx_p1 {
	}
	counter tx_p1 {
	}
	chain peer_p1 {
	}
	chain input {
		type filter hook input priority filter - 10; policy accept;
	}
	chain output {
		type filter hook output priority filter - 10; policy accept;
	}
}
flush table inet overlayd_image_check
add rule inet overlayd_image_check input udp dport 4789 ip saddr vmap { 198.18.0.2 : jump peer_p1 }
add rule inet overlayd_image_check output counter name ip daddr . udp dport map { 198.18.0.2 . 4789 : "tx_p1" }
add rule inet overlayd_image_check input udp dport 4789 counter name unknown_sender drop
add rule inet overlayd_image_check peer_p1 @th,176,16 0x0800 counter name rx_p1 accept
EOF
  if ! nft_out="$(unshare -n bash -c 'chroot "$1" /usr/sbin/nft -f - <"$2" &&
      chroot "$1" /usr/sbin/nft -j list counters table inet overlayd_image_check' \
    _ "$ROOTFS" "$WORK/check.nft" 2>&1)"; then
    die "nft does not run from the image rootfs: $nft_out"
  fi
  case "$nft_out" in
    *'"nftables"'*'"rx_p1"'*) ;;
    *) die "nft in the image rootfs printed no JSON counters: $nft_out" ;;
  esac
  if ! ovl_out="$(unshare -n chroot "$ROOTFS" /usr/local/bin/overlayd --version 2>&1)"; then
    die "overlayd does not run from the image rootfs: $ovl_out"
  fi
  echo "==> ran from the rootfs: $ovl_out; nft -f, nft -j list counters" >&2
else
  echo "==> note: not root, so nft and overlayd are not test-run from the rootfs" >&2
fi

# File bytes only (not directory blocks), so the figure does not depend on the file system.
ROOTFS_BYTES="$(find "$ROOTFS" -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')"
ROOTFS_MB="$(awk -v b="$ROOTFS_BYTES" 'BEGIN { printf "%.1fMB", b / 1000000 }')"

# --- OCI layout (scripts/lib/oci.sh) ---------------------------------------------------
PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
if [ -n "$WIRE_VERSION" ]; then
  PATH_ENV="$PATH_ENV\",\"OVERLAYD_TEST_WIRE_VERSION=$WIRE_VERSION"
fi
LABELS="\"org.opencontainers.image.created\":\"$CREATED\",\"org.opencontainers.image.revision\":\"$GIT_COMMIT$DIRTY\",\"org.opencontainers.image.source\":\"$SOURCE_URL\",\"org.opencontainers.image.title\":\"overlayd\",\"org.opencontainers.image.version\":\"$VERSION$SUFFIX\""
oci_pack "$ROOTFS" "$WORK" "$SOURCE_DATE_EPOCH" "$REFERENCE" \
  "{\"Entrypoint\":[\"/usr/local/bin/overlayd\"],\"Env\":[\"$PATH_ENV\"],\"Labels\":{$LABELS},\"WorkingDir\":\"/\"}" \
  "scripts/image.sh --variant $VARIANT" "$LABELS" "$ARCHIVE" || die "tar of the image failed"
MANIFEST_DIGEST="$OCI_MANIFEST_DIGEST"
LAYER_SIZE="$OCI_LAYER_SIZE"

ARCHIVE_BYTES="$(stat -c %s "$ARCHIVE")"
echo "==> $ARCHIVE: archive $(awk -v b="$ARCHIVE_BYTES" 'BEGIN { printf "%.1fMB", b / 1000000 }') ($ARCHIVE_BYTES bytes, gzip layer $LAYER_SIZE bytes), rootfs $ROOTFS_MB ($ROOTFS_BYTES bytes), sha256 $(sha256sum "$ARCHIVE" | cut -d' ' -f1), $(elapsed)"
echo "image: $REFERENCE $ARCHIVE sha256:$MANIFEST_DIGEST $ROOTFS_MB"
if [ -z "$DIRTY" ]; then
  printf '%s\nimage: %s %s sha256:%s %s\n' "$KEY" "$REFERENCE" "$ARCHIVE" "$MANIFEST_DIGEST" "$ROOTFS_MB" >"$STAMP"
fi
