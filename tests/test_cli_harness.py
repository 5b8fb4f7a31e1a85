"""The benchmark-harness commands in-process: splits (default, few-shot), evaluate, brats convert, dataset restrict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext import cli
from nnunetv2_ext.data.synthetic import make_brats_like_dataset


@pytest.fixture()
def raw_dataset(tmp_path, monkeypatch) -> Path:
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    folder = make_brats_like_dataset(raw, dataset_id=993, n_train=10, n_test=1, shape=(24, 24, 24), seed=3)
    (pre / folder.name).mkdir()
    (pre / folder.name / "dataset.json").write_text((folder / "dataset.json").read_text())
    return folder


def test_default_then_few_shot_splits(raw_dataset, capsys):
    splits_file = Path(str(raw_dataset).replace("/raw/", "/pre/")) / "splits_final.json"
    assert cli.main(["splits", "default", "--dataset", "993"]) == 0
    default = json.loads(splits_file.read_text())
    assert len(default) == 5
    assert sorted(default[0]["train"] + default[0]["val"]) == [f"SynBraTS_{i:03d}" for i in range(10)]
    assert cli.main(["splits", "few-shot", "--dataset", "993", "--fractions", "0.25,0.5", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "fold 5: 25 % of fold 0's training cases (2), repeat 0" in out
    splits = json.loads(splits_file.read_text())
    assert splits[:5] == default and len(splits) == 9
    for fold in splits[5:]:
        assert fold["val"] == default[0]["val"] and set(fold["train"]) <= set(default[0]["train"])
    index = json.loads((splits_file.parent / "few_shot_index.json").read_text())
    assert [e["fold"] for e in index] == [5, 6, 7, 8]
    assert cli.main(["splits", "few-shot", "--dataset", "993", "--fractions", "0.25", "--repeats", "1"]) == 2
    assert json.loads(splits_file.read_text()) == splits  # refused: nothing changed
    assert cli.main(["splits", "default", "--dataset", "993"]) == 2  # never silently overwritten


def test_evaluate_writes_json_and_csv(raw_dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    for label in sorted((raw_dataset / "labelsTr").iterdir())[:2]:  # perfect predictions for two cases
        (pred / label.name).write_bytes(label.read_bytes())
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--ref", str(raw_dataset / "labelsTr"), "--pred", str(pred), "--dataset", "993",
                     "-o", str(out), "--partial"]) == 0
    summary = json.loads(out.read_text())
    assert set(summary["mean"]) == {"WT", "TC", "ET"}
    assert all(summary["mean"][r]["dice"] == 1.0 and summary["mean"][r]["hd95_mm"] == 0.0 for r in summary["mean"])
    assert out.with_suffix(".csv").is_file() and "WT: Dice 1.0000" in capsys.readouterr().out
    assert cli.main(["evaluate", "--ref", str(raw_dataset / "labelsTr"), "--pred", str(pred), "--dataset", "993"]) == 2


def _fake_brats_2021(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for k in range(n):
        case = root / f"BraTS2021_{k:05d}"
        case.mkdir(parents=True)
        for m in ("t1", "t1ce", "t2", "flair"):
            sitk.WriteImage(sitk.GetImageFromArray(rng.random((16, 16, 16)).astype(np.float32)),
                            str(case / f"{case.name}_{m}.nii.gz"))
        seg = np.zeros((16, 16, 16), np.uint8)
        seg[4:12, 4:12, 4:12], seg[6:10, 6:10, 6:10], seg[7:9, 7:9, 7:9] = 2, 1, 4
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(case / f"{case.name}_seg.nii.gz"))
    return root


def test_brats_convert_and_restrict_through_the_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    brats = _fake_brats_2021(tmp_path / "brats")
    assert cli.main(["brats", "convert", "--input", str(brats), "--dataset-id", "137"]) == 0
    converted = tmp_path / "raw" / "Dataset137_BraTS2021"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(converted / "labelsTr" / "BraTS2021_00000.nii.gz")))
    assert label[8, 8, 8] == 3 and label[6, 6, 6] == 2 and label[4, 4, 4] == 1  # ET 4->3, NCR 1->2, ED 2->1
    assert cli.main(["brats", "convert", "--input", str(brats), "--dataset-id", "137"]) == 2  # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["dataset", "restrict", "--dataset", "137", "--channels", "T1,FLAIR", "--dataset-id", "138"]) == 0
    restricted = next((tmp_path / "raw").glob("Dataset138_*"))
    assert json.loads((restricted / "dataset.json").read_text())["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert (restricted / "imagesTr" / "BraTS2021_00000_0001.nii.gz").read_bytes() == \
        (converted / "imagesTr" / "BraTS2021_00000_0003.nii.gz").read_bytes()


def _tree_hash(folder: Path) -> dict:
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_commands_never_modify_the_raw_dataset(raw_dataset, tmp_path):
    """Every command that reads a raw dataset leaves it byte-identical."""
    before = _tree_hash(raw_dataset)
    pred = tmp_path / "pred"
    pred.mkdir()
    label = next((raw_dataset / "labelsTr").iterdir())
    (pred / label.name).write_bytes(label.read_bytes())
    assert cli.main(["splits", "default", "--dataset", "993"]) == 0
    assert cli.main(["evaluate", "--ref", str(raw_dataset / "labelsTr"), "--pred", str(pred), "--dataset", "993",
                     "--partial"]) == 0
    assert cli.main(["dataset", "restrict", "--dataset", "993", "--channels", "T2", "--dataset-id", "994"]) == 0
    assert cli.main(["example-data", "--raw", str(raw_dataset.parent), "--dataset-id", "993"]) == 2  # exists
    assert _tree_hash(raw_dataset) == before


def test_weights_inspect_refuses_an_unknown_format_naming_the_flag(tmp_path, capsys):
    import torch

    from nnunetv2_ext.transfer.formats import FORMATS

    checkpoint = tmp_path / "w.pth"
    torch.save({"encoder.stages.0.weight": torch.zeros(2, 1, 3, 3, 3)}, checkpoint)
    assert cli.main(["weights", "inspect", str(checkpoint), "--format", "lightning"]) == 2
    err = capsys.readouterr().err
    assert "--format 'lightning'" in err and all(name in err for name in FORMATS)
    assert cli.main(["weights", "inspect", str(checkpoint), "--format", "state_dict"]) == 0


def test_proxy_run_offers_every_scale():
    from nnunetv2_ext.proxy.experiment import SCALES

    action = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["proxy"]
                  ._subparsers._group_actions[0].choices["run"]._actions if a.dest == "scale")
    assert list(action.choices) == list(SCALES)


def test_plans_offers_every_backbone_and_refuses_others(capsys):
    from nnunetv2_ext.planning.backbones import BACKBONE_NAMES

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["plans", "--help"])
    help_text = capsys.readouterr().out
    arch = help_text[help_text.index("--arch"):]
    for name in ("multi_encoder",) + BACKBONE_NAMES:
        assert name in arch, name
    assert cli.build_parser().parse_args(["plans", "4", "--arch", BACKBONE_NAMES[-1]]).arch == BACKBONE_NAMES[-1]
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["plans", "4", "--arch", "no_such_backbone"])
    assert exit_info.value.code == 2
    assert "--arch: invalid choice: 'no_such_backbone'" in capsys.readouterr().err


def test_parser_imports_no_torch():
    """`nnunetv2_ext --help` and the parser stay light: the backbone names come from a module without torch."""
    code = ("import sys; import nnunetv2_ext.cli as cli; cli.build_parser(); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'nnunetv2')); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
