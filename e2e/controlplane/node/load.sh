#!/usr/bin/env bash
# node/load.sh DIR REF IMAGE_ARGS...: build the image REF with image.py IMAGE_ARGS... and import
# it into the containerd of the node that node-up.sh DIR started (namespace k8s.io, where the
# kubelet looks). Tests call it to make an image appear late.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:?usage: load.sh DIR REF IMAGE_ARGS...}"; REF="${2:?usage: load.sh DIR REF IMAGE_ARGS...}"; shift 2
source "$DIR/node/node.env"
mkdir -p "$DIR/node/images"
ARCHIVE="$DIR/node/images/$(printf %s "$REF" | tr -c 'A-Za-z0-9._-' _).tar"
python3 "$HERE/image.py" "$ARCHIVE" "$REF" "$@"
"$NODE_BIN_DIR/ctr" --address "$CONTAINERD_SOCK" --namespace k8s.io images import --snapshotter overlayfs \
  --label io.cri-containerd.image=managed "$ARCHIVE" >/dev/null
rm -f "$ARCHIVE"
