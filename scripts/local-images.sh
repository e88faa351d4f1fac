#!/usr/bin/env bash
# Build the local images that examples and tests use where nothing can be pulled:
#   pipekit-local/busybox:latest   FROM scratch + Debian's static busybox (about 1 s)
# Usage: scripts/local-images.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! docker image inspect pipekit-local/busybox:latest >/dev/null 2>&1; then
  bb=""
  for c in /bin/busybox /usr/bin/busybox; do
    if [ -f "$c" ] && [ ! -L "$c" ]; then bb="$c"; break; fi
  done
  if [ -z "$bb" ]; then
    echo "local-images: no static busybox; install it (apt-get install busybox-static)" >&2
    exit 1
  fi
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$here/images/busybox/Dockerfile" "$bb" "$ctx/"
  [ "$(basename "$bb")" = busybox ] || mv "$ctx/$(basename "$bb")" "$ctx/busybox"
  docker build -q -t pipekit-local/busybox:latest "$ctx" >/dev/null
  echo "local-images: built pipekit-local/busybox:latest" >&2
fi
