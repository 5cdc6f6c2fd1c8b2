#!/usr/bin/env bash
# One-command install of mmkgc-dist and its pinned stack into a virtual environment.
#   bash scripts/install.sh            # CPU (default): fbgemm-gpu-cpu
#   VARIANT=cuda bash scripts/install.sh   # CUDA machines: fbgemm-gpu (the CUDA build)
# torchrec declares a hard dependency on the CUDA fbgemm-gpu wheel, which would overwrite the CPU
# variant's files; so torchrec goes in with --no-deps and its other requirements are listed here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VARIANT=${VARIANT:-cpu}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip wheel setuptools ninja

# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build on CPU machines.
TORCH=${TORCH_VERSION:-2.13.0}
pip install -q "torch==$TORCH"
case "$VARIANT" in
  cpu)  pip install -q "fbgemm-gpu-cpu==1.8.0" ;;
  cuda) pip install -q "fbgemm-gpu==1.8.0" ;;
  *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;;
esac
pip install -q --no-deps "torchrec==1.8.0"
pip install -q "torch==$TORCH" tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath
pip install -q "torch==$TORCH" "deepspeed==0.19.8"
pip install -q "torch==$TORCH" -r requirements.txt
pip install -q --no-deps -e .
echo "installed into $VENV ($VARIANT); activate with: source $VENV/bin/activate"
