#!/usr/bin/env bash
# Set up a machine for pipekit's examples and tests: the system packages (on Debian, as root),
# the project with its test dependencies, a Docker engine that answers, and the local images.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: the engine, a static busybox for the tiny test image, the
# Distribution registry for push/pull tests, debootstrap for the local Python base image,
# Chromium with its WebDriver for the browser tests of the HTML run report, and iproute2 for the
# three-node test swarm (tests/swarm_lab.py).
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# the Swarm tests' nodes: network namespaces (ip) and namespaced engines (nsenter, unshare)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
# fsck.erofs checks the EROFS images of the workspace pipekit writes (tests/test_erofs.py)
command -v fsck.erofs >/dev/null 2>&1 || missing+=(erofs-utils)
# the shell completion tests drive real shells
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: please install ${missing[*]} (Debian package names)" >&2
  fi
fi

# The distribution is pipekit-ci (`pipekit` on the package index is another project): an install
# of this very checkout under the old name `pipekit` goes first (it would keep the `pipekit` command).
if python3 -m pip show pipekit 2>/dev/null | grep -qxF "Editable project location: $PWD"; then
  python3 -m pip uninstall --quiet --yes --root-user-action=ignore pipekit
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test]'
bash scripts/start-engine.sh
bash scripts/local-images.sh
bash scripts/images/python-base.sh
