#!/usr/bin/env bash
# Set up a machine for pipekit's examples and tests: install the project with its test
# dependencies, make sure a Docker engine answers, and build the local images.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash scripts/start-engine.sh
bash scripts/local-images.sh
