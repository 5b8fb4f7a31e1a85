"""Tests for nnunetv2_ext.data.brats on tiny fake BraTS folders (24^3 random volumes) of both layouts."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.data.brats import convert_brats, detect_layout, to_brats_labels
from tests.data.test_raw_dataset import assert_plain_mkdir_mode, umask

SHAPE = (24, 24, 24)  # numpy (z, y, x)
SPACING = (1.0, 1.25, 1.5)  # SimpleITK (x, y, z); exact in the float32 NIfTI header
ORIGIN = (-12.0, 4.0, 7.5)
DIRECTION = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
# Written out here rather than imported, so that a wrong table in the module cannot agree with itself.
SPEC = {
    "2021": dict(sep="_", modalities=("t1", "t1ce", "t2", "flair"), labels=(0, 1, 2, 4),
                 to_nnunet={0: 0, 1: 2, 2: 1, 4: 3}, case=lambda k: f"BraTS2021_{k:05d}"),
    "gli": dict(sep="-", modalities=("t1n", "t1c", "t2w", "t2f"), labels=(0, 1, 2, 3),
                to_nnunet={0: 0, 1: 2, 2: 1, 3: 3}, case=lambda k: f"BraTS-GLI-{k:05d}-000"),
}


def _write(array: np.ndarray, path: Path, spacing=SPACING) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(path), useCompression=True)


def _path(root: Path, layout: str, k: int, suffix: str) -> Path:
    spec = SPEC[layout]
    case = spec["case"](k)
    return root / case / f"{case}{spec['sep']}{suffix}.nii.gz"


def make_fake_brats(root: Path, layout: str, n: int = 2, seed: int = 0) -> Path:
    """``n`` cases of random float32 images and a uint8 segmentation holding every label of the layout."""
    rng = np.random.default_rng(seed)
    spec = SPEC[layout]
    for k in range(n):
        _path(root, layout, k, "seg").parent.mkdir(parents=True)
        for m in spec["modalities"]:
            _write(rng.normal(size=SHAPE).astype(np.float32), _path(root, layout, k, m))
        seg = rng.choice(np.array(spec["labels"], dtype=np.uint8), size=SHAPE)
        seg.flat[:len(spec["labels"])] = spec["labels"]
        _write(seg, _path(root, layout, k, "seg"))
    return root


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(params=["2021", "gli"])
def fake(request, tmp_path):
    return request.param, make_fake_brats(tmp_path / f"brats_{request.param}", request.param)


def test_detect_layout(fake):
    layout, root = fake
    assert detect_layout(root) == layout


def test_detect_layout_neither_or_mixed(tmp_path):
    (tmp_path / "plain" / "subject1").mkdir(parents=True)
    (tmp_path / "plain" / "subject1" / "anat.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="subject1/anat.nii.gz"):
        detect_layout(tmp_path / "plain")
    make_fake_brats(tmp_path / "mixed", "2021", n=1)
    make_fake_brats(tmp_path / "mixed", "gli", n=1)
    with pytest.raises(ValueError, match=r"mixes.*BraTS2021_00000 \(2021\), BraTS-GLI-00000-000 \(gli\)"):
        detect_layout(tmp_path / "mixed")


def test_convert_known_answer(fake, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    layout, root = fake
    spec = SPEC[layout]
    before = _hashes(root)
    folder, report = convert_brats(root, tmp_path / "raw", dataset_id=137, name="BraTS")
    assert _hashes(root) == before
    assert folder == tmp_path / "raw" / "Dataset137_BraTS"
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [folder.name]  # staging folder renamed away
    cases = [spec["case"](k) for k in range(2)]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_{i:04d}.nii.gz" for c in cases
                                                                        for i in range(4)]
    for k, case in enumerate(cases):
        for i, m in enumerate(spec["modalities"]):  # channel order T1, T1Gd, T2, FLAIR; bytes unchanged
            assert (folder / "imagesTr" / f"{case}_{i:04d}.nii.gz").read_bytes() == \
                _path(root, layout, k, m).read_bytes()
        src = sitk.ReadImage(str(_path(root, layout, k, "seg")))
        out = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        expected = np.vectorize(spec["to_nnunet"].get)(sitk.GetArrayFromImage(src))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected)
        assert np.array_equal(np.unique(expected), [0, 1, 2, 3])
        assert (out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == (SPACING, ORIGIN, DIRECTION)
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
    assert dj["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                            "enhancing tumor": [3]}
    assert dj["regions_class_order"] == [1, 2, 3]
    assert dj["brats_layout"] == layout and dj["numTraining"] == 2 and dj["file_ending"] == ".nii.gz"
    assert report.layout == layout and report.converted == cases and report.skipped == {}
    assert json.loads((folder / "conversion_report.json").read_text()) == report.to_dict()
    if layout == "gli":  # nnU-Net's own check (spawns workers that import torch: once is enough)
        verify_dataset_integrity(str(folder), 1)


def test_parallel_matches_serial(tmp_path, capsys):
    root = make_fake_brats(tmp_path / "in", "gli", n=3)
    serial, _ = convert_brats(root, tmp_path / "a", dataset_id=5, name="S")
    parallel, report = convert_brats(root, tmp_path / "b", dataset_id=5, name="S", num_processes=2, progress=True)
    assert "Dataset005_S" in capsys.readouterr().err  # tqdm bar on stderr
    assert _hashes(parallel / "imagesTr") == _hashes(serial / "imagesTr")
    for f in (serial / "labelsTr").iterdir():
        np.testing.assert_array_equal(_read(parallel / "labelsTr" / f.name), _read(f))
    assert len(report.converted) == 3


def _make_bad(root: Path) -> dict[str, str]:
    """Six 2021 cases: 0 good, 1..5 each broken one way (label 5, no t2, size, spacing, unreadable).

    Returns case -> a regex its reason must match."""
    make_fake_brats(root, "2021", n=6)
    seg = _read(_path(root, "2021", 1, "seg"))
    seg[0, 0, 0] = 5
    _write(seg, _path(root, "2021", 1, "seg"))
    _path(root, "2021", 2, "t2").unlink()
    _write(np.zeros((24, 24, 28), np.float32), _path(root, "2021", 3, "flair"))
    _write(np.zeros((24, 24, 24), np.float32), _path(root, "2021", 4, "flair"), spacing=(1.0, 1.0, 1.0))
    _path(root, "2021", 5, "t1ce").write_bytes(b"not a nifti file")
    return {"BraTS2021_00001": r"BraTS2021_00001_seg.nii.gz: label value\(s\) \[5\]",
            "BraTS2021_00002": "missing file.*BraTS2021_00002_t2.nii.gz",
            "BraTS2021_00003": "geometry mismatch between BraTS2021_00003_t1.nii.gz and BraTS2021_00003_flair.nii.gz"
                               r": size \(24, 24, 24\) vs \(28, 24, 24\)",
            "BraTS2021_00004": "geometry mismatch between BraTS2021_00004_t1.nii.gz and BraTS2021_00004_flair.nii.gz"
                               r": spacing \(1.0, 1.25, 1.5\) vs \(1.0, 1.0, 1.0\)",
            "BraTS2021_00005": "unreadable file BraTS2021_00005_t1ce.nii.gz"}


def test_bad_cases_fail_and_leave_nothing(tmp_path):
    root = tmp_path / "in"
    expected = _make_bad(root)
    before = _hashes(root)
    with pytest.raises(ValueError, match="5 of 6 cases") as info:
        convert_brats(root, tmp_path / "raw")
    for case, fragment in expected.items():
        assert case in str(info.value)
        assert any(re.search(fragment, line) for line in str(info.value).splitlines()), fragment
    assert "BraTS2021_00000" not in str(info.value)
    assert list((tmp_path / "raw").iterdir()) == []
    assert _hashes(root) == before


def test_bad_cases_skipped_and_reported(tmp_path):
    root = tmp_path / "in"
    expected = _make_bad(root)
    folder, report = convert_brats(root, tmp_path / "raw", skip_bad=True, num_processes=2)
    assert report.converted == ["BraTS2021_00000"]
    assert sorted(report.skipped) == sorted(expected)
    assert json.loads((folder / "conversion_report.json").read_text())["skipped"] == report.skipped
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["BraTS2021_00000.nii.gz"]


def test_non_finite_voxels_are_a_bad_case(tmp_path):
    # a real file: ITK's NIfTI reader turns NaN/inf into 0, so the check must read the voxels with nibabel
    root = make_fake_brats(tmp_path / "in", "gli", n=2)
    flair = _path(root, "gli", 1, "t2f")
    array = _read(flair)
    array[3, 3, 3], array[4, 4, 4] = np.nan, np.inf
    _write(array, flair)
    before = _hashes(root)
    only_reason = (r"BraTS-GLI-00001-000: BraTS-GLI-00001-000-t2f.nii.gz: 2 NaN/inf voxel value\(s\) "
                   r"\(1 NaN, 1 inf\)$")
    with pytest.raises(ValueError, match=only_reason):
        convert_brats(root, tmp_path / "raw", name="GLI")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    folder, report = convert_brats(root, tmp_path / "raw", name="GLI", skip_bad=True)
    assert list(report.skipped) == ["BraTS-GLI-00001-000"] and report.converted == ["BraTS-GLI-00000-000"]
    assert _hashes(root) == before


def test_gli_rejects_resection_cavity(tmp_path):
    root = make_fake_brats(tmp_path / "in", "gli", n=1)
    seg = _read(_path(root, "gli", 0, "seg"))
    seg[1, 1, 1] = 4
    _write(seg, _path(root, "gli", 0, "seg"))
    with pytest.raises(ValueError, match=r"BraTS-GLI-00000-000-seg.nii.gz: label value\(s\) \[4\]"):
        convert_brats(root, tmp_path / "raw", name="GLI")


def test_existing_dataset_and_id_clash(tmp_path):
    root = make_fake_brats(tmp_path / "in", "2021", n=1)
    folder, _ = convert_brats(root, tmp_path / "raw")
    with pytest.raises(FileExistsError, match="Dataset137_BraTS2021.*--overwrite"):
        convert_brats(root, tmp_path / "raw")
    (folder / "stale.txt").write_text("x")
    assert convert_brats(root, tmp_path / "raw", overwrite=True)[0] == folder
    assert not (folder / "stale.txt").exists()
    with pytest.raises(ValueError, match="Dataset137_BraTS2021.*id 137"):
        convert_brats(root, tmp_path / "raw", name="Other")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["Dataset137_BraTS2021"]


def _as_predictions(folder: Path, dest: Path, with_json: bool = True) -> Path:
    """A folder shaped like nnU-Net's predictions: ``{case}.nii.gz`` plus a copy of dataset.json."""
    shutil.copytree(folder / "labelsTr", dest)
    if with_json:
        shutil.copyfile(folder / "dataset.json", dest / "dataset.json")
    return dest


