"""Tests for nnunetv2_ext.cli: argument parsing, dispatch and error paths, run in-process on the tiny fixture plans."""
import json
import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from nnunetv2_ext import cli
from nnunetv2_ext.discovery import SHIM_MODULE, trainer_path
from nnunetv2_ext.planning.multi_encoder_plans import MULTI_ENCODER_CLASS
from tests.conftest import write_tiny_preprocessed

FIXTURES = Path(__file__).resolve().parent / "planning" / "fixtures"


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    """$nnUNet_preprocessed with Dataset992_X holding nnU-Net's plans and dataset.json (nothing else set)."""
    root = tmp_path / "preprocessed"
    folder = write_tiny_preprocessed(root / "Dataset992_X")
    monkeypatch.setenv("nnUNet_preprocessed", str(root))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return folder


def _arch_kwargs(path, configuration="3d_fullres"):
    return json.loads(Path(path).read_text())["configurations"][configuration]["architecture"]["arch_kwargs"]


# ------------------------------------------------------------------------------------------------- plans


@pytest.mark.parametrize("dataset", ["992", "Dataset992_X"])
def test_plans_writes_multi_encoder_plans(preprocessed, capsys, dataset):
    assert cli.main(["plans", dataset]) == 0
    target = preprocessed / "nnUNetPlans_MultiEncoder.json"
    assert capsys.readouterr().out.strip() == f"wrote {target}"
    plans = json.loads(target.read_text())
    assert plans["plans_name"] == "nnUNetPlans_MultiEncoder"
    for config in plans["configurations"].values():
        assert config["architecture"]["network_class_name"] == MULTI_ENCODER_CLASS
        assert config["architecture"]["arch_kwargs"]["modality_names"] == ["T1", "T1Gd", "T2", "FLAIR"]
    assert sorted(p.name for p in preprocessed.iterdir()) == ["dataset.json", "nnUNetPlans.json",
                                                              "nnUNetPlans_MultiEncoder.json"]


def test_plans_without_overwrite_refuses_and_keeps_the_file(preprocessed, capsys):
    assert cli.main(["plans", "992", "--fusion", "sum"]) == 0
    target = preprocessed / "nnUNetPlans_MultiEncoder.json"
    before = target.read_bytes()
    capsys.readouterr()
    assert cli.main(["plans", "992", "--fusion", "mean"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert target.read_bytes() == before
    assert not [p for p in preprocessed.iterdir() if p.name.endswith(".partial")]


def test_plans_overwrite_replaces(preprocessed):
    assert cli.main(["plans", "992"]) == 0
    target = preprocessed / "nnUNetPlans_MultiEncoder.json"
    assert _arch_kwargs(target)["fusion"] == "concat"
    assert cli.main(["plans", "992", "--overwrite", "--fusion", "sum", "--groups", "T1,T1Gd;T2,FLAIR"]) == 0
    kwargs = _arch_kwargs(target)
    assert kwargs["fusion"] == "sum" and kwargs["encoder_groups"] == [[0, 1], [2, 3]]


def test_plans_options_reach_the_plans(preprocessed):
    argv = ["plans", "992", "--encoder", "residual", "--groups", "0,2;1,3", "--encoder-width", "0.5",
            "--plans-name", "Mine"]
    assert cli.main(argv) == 0
    kwargs = _arch_kwargs(preprocessed / "Mine.json")
    assert kwargs["encoder"] == "residual" and kwargs["encoder_groups"] == [[0, 2], [1, 3]]
    assert kwargs["encoder_width"] == 0.5 and kwargs["fusion"] == "concat"
    assert json.loads((preprocessed / "Mine.json").read_text())["plans_name"] == "Mine"


def test_plans_with_preset_file(preprocessed, tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [16, 16, 16], "batch_size": 1}},
                                  "multi_encoder": {"fusion": "mean"}}))
    assert cli.main(["plans", "992", "--preset", str(preset)]) == 0
    config = json.loads((preprocessed / "nnUNetPlans_MultiEncoder.json").read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [16, 16, 16] and config["batch_size"] == 1
    assert config["architecture"]["arch_kwargs"]["fusion"] == "mean"
    assert config["architecture"]["arch_kwargs"]["n_stages"] == 3


def test_plans_single_modality_dataset_fails(preprocessed, capsys):
    dataset = json.loads((preprocessed / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "CT"}
    (preprocessed / "dataset.json").write_text(json.dumps(dataset))
    assert cli.main(["plans", "992"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunetv2_ext plans: error:") and "at least 2 modalities" in err
    assert not (preprocessed / "nnUNetPlans_MultiEncoder.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--groups", "T1,T1ce;T2,FLAIR"], "['T1', 'T1Gd', 'T2', 'FLAIR']"),
    (["--groups", "0,1;2"], "are in no group"),
    (["--source-plans", "nnUNetResEncUNetMPlans"], "nnUNetv2_plan_and_preprocess -d 992"),
    (["--preset", "/nonexistent/preset.json"], "/nonexistent/preset.json does not exist"),
])
def test_plans_errors_exit_2(preprocessed, capsys, argv, message):
    assert cli.main(["plans", "992", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (preprocessed / "nnUNetPlans_MultiEncoder.json").exists()


def test_plans_unknown_dataset_exits_2(preprocessed, capsys):
    assert cli.main(["plans", "993"]) == 2
    assert "993" in capsys.readouterr().err


def test_plans_without_preprocessed_folder_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert cli.main(["plans", "Dataset992_X"]) == 2
    assert "nnUNet_preprocessed is not set" in capsys.readouterr().err


def test_plans_rejects_options_the_network_rejects(preprocessed, capsys):
    assert cli.main(["plans", "992", "--fusion", "sum", "--encoder-width", "0.5"]) == 2
    assert "fusion='concat'" in capsys.readouterr().err
    assert not (preprocessed / "nnUNetPlans_MultiEncoder.json").exists()


# ------------------------------------------------------------------------------------------ argument parsing


@pytest.mark.parametrize("argv", [
    [],
    ["plans", "992", "--fusion", "max"],
    ["plans", "992", "--encoder", "swin"],
    ["plans", "992", "--arch", "no_such_network"],
    ["plans", "992", "--encoder-width", "half"],
    ["no-such-command"],
    ["example-data"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: nnunetv2_ext" in capsys.readouterr().err


def test_plans_defaults_leave_options_to_the_planner():
    args = cli.build_parser().parse_args(["plans", "992"])
    assert (args.encoder, args.fusion, args.groups, args.encoder_width) == (None, None, None, None)
    assert args.source_plans == "nnUNetPlans" and args.plans_name is None and not args.overwrite
    assert args.func is cli._plans


# ----------------------------------------------------------------------------------------------- trainer-path


def test_trainer_path_prints_the_discovery_folder(capsys):
    assert cli.main(["trainer-path"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == trainer_path()
    assert os.path.isfile(os.path.join(printed, f"{SHIM_MODULE}.py"))
    assert Path(printed) == Path(cli.__file__).parent / "discovery"


def test_console_script_points_at_main():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "nnunetv2_ext"]
    assert script.value == "nnunetv2_ext.cli:main"
    assert script.load() is cli.main
