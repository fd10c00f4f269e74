#!/usr/bin/env bash
# Builds the tkgops container image from ./Containerfile with buildah, then runs
# `tkgops --version` and `tkgops validate` inside it.
#
# On a machine that reaches a container registry, pass the bases the normal build uses:
#   BUILDER_IMAGE=docker.io/library/rust:1.95-slim-bookworm \
#   RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim scripts/image.sh
# Without them (this project's CI machines reach Debian's package mirror but no registry), both
# bases are made here: a Debian bookworm minbase from debootstrap for the runtime, and the same
# with a C toolchain plus this machine's Rust toolchain (`rustc --print sysroot`) for the
# builder; the crates come offline from this machine's cargo registry, mounted into the build.
#
# Storage: vfs, isolation: chroot (no overlay or user namespaces needed). Needs root, buildah
# and (for the local bases) debootstrap: `apt-get install buildah debootstrap`.
# Usage: scripts/image.sh [TAG]   (default localhost/tkgops:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${1:-localhost/tkgops:dev}"
WORK="${TKGOPS_IMAGE_WORK:-$PWD/target/image}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
bh() { buildah --storage-driver vfs "$@"; }
mkdir -p "$WORK"

# A local base image named $1 from a debootstrap minbase with the packages $2 (comma list);
# then $3 (optional) is a directory copied to /usr/local/rust with its bin/ on PATH.
local_base() {
  local name="$1" include="$2" rust="${3:-}"
  if bh inspect --type image "$name" >/dev/null 2>&1; then return; fi
  local root="$WORK/rootfs-${name##*/}"
  root="${root//:/-}"
  if [ ! -x "$root/bin/sh" ]; then
    rm -rf "$root"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$root" "$MIRROR" >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  fi
  local ctr
  ctr=$(bh from scratch)
  bh copy "$ctr" "$root" / >/dev/null
  if [ -n "$rust" ]; then
    bh copy "$ctr" "$rust" /usr/local/rust >/dev/null
    bh config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env CARGO_HOME=/usr/local/cargo "$ctr"
  fi
  bh commit --rm "$ctr" "$name" >/dev/null
  echo "==> base image $name" >&2
}

volumes=()
if [ -z "${BUILDER_IMAGE:-}" ] || [ -z "${RUNTIME_IMAGE:-}" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed for the local bases" >&2; exit 1; }
  RUNTIME_IMAGE="${RUNTIME_IMAGE:-localhost/tkgops-runtime-base:$SUITE}"
  BUILDER_IMAGE="${BUILDER_IMAGE:-localhost/tkgops-builder:$(rustc --version | cut -d' ' -f2)}"
  local_base "$RUNTIME_IMAGE" ca-certificates,libssl3
  local_base "$BUILDER_IMAGE" \
    ca-certificates,gcc,g++,make,cmake,pkg-config,libssl-dev,zlib1g-dev,perl,libc6-dev \
    "$(rustc --print sysroot)"
  # The crates: this machine's registry (run `cargo fetch --locked` first if it lacks any).
  cargo fetch --locked >/dev/null
  volumes=(--volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry"
           --build-arg CARGO_NET_OFFLINE=true)
fi

echo "==> building $TAG (builder $BUILDER_IMAGE, runtime $RUNTIME_IMAGE)" >&2
bh build --isolation chroot --layers -f Containerfile \
  --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
  "${volumes[@]}" -t "$TAG" .

echo "==> checks inside $TAG" >&2
ctr=$(bh from "$TAG")
trap 'bh rm "$ctr" >/dev/null 2>&1 || true' EXIT
user=$(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$TAG")
[ "$user" = "65532:65532" ] || { echo "the image runs as '$user', not 65532:65532" >&2; exit 1; }
bh run --isolation chroot --user 65532:65532 "$ctr" -- /usr/local/bin/tkgops --version
bh run --isolation chroot --user 65532:65532 \
  --volume "$PWD/examples:/examples:ro" "$ctr" -- /usr/local/bin/tkgops validate /examples/requests/team-a-prod
echo "==> image $TAG: tkgops --version and tkgops validate ran inside it as 65532"
