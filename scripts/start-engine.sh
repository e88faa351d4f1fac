#!/usr/bin/env bash
# Make sure a Docker engine answers. Installs Debian's docker.io when dockerd is missing and
# starts dockerd in the background when nothing answers (there is no systemd on CI machines).
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || need_pkgs+=(busybox-static)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "start-engine: dockerd is not installed; install Docker (as root: apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
  echo "start-engine: installing ${need_pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ -f /var/run/docker.pid ]; then
  pid=$(cat /var/run/docker.pid || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "start-engine: starting dockerd (log: /tmp/dockerd.log)" >&2
  setsid dockerd >/tmp/dockerd.log 2>&1 < /dev/null &
fi

for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "start-engine: the Docker engine did not answer within 30 s; see /tmp/dockerd.log" >&2
tail -20 /tmp/dockerd.log >&2 || true
exit 1
