#!/usr/bin/env bash
# The test suite: unit, data, training, 2-rank gloo, torchrun (elastic + multi-node), real Slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --timeout=900 -p no:cacheprovider tests "$@"
