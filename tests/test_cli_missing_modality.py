"""`nnunetv2_ext splits case-lists` and `benchmark missing-modality` through the command's main (argument handling
and errors; the benchmark itself runs in tests/e2e/test_missing_modalities_e2e.py)."""
from __future__ import annotations

import json

import pytest

from nnunetv2_ext import cli

CASES = [f"Brats18_case_{i}" for i in range(8)]


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "Dataset993_Lists"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for case in CASES:
        (raw / "labelsTr" / f"{case}.nii.gz").write_text("")
    for name in ("raw", "preprocessed", "results"):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    lists = {}
    for name, cases in (("train", CASES[:5]), ("val", CASES[5:6]), ("test", CASES[6:])):
        lists[name] = tmp_path / f"{name}.txt"
        lists[name].write_text("\n".join(cases) + "\n")
    return tmp_path, lists


def test_case_lists_command(dataset, capsys):
    root, lists = dataset
    argv = ["splits", "case-lists", "-d", "993", "--train", str(lists["train"]), "--val", str(lists["val"]),
            "--test", str(lists["test"])]
    assert cli.main(argv) == 0
    folder = root / "preprocessed" / "Dataset993_Lists"
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": CASES[:5], "val": CASES[5:6]}]
    assert (folder / "test_cases.txt").read_text().split() == CASES[6:]
    assert "fold 0 trains on 5 cases, validates on 1" in capsys.readouterr().out
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0


def test_case_lists_unknown_case_names_the_flag_and_writes_nothing(dataset, capsys):
    root, lists = dataset
    lists["test"].write_text("Brats18_case_7\nBrats18_not_there\n")
    assert cli.main(["splits", "case-lists", "-d", "993", "--train", str(lists["train"]), "--val",
                     str(lists["val"]), "--test", str(lists["test"])]) == 2
    err = capsys.readouterr().err
    assert "--test lists 1 case(s) that the dataset does not hold: Brats18_not_there" in err
    assert not (root / "preprocessed" / "Dataset993_Lists").exists()


def test_benchmark_needs_a_model(tmp_path, capsys):
    assert cli.main(["benchmark", "missing-modality", "-i", str(tmp_path), "--ref", str(tmp_path), "-o",
                     str(tmp_path / "o")]) == 2
    assert "name the model: -m MODEL_FOLDER, or -d DATASET" in capsys.readouterr().err
