"""Bad input through the ``nnunetv2_ext`` command (issue 19): a clear error naming the flag, exit code 2, nothing
written, the input untouched. Tiny synthetic NIfTI, no training."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
