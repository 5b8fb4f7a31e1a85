#!/usr/bin/env bash
# ruff (lint + import order) and mypy (the pure modules, see pyproject.toml), as the pre-commit hooks run them.
# Uses the environment of scripts/install.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. "${NNUNETV2_EXT_VENV:-.venv}/bin/activate"
ruff check .
mypy
