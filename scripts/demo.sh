#!/usr/bin/env bash
# Set everything up (see setup.sh) and run the main job on the built-in sample data:
# write the synthetic U2OS project, then show its summary (and, once a model exists, train,
# predict and evaluate). The project lands in ./demo_project (override: DEMO_DIR=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1
DEMO_DIR="${DEMO_DIR:-demo_project}"
CLI=.venv/bin/napari-cellclass
if [ -e "$DEMO_DIR" ]; then
  echo "demo: removing the previous $DEMO_DIR"
  rm -rf "$DEMO_DIR"
fi
echo "demo: writing the sample project to $DEMO_DIR"
$CLI sample "$DEMO_DIR"
echo
$CLI info "$DEMO_DIR"
