#!/usr/bin/env bash
# One command from a fresh clone to a pipeline run: set up, then run examples/hello.
# Where alpine:3.20 cannot be pulled (an air-gapped machine), its stages run in the local
# busybox image instead, through --image-map.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
map=()
if ! docker image inspect alpine:3.20 >/dev/null 2>&1 && ! docker pull -q alpine:3.20 >/dev/null 2>&1; then
  echo "demo: alpine:3.20 cannot be pulled here; running its stages in pipekit-local/busybox:latest" >&2
  map=(--image-map alpine:3.20=pipekit-local/busybox:latest)
fi
python3 -m pipekit run -f examples/hello "${map[@]}" "$@"
