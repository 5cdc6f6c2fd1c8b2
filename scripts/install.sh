#!/usr/bin/env bash
# One-command install of mmkgc-dist and its pinned stack into a virtual environment.
#   bash scripts/install.sh            # CPU (default): fbgemm-gpu-cpu
#   VARIANT=cuda bash scripts/install.sh   # CUDA machines: fbgemm-gpu (the CUDA build)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 VARIANT=cuda bash scripts/install.sh
#   EXTRAS=s3 bash scripts/install.sh      # also s3fs, for s3:// URLs (gcs: gcsfs)
# torchrec declares a hard dependency on the CUDA fbgemm-gpu wheel, which would overwrite the CPU
# variant's files; so torchrec goes in with --no-deps and its other requirements are listed here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VARIANT=${VARIANT:-cpu}
EXTRAS=${EXTRAS:-}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip wheel setuptools ninja

# torch is pinned: an unpinned torch resolves to a multi-GB CUDA build on CPU machines. Where torch comes from:
#   TORCH_INDEX_URL=URL      that index for torch (e.g. https://download.pytorch.org/whl/cpu or .../whl/cu128)
#   unset, VARIANT=cpu       the configured index if it serves a CPU build (a +cpu wheel, or macOS); otherwise
#                            PyTorch's CPU index, so a CPU machine never downloads the CUDA build from PyPI
TORCH=${TORCH_VERSION:-2.13.0}
CPU_INDEX=https://download.pytorch.org/whl/cpu
if [ -z "${TORCH_INDEX_URL:-}" ] && [ "$VARIANT" = cpu ]; then
  report=$(mktemp)
  pip install -q --dry-run --no-deps --ignore-installed --report "$report" "torch==$TORCH" >/dev/null 2>&1 || true
  if ! "$VENV/bin/python" - "$report" <<'PY'
import json, platform, sys
try:
    urls = [i["download_info"]["url"] for i in json.load(open(sys.argv[1]))["install"]]
except (OSError, ValueError, KeyError):
    sys.exit(1)
sys.exit(0 if platform.system() == "Darwin" or any("%2Bcpu" in u or "+cpu" in u for u in urls) else 1)
PY
  then
    TORCH_INDEX_URL=$CPU_INDEX
    echo "the configured package index serves a CUDA build of torch $TORCH; installing the CPU build from $CPU_INDEX"
  fi
  rm -f "$report"
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip install -q --index-url "$TORCH_INDEX_URL" "torch==$TORCH"
else
  pip install -q "torch==$TORCH"
fi
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
for extra in ${EXTRAS//,/ }; do
  case "$extra" in
    s3)  pip install -q "s3fs>=2023.6" ;;
    gcs) pip install -q "gcsfs>=2023.6" ;;
    *) echo "EXTRAS: unknown extra '$extra' (s3, gcs)" >&2; exit 2 ;;
  esac
done
echo "installed into $VENV ($VARIANT); activate with: source $VENV/bin/activate"
