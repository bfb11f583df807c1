#!/usr/bin/env bash
# Create .venv/ in the repository root and install ctphase with its development tools. Idempotent.
#
# PyTorch: timm imports torchvision, and torchvision must match torch exactly. We pin the CPU-tested pair
# torch 2.14.1 + torchvision 0.29.1 here (never let pip resolve an unpinned torch: it would pull a multi-GB
# CUDA build). pyproject.toml keeps open ranges so GPU users can install the CUDA build they need first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${CTPHASE_TORCH_PIN:-torch==2.14.1 torchvision==0.29.1}"

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    .venv/bin/python -m pip install --quiet $TORCH_PIN
fi
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet -e ".[dev]" $TORCH_PIN
echo "ctphase installed in .venv/ ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
