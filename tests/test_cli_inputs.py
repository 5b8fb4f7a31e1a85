"""Bad input through the ``nnunetv2_ext`` command (issue 19): a clear error naming the flag, exit code 2, nothing
written, the input untouched. Tiny synthetic NIfTI, no training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_ext import cli
from tests.data.test_brats import _hashes, _path, _read, _write, make_fake_brats


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------------------------ example-data


def test_example_data_refuses_an_existing_dataset_id_of_another_name(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "Dataset137_BraTS2021" / "imagesTr").mkdir(parents=True)
    before = _listing(raw)
    argv = ["example-data", "--raw", str(raw), "--dataset-id", "137", "--n-train", "2", "--n-test", "0",
            "--shape", "24", "24", "24"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Dataset137_BraTS2021" in err and "--dataset-id" in err
    assert _listing(raw) == before
    assert cli.main([*argv, "--overwrite"]) == 2  # --overwrite replaces a dataset of the same name only
    assert _listing(raw) == before


# --------------------------------------------------------------------------------------------- brats convert


def test_brats_convert_names_and_refuses_non_finite_voxels(tmp_path, capsys):
    root = make_fake_brats(tmp_path / "in", "2021", n=2)
    flair = _path(root, "2021", 1, "flair")
    array = _read(flair)
    array[2, 2, 2] = np.nan
    _write(array, flair)
    before = _hashes(root)
    raw = tmp_path / "raw"
    argv = ["brats", "convert", "--input", str(root), "--raw", str(raw)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "BraTS2021_00001_flair.nii.gz: 1 NaN/inf voxel value(s)" in err and "--skip-bad" in err
    assert _listing(raw) == []
    assert cli.main([*argv, "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped BraTS2021_00001" in out
    (folder,) = raw.iterdir()
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"BraTS2021_00000_{i:04d}.nii.gz"
                                                                       for i in range(4)]
    assert _hashes(root) == before


# ------------------------------------------------------------------------------------------------------ plans


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    """$nnUNet_preprocessed with Dataset992_X holding nnU-Net's tiny plans and dataset.json."""
    from tests.conftest import write_tiny_preprocessed

    root = tmp_path / "preprocessed"
    folder = write_tiny_preprocessed(root / "Dataset992_X")
    monkeypatch.setenv("nnUNet_preprocessed", str(root))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)
    return folder


@pytest.mark.parametrize("arch", ["multi_encoder", "segresnet"])
def test_plans_never_replace_their_source(preprocessed, capsys, arch):
    before = _listing(preprocessed), (preprocessed / "nnUNetPlans.json").read_bytes()
    assert cli.main(["plans", "992", "--arch", arch, "--plans-name", "nnUNetPlans", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "source plans" in err and "--plans-name" in err
    assert (_listing(preprocessed), (preprocessed / "nnUNetPlans.json").read_bytes()) == before


@pytest.mark.parametrize("preset", ["brats_taheri2025", "brats_taheri2025.json", "plans/brats_taheri2025.json"])
def test_plans_preset_by_name_from_any_folder(preprocessed, tmp_path, monkeypatch, preset):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["plans", "992", "--preset", preset]) == 0
    config = json.loads((preprocessed / "nnUNetPlans_MultiEncoder.json").read_text())["configurations"]["3d_fullres"]
    assert config["patch_size"] == [96, 112, 80] and config["batch_size"] == 2


def test_plans_preset_file_of_ones_own_wins_and_unknown_names_are_listed(preprocessed, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "brats_taheri2025.json").write_text(json.dumps({"configurations": {"3d_fullres": {"batch_size": 3}}}))
    assert cli.main(["plans", "992", "--preset", "brats_taheri2025.json"]) == 0
    config = json.loads((preprocessed / "nnUNetPlans_MultiEncoder.json").read_text())["configurations"]["3d_fullres"]
    assert config["batch_size"] == 3
    assert cli.main(["plans", "992", "--preset", "no_such_preset", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "no_such_preset" in err and "brats_taheri2025" in err and "--list-presets" in err


def test_plans_list_presets(capsys):
    assert cli.main(["plans", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("brats_taheri2025: Multi-encoder nnU-Net") and "swin_unetr_taheri2025: " in out
    assert cli.main(["plans"]) == 2
    assert "--list-presets" in capsys.readouterr().err


def test_presets_ship_as_package_data():
    """setup.py's package_data names every shipped preset (else `pip install .` would leave them out)."""
    import ast
    import fnmatch

    from nnunetv2_ext.planning.presets import PRESET_DIR

    tree = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text())
    (data,) = [ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
               for k in node.keywords if k.arg == "package_data"]
    globs = data["nnunetv2_ext.planning"]
    shipped = sorted(p.name for p in PRESET_DIR.iterdir())
    assert "brats_taheri2025.json" in shipped
    assert all(any(fnmatch.fnmatch(f"presets/{name}", g) for g in globs) for name in shipped), (shipped, globs)
