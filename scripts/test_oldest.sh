#!/usr/bin/env bash
# Install the oldest versions setup.py claims (torch, torchvision, numpy, MONAI) into .venv-oldest, the rest as pip
# resolves them around those pins, import every module and run a subset of the unit tests (arguments: other pytest
# targets instead). pytest's exit code 5 (no tests collected) counts as a failure. The floors and why: README.md,
# "Set up".
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
VENV=${NNUNETV2_EXT_OLDEST_VENV:-.venv-oldest}
PYTHON=${PYTHON:-python3}
# torch 2.6: torch.serialization.get_unsafe_globals_in_checkpoint and (object, name) entries in safe_globals;
# torchvision 0.21 is its pair. numpy 1.26: what nnU-Net 2.8.1 needs through blosc2 >= 3.3.2 (numpy 1.26.0 has no
# numpy._core yet). MONAI 1.5.0: the floor in setup.py.
OLDEST=(torch==2.6.0 torchvision==0.21.0 numpy==1.26.0 monai==1.5.0)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || exit 1
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip || exit 1
# one resolution, so that no later install upgrades a pinned package
python -m pip install -q "${OLDEST[@]}" -e ".[test,proxy]" || exit 1
python - "${OLDEST[@]}" <<'EOF' || exit 1
import sys
from importlib.metadata import version

wrong = [f"{pin} (installed {version(pin.split('==')[0])})" for pin in sys.argv[1:]
         if version(pin.split("==")[0]).split("+")[0] != pin.split("==")[1]]
if wrong:
    sys.exit(f"the oldest-versions venv does not hold the pins: {wrong}")
EOF
python -c "import monai, numpy, torch
print(f'oldest versions: torch {torch.__version__}, numpy {numpy.__version__}, monai {monai.__version__}')"
echo "oldest-versions install: $((SECONDS - start)) s"
export nnUNet_def_n_proc=1 nnUNet_n_proc_DA=1
# every module imports; then the tests of the code that touches the version-sensitive APIs (torch.load's allow-list,
# numpy scalars in checkpoints, MONAI's networks, the predictor, the reports); arguments replace that list
python -c "import importlib, pkgutil, nnunetv2_ext
names = [m.name for m in pkgutil.walk_packages(nnunetv2_ext.__path__, 'nnunetv2_ext.')]
for name in names:
    importlib.import_module(name)
print(f'imported all {len(names)} nnunetv2_ext modules')" || exit 1
if [ "$#" -eq 0 ]; then
    set -- tests/transfer tests/evaluation tests/inference tests/architectures/test_monai_backbones.py \
        tests/test_dataset_json.py
fi
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
echo "oldest-versions step: $((SECONDS - start)) s"
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
