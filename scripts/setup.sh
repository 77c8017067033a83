#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv: `bash scripts/setup.sh`
# Idempotent: a second run installs nothing new. System packages that only the tests need (SLURM,
# MariaDB, Chromium) are installed by the test tooling itself (tests/infra/apt.py), not here.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi

# torch/torchvision first, as a known-good pair. The CPU-only torch wheel some machines keep in pip's
# find-links breaks PyPI's torchvision ("operator torchvision::nms does not exist"), so never pick it:
# the regular PyPI build runs on CPU-only machines as well.
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *)             TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  .venv/bin/pip install --quiet $TORCH
fi
.venv/bin/pip install --quiet -e '.[dev]'
.venv/bin/python -c "import torch, torchvision, torch_fidelity, cleanfid, mlflow, submitit, hydra" \
  || { echo "setup: the environment does not import; see the pip output above" >&2; exit 1; }
echo "setup: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
