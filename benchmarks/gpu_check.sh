#!/usr/bin/env bash
# The GPU check on a CUDA machine, from a copy of the repository: CUDA tests, the pipeline
# benchmark in bf16, torchrun over NCCL; one JSON summary line; exit 0 only when every target holds.
#   bash benchmarks/gpu_check.sh             # PYTHON=/path/to/python to choose the interpreter
#   bash benchmarks/gpu_check.sh --dry-run   # the same parts on the CPU, tiny, nothing judged
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --kill-after=10 540 "$PY" benchmarks/gpu_check.py "$@"
