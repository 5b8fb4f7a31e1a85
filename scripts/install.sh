#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install nnunetv2-ext into it, torch pinned first.
# PyPI's torchvision (needed by timm, needed by dynamic-network-architectures) replaces a CPU-only torch with a
# CUDA build, so torch and torchvision are installed together, pinned, before the package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${NNUNETV2_EXT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
    case "$(uname -m)" in
        aarch64|arm64) python -m pip install -q torch==2.9.1 torchvision==0.24.1 ;;
        *)             python -m pip install -q torch==2.14.1 torchvision==0.29.1 ;;
    esac
fi
python -m pip install -q -e ".[test,proxy,dev]"
python -c "import torch, nnunetv2, nnunetv2_ext; print(f'nnunetv2-ext {nnunetv2_ext.__version__} with torch {torch.__version__}')"
