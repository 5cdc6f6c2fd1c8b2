#!/usr/bin/env bash
# The test suite: unit, data, training, 2-rank gloo, torchrun (elastic + multi-node), real Slurm.
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --quick    the quick tier: every test not marked slow (pytest.ini)
# Other arguments go to pytest (e.g. tests/test_data.py, -k name, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
args=()
where=tests                        # the whole suite, unless test files or folders are named
for a in "$@"; do
  if [ "$a" = "--quick" ]; then args+=(-m "not slow"); else args+=("$a"); fi
  if [ -e "${a%%::*}" ]; then where=; fi
done
exec .venv/bin/python -m pytest -q --timeout=900 -p no:cacheprovider ${where:+"$where"} ${args[@]+"${args[@]}"}
