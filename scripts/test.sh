#!/usr/bin/env bash
# Install (scripts/install.sh) and run the whole test suite on the CPU. pytest's exit code 5 (no tests collected)
# counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
. "${NNUNETV2_EXT_VENV:-.venv}/bin/activate"
export nnUNet_def_n_proc=1 nnUNet_n_proc_DA=1
python -m pytest -ra --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
