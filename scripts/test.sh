#!/usr/bin/env bash
# Set everything up (see setup.sh), lint with ruff and run the whole test suite, under a
# virtual display when no display is present, on two pytest workers. Extra arguments go to pytest
# instead (and skip the lint and the workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export CELLCLASS_SAMPLE_DIR="${CELLCLASS_SAMPLE_DIR:-$(mktemp -d)/sample}"
export NAPARI_CONFIG="${NAPARI_CONFIG:-$(mktemp -d)/napari-settings.yaml}"
if [ $# -eq 0 ]; then  # the whole suite: lint first (the rules are in pyproject.toml)
  .venv/bin/python -m ruff check . || { echo "test: ruff found problems (fix them, or run ruff check --fix .)" >&2; exit 1; }
fi
if [ $# -eq 0 ]; then
  run=(.venv/bin/python -m pytest -n 2)  # about 1.3x faster on two cores; tests do not share files
  # one torch thread per worker: two workers with a thread per core each fought over the cores
  # (the training tests took 3.3x as long: 88 s against 27 s for test_engine + test_calibration)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  run=(.venv/bin/python -m pytest "$@")
fi
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1600x1200x24" "${run[@]}"
fi
exec "${run[@]}"
