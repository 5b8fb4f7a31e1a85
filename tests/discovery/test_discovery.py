"""The discovery shim (nnunetv2_ext/discovery/nnunetv2_ext_trainers.py) exports every nnU-Net trainer of the package,
from the ``__all__`` of the modules in ``nnunetv2_ext.training.TRAINER_MODULES``, and nnU-Net finds them through it
the way ``nnUNetv2_train`` does (a fresh process, the shim imported by file and purged afterwards)."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunetv2_ext
import nnunetv2_ext.discovery.nnunetv2_ext_trainers as shim
import nnunetv2_ext.training as training
from nnunetv2_ext.discovery import ENV_VAR, SHIM_MODULE, trainer_path


def _training_modules():
    return [importlib.import_module(f"nnunetv2_ext.training.{info.name}")
            for info in pkgutil.iter_modules(training.__path__)]


def _trainers_defined_in(module) -> set:
    return {name for name, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
            and name.startswith("nnUNetTrainer")}


def test_every_trainer_of_the_package_is_exported_by_the_shim():
    """nnU-Net finds trainers through the shim module only: each nnUNetTrainer* class defined in any module of
    nnunetv2_ext.training must be re-exported there (listed or not in TRAINER_MODULES)."""
    defined = set().union(*(_trainers_defined_in(m) for m in _training_modules()))
    assert len(defined) >= 40 and not defined - set(shim.__all__), sorted(defined - set(shim.__all__))
    for name in ("nnUNetTrainerSwinProxies_debug", "nnUNetTrainerCrossModality", "nnUNetTrainerVolumeFusion_debug",
                 "nnUNetTrainerProxyVolumeFusion_smoke", "nnUNetTrainerVolumeFusionBackbone"):
        assert name in defined


def test_each_trainer_module_exports_exactly_the_trainers_it_defines():
    for module in _training_modules():
        defined = _trainers_defined_in(module)
        if module.__name__ in training.TRAINER_MODULES:
            assert sorted(module.__all__) == sorted(defined), module.__name__
        else:  # helpers (base, pretext_base, lr_schedules, ...) define no trainer of their own
            assert not defined, f"{module.__name__} defines {sorted(defined)}: list it in TRAINER_MODULES"


def test_the_shim_exports_only_trainers_and_each_under_its_own_name():
    exported = {name: getattr(shim, name) for name in shim.__all__}
    assert exported == training.exported_trainers()
    assert all(inspect.isclass(c) and issubclass(c, nnUNetTrainer) and c.__name__ == n for n, c in exported.items())
    # the classes keep their real module (pickling, DDP workers, isinstance)
    assert all(c.__module__ in training.TRAINER_MODULES for c in exported.values())


def test_a_module_without_all_or_a_name_exported_twice_is_refused(monkeypatch):
    monkeypatch.setattr(training, "TRAINER_MODULES", ("nnunetv2_ext.training.base",))
    with pytest.raises(ValueError, match="nnunetv2_ext.training.base is listed in TRAINER_MODULES but has no __all__"):
        training.exported_trainers()
    monkeypatch.setattr(training, "TRAINER_MODULES", ("nnunetv2_ext.training.vanilla",) * 2)
    with pytest.raises(ValueError, match="nnUNetTrainerVanilla is exported by nnunetv2_ext.training.vanilla and by"):
        training.exported_trainers()


def test_nnunet_finds_a_trainer_through_the_shim_in_a_fresh_process():
    """nnU-Net's search of an ``nnUNet_extTrainer`` folder, with the arguments of its ext-trainer lookup
    (``nnunetv2.utilities.find_objects.recursive_find_trainer_class_by_name``: the folder put on sys.path, the shim
    imported as a top-level module, then purged), as ``nnUNetv2_train -tr nnUNetTrainerSwinProxies_debug`` does
    after not finding it among nnU-Net's own trainers (searching those takes ~30 s: tests/e2e do)."""
    code = (
        "import json, os, pickle, sys\n"
        "from nnunetv2.utilities.find_class_by_name import recursive_find_python_class\n"
        f"path = os.environ[{ENV_VAR!r}]\n"
        "c = recursive_find_python_class(path, 'nnUNetTrainerSwinProxies_debug', None, base_folder=path,\n"
        "                                cleanup_imports_from_base_folder=True)\n"
        "pickle.dumps(c)\n"
        "print('RESULT', json.dumps({'module': c.__module__, 'name': c.__name__,\n"
        f"                            'purged': {SHIM_MODULE!r} not in sys.modules}}))\n")
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(nnunetv2_ext.__file__)))  # this checkout's code
    env = {**os.environ, ENV_VAR: trainer_path(),
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert json.loads(line[len("RESULT "):]) == {"module": "nnunetv2_ext.training.swin_proxies",
                                                 "name": "nnUNetTrainerSwinProxies_debug", "purged": True}
