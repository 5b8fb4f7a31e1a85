"""`nnunetv2_ext proxy make|run` argument handling and the discovery shim's coverage of the proxy trainers."""
from __future__ import annotations

import inspect

import pytest

from nnunetv2_ext import cli


def test_run_without_data_exits_2_and_names_proxy_make(tmp_path, capsys):
    assert cli.main(["proxy", "run", "--out", str(tmp_path)]) == 2
    assert "nnunetv2_ext proxy make --out" in capsys.readouterr().err


def test_make_with_a_bad_count_exits_2_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["proxy", "make", "--out", str(tmp_path / "p"), "--n-test", "0"]) == 2
    assert "n_test" in capsys.readouterr().err
    assert not (tmp_path / "p" / "proxy_manifest.json").exists()


@pytest.mark.parametrize("argv", [["proxy", "run", "--out", "x", "--scale", "huge"], ["proxy"], ["proxy", "make"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2


def test_every_trainer_of_the_package_is_discoverable():
    """nnU-Net finds trainers through the shim module only: each trainer class defined in nnunetv2_ext.training must
    be re-exported there."""
    import importlib
    import pkgutil

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_ext.discovery.nnunetv2_ext_trainers as shim
    import nnunetv2_ext.training as training

    defined = set()
    for info in pkgutil.iter_modules(training.__path__):
        module = importlib.import_module(f"nnunetv2_ext.training.{info.name}")
        defined |= {name for name, obj in inspect.getmembers(module, inspect.isclass)
                    if issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__
                    and name.startswith("nnUNetTrainer")}
    assert defined and not defined - set(dir(shim)), sorted(defined - set(dir(shim)))
