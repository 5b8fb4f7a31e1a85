"""Tests for nnunetv2_ext.cli: argument parsing, dispatch and error paths, run in-process on the tiny fixture plans."""
import json
import os
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from nnunetv2_ext import cli
from nnunetv2_ext.discovery import SHIM_MODULE, trainer_path
from nnunetv2_ext.planning.multi_encoder_plans import MULTI_ENCODER_CLASS

FIXTURES = Path(__file__).resolve().parent / "planning" / "fixtures"


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


# ------------------------------------------------------------------------------- a CLI that speaks nnU-Net (issue 19)


def _subparsers(parser, path=()):
    """(command words, parser) of every (sub)command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _subparsers(child, (*path, name))


def _options(parser) -> dict:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_option_has_help_and_help_shows_defaults():
    import argparse

    commands = list(_subparsers(cli.build_parser()))
    assert len(commands) > 20
    for words, parser in commands:
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), words
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and action.help.strip(), (words, action.option_strings or action.dest)


@pytest.mark.parametrize("argv, shown", [
    (["brats", "convert"], ["--dataset-id DATASET_ID", "(default: 137)"]),
    (["predict"], ["(default: cuda)", "-device cpu", "(default: ['0', '1', '2', '3', '4'])"]),
    (["evaluate"], ["--brats {2023,2023-MEN,2023-MET,2024}", "--brats-labels {challenge,nnunet}"]),
    (["report"], ["--rank-by COLUMN", "--brats"]),
])
def test_help_shows_the_surprising_defaults(capsys, argv, shown):
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for s in shown:
        assert s in text, s


def test_predict_accepts_nnunetv2_predicts_flags():
    import nnunetv2.inference.predict_from_raw_data as nnunet_predict

    ours = _options(dict(_subparsers(cli.build_parser()))[("predict",)])
    # nnUNetv2_predict's flags this command takes (cascades, -num_parts and progress-bar switches do not apply)
    wanted = ["-i", "-o", "-d", "-p", "-tr", "-c", "-f", "-step_size", "--disable_tta", "--verbose",
              "--save_probabilities", "--continue_prediction", "-chk", "-npp", "-nps", "-device"]
    import inspect

    source = inspect.getsource(nnunet_predict.predict_entry_point)
    for flag in wanted:
        assert f"'{flag}'" in source, flag  # still nnU-Net's flag
        assert flag in ours, flag
    args = cli.build_parser().parse_args(["predict", "-i", "a", "-o", "b", "-d", "1", "--modalities", "T1"])
    assert args.f == ["0", "1", "2", "3", "4"] and args.device == "cuda" and args.step_size == 0.5


@pytest.mark.parametrize("words, short, long", [
    (("plans",), "-d", None), (("evaluate",), "-d", "--dataset"), (("evaluate",), "-np", "--np"),
    (("report",), "-c", "--configuration"), (("report",), "-tr", "--trainers"), (("report",), "-np", "--np"),
    (("dataset", "restrict"), "-d", "--dataset"), (("splits", "default"), "-d", "--dataset"),
    (("splits", "few-shot"), "-d", "--dataset"), (("weights", "inspect"), "-p", "--plans"),
    (("weights", "inspect"), "-c", "--configuration"), (("weights", "inspect"), "-tr", "--trainer"),
    (("weights", "inspect"), "-d", "--dataset"), (("weights", "use"), "-p", "--plans"),
    (("unlabeled-dataset",), "-np", "--np"), (("brats", "convert"), "-np", "--np"),
    (("proxy", "make"), "-np", "--np"), (("proxy", "run"), "-device", "--device"), (("proxy", "run"), "-np", "--np"),
])
def test_nnunet_short_flags_with_the_long_forms_kept(words, short, long):
    options = _options(dict(_subparsers(cli.build_parser()))[words])
    assert short in options
    if long is not None:
        assert options[short] is options[long]


def test_plans_takes_the_dataset_as_d_too(preprocessed, capsys):
    assert cli.main(["plans", "-d", "992"]) == 0
    assert (preprocessed / "nnUNetPlans_MultiEncoder.json").is_file()
    assert cli.main(["plans", "992", "-d", "993"]) == 2
    assert "two datasets given" in capsys.readouterr().err


def _readme_commands():
    """(command words, flags) of every `nnunetv2_ext ...` line of the README's code blocks and usage lines."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    tree = dict(_subparsers(cli.build_parser()))
    found = []
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        for m in re.finditer(r"nnunetv2_ext ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)(.*)", line):
            words = tuple(m.group(1).split())
            while words and words not in tree:
                words = words[:-1]
            if not words:
                continue
            rest = m.group(2)
            j = i  # usage blocks continue on indented lines
            while line.rstrip().endswith("\\") or (j + 1 < len(lines) and lines[j + 1].startswith(" " * 20)
                                                    and lines[j + 1].strip().startswith("[")):
                j += 1
                if j >= len(lines):
                    break
                rest += " " + lines[j]
                line = lines[j]
            rest = rest.split("`")[0].split("  #")[0]
            flags = re.findall(r"(?<![\w$/.-])(--?[a-zA-Z][\w-]*)", rest)
            found.append((words, flags))
    return found


def test_every_flag_the_readme_shows_exists():
    tree = dict(_subparsers(cli.build_parser()))
    commands = _readme_commands()
    assert {("plans",), ("predict",), ("evaluate",), ("report",), ("brats", "convert")} <= {w for w, _ in commands}
    for words, flags in commands:
        options = _options(tree[words])
        missing = [f for f in flags if f not in options]
        assert not missing, (" ".join(words), missing)


def test_error_messages_name_flags_not_keyword_arguments():
    """Library messages reach the user through the CLI: they advise a flag (`use --overwrite`), never a Python
    keyword (`pass overwrite=True`)."""
    import re

    package = Path(cli.__file__).parent
    offenders = []
    pattern = re.compile(r"pass [a-z_]+=|\(CLI: |\b(?:overwrite|strict|skip_bad|layout)=(?:True|False)\b[^)]*\"")
    for path in sorted(package.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if ("raise" in line or line.strip().startswith(("f\"", "\""))) and pattern.search(line):
                offenders.append(f"{path.relative_to(package)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_unlabeled_strict_advises_its_own_flag(tmp_path, capsys):
    from nnunetv2_ext.data.synthetic import make_unlabeled_images

    images = make_unlabeled_images(tmp_path / "ukb", n_cases=3, shape=(24, 24, 24), modalities=("T1", "FLAIR"))
    next((images / "UKB_002").glob("*_FLAIR.nii.gz")).unlink()
    argv = ["unlabeled-dataset", "--images", str(images), "--modalities", "T1,FLAIR", "--dataset-id", "901",
            "--raw", str(tmp_path / "raw"), "--strict"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "UKB_002" in err and "without --strict" in err and "--skip-bad" not in err