def test_to_brats_labels_round_trip(fake, tmp_path):
    layout, root = fake
    folder, report = convert_brats(root, tmp_path / "raw")
    preds = _as_predictions(folder, tmp_path / "preds")
    written = to_brats_labels(preds, tmp_path / "back")
    assert [p.name for p in written] == [f"{c}.nii.gz" for c in report.converted]
    for k, case in enumerate(report.converted):
        src = sitk.ReadImage(str(_path(root, layout, k, "seg")))
        out = sitk.ReadImage(str(tmp_path / "back" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(src))
        assert out.GetPixelID() == src.GetPixelID()
        assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
            (src.GetSize(), src.GetSpacing(), src.GetOrigin(), src.GetDirection())
    # without dataset.json the layout comes from the argument; a conflicting argument is refused
    bare = _as_predictions(folder, tmp_path / "bare", with_json=False)
    with pytest.raises(ValueError, match="use --layout"):
        to_brats_labels(bare, tmp_path / "x")
    to_brats_labels(bare, tmp_path / "back2", layout=layout)
    assert _hashes(tmp_path / "back2") == _hashes(tmp_path / "back")
    other = "gli" if layout == "2021" else "2021"
    with pytest.raises(ValueError, match=f"records brats_layout '{layout}'"):
        to_brats_labels(preds, tmp_path / "x", layout=other)


def test_to_brats_labels_refusals(tmp_path):
    root = make_fake_brats(tmp_path / "in", "2021", n=2)
    folder, _ = convert_brats(root, tmp_path / "raw")
    preds = _as_predictions(folder, tmp_path / "preds")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        to_brats_labels(preds, out)
    assert len(to_brats_labels(preds, out, overwrite=True)) == 2
    assert (out / "keep.txt").exists()
    bad = preds / "BraTS2021_00001.nii.gz"
    seg = _read(bad)
    seg[0, 0, 0] = 7
    _write(seg, bad)
    with pytest.raises(ValueError, match=r"BraTS2021_00001.nii.gz: value\(s\) \[7\]"):
        to_brats_labels(preds, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_outputs_have_the_mode_of_a_plain_mkdir(tmp_path):
    """The converted dataset and a new predictions folder are group-readable, not 0o700 (issue 17)."""
    root = make_fake_brats(tmp_path / "in", "gli", n=1)
    with umask(0o002):
        folder, _ = convert_brats(root, tmp_path / "raw", name="GLI")
        to_brats_labels(_as_predictions(folder, tmp_path / "preds"), tmp_path / "back")
    assert_plain_mkdir_mode(folder, 0o002)
    assert_plain_mkdir_mode(tmp_path / "back", 0o002)
