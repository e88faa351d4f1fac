#!/usr/bin/env bash
# Build a local Python base image without pulling anything: Debian bookworm (minbase) with
# python3 (3.11) from Debian's packages, imported with `docker import`.
# Usage: scripts/images/python-base.sh [IMAGE]     (default pipekit-local/python:3.11-slim)
# About 60 s the first time; the engine keeps the image afterwards.
set -euo pipefail
image="${1:-pipekit-local/python:3.11-slim}"
if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "python-base: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mirror="${DEBIAN_MIRROR:-}"   # empty: debootstrap's default, deb.debian.org
echo "python-base: debootstrap bookworm with python3 into $root (mirror ${mirror:-default})" >&2
debootstrap --variant=minbase --include=python3,python-is-python3 bookworm "$root" ${mirror:+"$mirror"} >/tmp/python-base-debootstrap.log 2>&1 || {
  tail -20 /tmp/python-base-debootstrap.log >&2
  exit 1
}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
echo "python-base: built $image" >&2
