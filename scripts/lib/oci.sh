# Sourced by scripts/image.sh and scripts/pause-image.sh: packs a rootfs directory as
# a one-layer OCI image archive (an OCI layout in a tar), reproducibly. Every tar
# entry gets the same mtime, owner 0:0 and no atime/ctime, names are sorted, the layer
# is compressed with `gzip -n` (no name, no timestamp), and the JSON is printed with a
# fixed key order and no whitespace, so the same inputs give the same bytes.
#
#   oci_pack ROOTFS WORK EPOCH REFERENCE CONFIG CREATED_BY ANNOTATIONS ARCHIVE
#
# CONFIG is the image config's "config" object (JSON); CREATED_BY its history line;
# ANNOTATIONS the manifest's annotation members (`"k":"v",...`, may be empty).
# REFERENCE names the image for both podman (org.opencontainers.image.ref.name) and
# containerd (io.containerd.image.name). Sets OCI_MANIFEST_DIGEST (hex) and
# OCI_LAYER_SIZE (bytes); returns non-zero if tar fails.

# The reproducible tar invocation, for entries all stamped EPOCH.
oci_tar() {
  local epoch=$1
  shift
  tar --sort=name --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --no-acls --no-xattrs --no-selinux "$@"
}

oci_pack() {
  local rootfs=$1 work=$2 epoch=$3 ref=$4 config=$5 created_by=$6 annotations=$7 archive=$8
  local layout="$work/layout"
  local blobs="$layout/blobs/sha256"
  local created diff_id layer_digest config_digest config_size manifest_size top ann=""
  [ -z "$annotations" ] || ann=",\"annotations\":{$annotations}"
  created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
  mkdir -p "$blobs"

  # The layer: the rootfs's top-level entries in byte order, tar recursing in sorted
  # order below them; no leading "./".
  mapfile -t top < <(cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
  oci_tar "$epoch" -C "$rootfs" -cf "$work/layer.tar" "${top[@]}" || return 1
  diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
  layer_digest="$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)"
  OCI_LAYER_SIZE="$(stat -c %s "$work/layer.tar.gz")"
  mv "$work/layer.tar.gz" "$blobs/$layer_digest"

  read -r config_digest config_size < <(printf '%s' \
    "{\"architecture\":\"amd64\",\"config\":$config,\"created\":\"$created\",\"history\":[{\"created\":\"$created\",\"created_by\":\"$created_by\"}],\"os\":\"linux\",\"rootfs\":{\"diff_ids\":[\"sha256:$diff_id\"],\"type\":\"layers\"}}" |
    oci_put_blob "$work" "$blobs")
  read -r OCI_MANIFEST_DIGEST manifest_size < <(printf '%s' \
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_digest\",\"size\":$OCI_LAYER_SIZE}]$ann}" |
    oci_put_blob "$work" "$blobs")

  printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$OCI_MANIFEST_DIGEST\",\"size\":$manifest_size,\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"$ref\"},\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}}]}" \
    >"$layout/index.json"
  chmod 0644 "$layout/oci-layout" "$layout/index.json" "$blobs"/*
  chmod 0755 "$layout/blobs" "$blobs"
  (cd "$layout" && oci_tar "$epoch" -cf "$work/archive.tar" oci-layout index.json blobs) || return 1
  mv -f "$work/archive.tar" "$archive"
}

# Writes stdin to a blob in BLOBS; prints "<sha256 hex> <size>".
oci_put_blob() {
  local work=$1 blobs=$2 tmp="$1/blob.tmp" digest
  cat >"$tmp"
  digest="$(sha256sum "$tmp" | cut -d' ' -f1)"
  mv "$tmp" "$blobs/$digest"
  echo "$digest $(stat -c %s "$blobs/$digest")"
}
