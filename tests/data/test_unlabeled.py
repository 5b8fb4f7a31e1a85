"""Tests for nnunetv2_ext.data.unlabeled (tiny 32^3 volumes, a handful of cases)."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.data.synthetic import make_unlabeled_images
from nnunetv2_ext.data.unlabeled import find_cases, import_unlabeled_dataset, sanitise_case_id
from tests.data.test_raw_dataset import assert_plain_mkdir_mode, umask

SHAPE = (32, 32, 32)
SPACING = (1.2, 1.0, 0.9)  # numpy (z, y, x) order, as make_unlabeled_images takes it
MODS = ("T1", "FLAIR")
N_CASES = 4
CASES = [f"UKB_{k:03d}" for k in range(N_CASES)]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=None, direction=None) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Layout (a): source/UKB_000/UKB_000_T1.nii.gz, ..._FLAIR.nii.gz (never modified by any test)."""
    return make_unlabeled_images(tmp_path_factory.mktemp("src") / "ukb", N_CASES, shape=SHAPE, seed=0,
                                 modalities=MODS, spacing=SPACING)


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    before = _hashes(source)
    folder, report = import_unlabeled_dataset(source, tmp_path_factory.mktemp("raw"), 901, ["T1", "FLAIR"],
                                              name="UKB")
    return folder, report, before


# --------------------------------------------------------------------------------------------------- discovery


def test_find_cases_layout_a_variants(tmp_path):
    _touch(tmp_path, "sub-01/sub-01_FLAIR.nii.gz", "sub-01/t1.nii", "sub-01/sub-01_T1Gd.nii.gz",
           "sub-02/scan-T1.mha", "sub-02/.hidden_FLAIR.nii.gz", "sub-03/x_flair.nrrd", "sub-03/x_T1.nii.gz",
           "sub-03/x_T1.json", "notes/readme.txt")
    cases = find_cases(tmp_path, ["T1", "FLAIR"])
    assert list(cases) == ["sub-01", "sub-02", "sub-03"]  # 'notes' holds no image
    assert cases["sub-01"] == {"FLAIR": tmp_path / "sub-01/sub-01_FLAIR.nii.gz", "T1": tmp_path / "sub-01/t1.nii"}
    assert cases["sub-02"] == {"T1": tmp_path / "sub-02/scan-T1.mha"}  # FLAIR absent, still returned
    assert cases["sub-03"] == {"FLAIR": tmp_path / "sub-03/x_flair.nrrd", "T1": tmp_path / "sub-03/x_T1.nii.gz"}
    # the longest modality wins: T1Gd is not taken for T1
    assert find_cases(tmp_path, ["T1", "T1Gd"])["sub-01"] == {"T1": tmp_path / "sub-01/t1.nii",
                                                              "T1Gd": tmp_path / "sub-01/sub-01_T1Gd.nii.gz"}


def test_find_cases_flat_and_pattern(tmp_path):
    flat = tmp_path / "flat"
    _touch(flat, "A_1_T1.nii.gz", "A_1_FLAIR.nii.gz", "B_T1.nii.gz", "notes.txt")
    assert find_cases(flat, MODS) == {"A_1": {"T1": flat / "A_1_T1.nii.gz", "FLAIR": flat / "A_1_FLAIR.nii.gz"},
                                      "B": {"T1": flat / "B_T1.nii.gz"}}
    nested = tmp_path / "nested"
    _touch(nested, "p1/anat/p1_T1.nii.gz", "p1/anat/p1_FLAIR.nii.gz", "p2/anat/other_T1.nii.gz")
    assert find_cases(nested, MODS, pattern="{case}/anat/{case}_{modality}.nii.gz") == {
        "p1": {"T1": nested / "p1/anat/p1_T1.nii.gz", "FLAIR": nested / "p1/anat/p1_FLAIR.nii.gz"}}
    with pytest.raises(ValueError, match=r"\{case\} and \{modality\}"):
        find_cases(nested, MODS, pattern="{case}.nii.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_cases(tmp_path / "nope", MODS)


def test_find_cases_ambiguous(tmp_path):
    _touch(tmp_path, "c1/c1_T1.nii.gz", "c1_T1.nii.gz")
    with pytest.raises(ValueError, match="ambiguous.*pattern"):
        find_cases(tmp_path, MODS)
    dup = tmp_path / "dup"
    _touch(dup, "c1/a_T1.nii.gz", "c1/b_t1.nii.gz")
    with pytest.raises(ValueError, match="c1.*more than one file for modality T1"):
        find_cases(dup, MODS)


def test_sanitise_case_id():
    assert sanitise_case_id("sub-01_a") == "sub-01_a"
    assert sanitise_case_id("UKB 1.2/x") == "UKB_1_2_x"


# --------------------------------------------------------------------------------------------------- import


def test_layout_a_dataset(imported, source):
    folder, report, before = imported
    assert folder.name == "Dataset901_UKB"
    assert report.written == CASES and report.skipped == {}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_{i:04d}.nii.gz" for c in CASES
                                                                       for i in range(2)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in CASES]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # staging renamed away
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert dj["labels"] == {"background": 0, "foreground": 1}
    assert dj["numTraining"] == N_CASES and dj["file_ending"] == ".nii.gz"
    assert "foreground masks" in dj["description"] and "self-supervised" in dj["description"]
    saved = json.loads((folder / "import_report.json").read_text())
    assert saved["written"] == CASES and saved["skipped"] == {} and saved["modalities"] == ["T1", "FLAIR"]
    for c in CASES:  # .nii.gz inputs are copied byte for byte, in modality order
        for i, m in enumerate(MODS):
            assert (folder / "imagesTr" / f"{c}_{i:04d}.nii.gz").read_bytes() == \
                   (source / c / f"{c}_{m}.nii.gz").read_bytes()
        label, image = _read(folder / "labelsTr" / f"{c}.nii.gz"), _read(source / c / f"{c}_T1.nii.gz")
        # the label is the T1 scan's foreground (voxels above its minimum): nnU-Net's fingerprint needs foreground
        voxels = sitk.GetArrayViewFromImage(image)
        assert label.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayViewFromImage(label), (voxels > voxels.min()).astype(np.uint8))
        assert 0 < sitk.GetArrayViewFromImage(label).mean() < 1
        assert label.GetSize() == image.GetSize() == SHAPE[::-1]
        assert np.allclose(label.GetSpacing(), SPACING[::-1]) and label.GetOrigin() == image.GetOrigin()
        assert label.GetDirection() == image.GetDirection()
    assert _hashes(source) == before


def test_nnunet_verify_dataset_integrity(imported):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(imported[0]), 1)  # raises on any problem


def test_flat_layout(source, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for c in CASES[:3]:
        for m in MODS:
            shutil.copyfile(source / c / f"{c}_{m}.nii.gz", flat / f"{c}_{m}.nii.gz")
    before = _hashes(flat)
    folder, report = import_unlabeled_dataset(flat, tmp_path / "raw", 902, MODS)
    assert folder.name == "Dataset902_Unlabeled" and report.written == CASES[:3]
    assert (folder / "imagesTr" / "UKB_002_0001.nii.gz").read_bytes() == (flat / "UKB_002_FLAIR.nii.gz").read_bytes()
    assert _hashes(flat) == before


def test_explicit_pattern_converts_and_sanitises(source, tmp_path):
    """'{case}-{modality}.nii' inputs are converted (same voxels and geometry), 'sub 1' becomes 'sub_1'."""
    src = tmp_path / "src"
    src.mkdir()
    origin, direction = (10.0, -5.0, 3.5), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    arrays = {}
    for k, case in enumerate(["sub 1", "sub-2"]):
        for m in MODS:
            arrays[case, m] = sitk.GetArrayFromImage(_read(source / CASES[k] / f"{CASES[k]}_{m}.nii.gz"))
            _write(src / f"{case}-{m}.nii", arrays[case, m], (0.9, 1.0, 1.2), origin, direction)
    before = _hashes(src)
    folder, report = import_unlabeled_dataset(src, tmp_path / "raw", 903, ["FLAIR", "T1"], name="Pat",
                                              pattern="{case}-{modality}.nii")
    assert report.written == ["sub_1", "sub-2"] and report.renamed == {"sub 1": "sub_1"}
    for case, case_id in [("sub 1", "sub_1"), ("sub-2", "sub-2")]:
        for i, m in enumerate(["FLAIR", "T1"]):
            out = _read(folder / "imagesTr" / f"{case_id}_{i:04d}.nii.gz")
            np.testing.assert_array_equal(sitk.GetArrayFromImage(out), arrays[case, m])
            assert np.allclose(out.GetOrigin(), origin) and np.allclose(out.GetDirection(), direction)
        label = _read(folder / "labelsTr" / f"{case_id}.nii.gz")
        assert np.allclose(label.GetOrigin(), origin) and np.allclose(label.GetDirection(), direction)
        assert np.allclose(label.GetSpacing(), (0.9, 1.0, 1.2))
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "FLAIR", "1": "T1"}
    assert _hashes(src) == before
    # the explicit form of layout (a) finds the same files as auto-detection
    assert find_cases(source, MODS, pattern="{case}/{case}_{modality}.nii.gz") == find_cases(source, MODS)


def test_pool_and_progress(source, tmp_path, capsys):
    folder, report = import_unlabeled_dataset(source, tmp_path, 904, MODS, num_processes=2, progress=True)
    assert report.written == CASES and len(list((folder / "imagesTr").iterdir())) == 2 * N_CASES
    assert "Dataset904_Unlabeled" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- bad cases


def _break_flair(case_dir: Path, **kw) -> None:
    """Rewrite the FLAIR of a copied case with the T1's voxels and altered geometry or values."""
    t1 = next(case_dir.glob("*_T1.nii.gz"))
    flair = next(case_dir.glob("*_FLAIR.nii.gz"))
    img = _read(t1)
    array = sitk.GetArrayFromImage(img)
    if "array" in kw:
        array = kw.pop("array")(array)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(img) if out.GetSize() == img.GetSize() else out.SetSpacing(img.GetSpacing())
    for key, value in kw.items():
        getattr(out, f"Set{key.capitalize()}")(value)
    sitk.WriteImage(out, str(flair), useCompression=True)


def _nan(a):
    a = a.copy()
    a[3, 4, 5] = np.nan
    return a


BAD = {  # kind -> (how to break a copied case, substrings the reason must contain)
    "missing": (lambda d: next(d.glob("*_FLAIR.nii.gz")).unlink(), ["missing", "FLAIR"]),
    "garbage": (lambda d: next(d.glob("*_FLAIR.nii.gz")).write_bytes(b"not an image" * 50),
                ["cannot read FLAIR"]),
    "spacing": (lambda d: _break_flair(d, spacing=(0.9, 1.0, 1.5)),
                ["spacing", str(SPACING[::-1]), "(0.9, 1.0, 1.5)"]),
    "size": (lambda d: _break_flair(d, array=lambda a: a[:-2]), ["size", "(32, 32, 32)", "(32, 32, 30)"]),
    "origin": (lambda d: _break_flair(d, origin=(0.0, 0.0, 2.0)), ["origin", "(0.0, 0.0, 2.0)"]),
    "direction": (lambda d: _break_flair(d, direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)), ["direction"]),
    "nan": (lambda d: _break_flair(d, array=_nan), ["FLAIR", "1 NaN"]),
    "not3d": (lambda d: _write(next(d.glob("*_T1.nii.gz")), np.zeros((32, 32), np.float32)), ["T1", "not 3D"]),
}


def _folder_with(source: Path, root: Path, n_good: int, bad: list[str]) -> Path:
    folder = root / "in"
    for c in CASES[:n_good]:
        shutil.copytree(source / c, folder / c)
    for kind in bad:
        shutil.copytree(source / CASES[-1], folder / f"BAD_{kind}")
        BAD[kind][0](folder / f"BAD_{kind}")
    return folder


def test_bad_cases_skipped_with_reasons(source, tmp_path):
    folder = _folder_with(source, tmp_path, 2, list(BAD))
    before = _hashes(folder)
    out, report = import_unlabeled_dataset(folder, tmp_path / "raw", 905, MODS, skip_bad=True)
    assert report.written == CASES[:2]
    assert set(report.skipped) == {f"BAD_{kind}" for kind in BAD}
    for kind, (_, needles) in BAD.items():
        for needle in needles:
            assert needle in report.skipped[f"BAD_{kind}"], (kind, report.skipped[f"BAD_{kind}"])
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["skipped"] == report.skipped and saved["num_skipped"] == len(BAD)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in CASES[:2]]
    assert len(list((out / "imagesTr").iterdir())) == 4  # nothing of a bad case left behind
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 2
    assert _hashes(folder) == before


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_case_strict_raises_and_leaves_nothing(source, tmp_path, kind):
    folder = _folder_with(source, tmp_path, 2, [kind])
    before = _hashes(folder)
    raw = tmp_path / "raw"
    with pytest.raises(ValueError, match=f"BAD_{kind}") as err:
        import_unlabeled_dataset(folder, raw, 906, MODS, skip_bad=False)
    assert BAD[kind][1][0] in str(err.value)
    assert not raw.exists() or not list(raw.iterdir())  # no dataset, no partial folder
    assert _hashes(folder) == before


def test_too_few_valid_cases(source, tmp_path):
    one = _folder_with(source, tmp_path / "one", 1, ["nan"])
    with pytest.raises(ValueError, match="at least 2 valid cases.*found 1.*BAD_nan.*NaN"):
        import_unlabeled_dataset(one, tmp_path / "raw", 907, MODS)
    zero = _folder_with(source, tmp_path / "zero", 0, ["missing", "garbage"])
    with pytest.raises(ValueError, match="found 0.*BAD_garbage: cannot read.*BAD_missing: missing"):
        import_unlabeled_dataset(zero, tmp_path / "raw", 907, MODS)
    assert not list((tmp_path / "raw").iterdir())


def test_modality_absent_from_all_cases(source, tmp_path):
    with pytest.raises(ValueError, match="modality T2 was found in none of the 4 cases"):
        import_unlabeled_dataset(source, tmp_path, 908, ["T1", "T2"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found no case"):
        import_unlabeled_dataset(tmp_path / "empty", tmp_path / "raw", 908, MODS)


# --------------------------------------------------------------------------------------------------- target rules


def test_exists_overwrite_and_id_clash(source, tmp_path):
    folder, _ = import_unlabeled_dataset(source, tmp_path, 909, MODS, name="UKB")
    with pytest.raises(FileExistsError, match="overwrite"):
        import_unlabeled_dataset(source, tmp_path, 909, MODS, name="UKB")
    folder2, report = import_unlabeled_dataset(source, tmp_path, 909, ["FLAIR"], name="UKB", overwrite=True)
    assert folder2 == folder and report.written == CASES
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "FLAIR"}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in CASES]
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset909_UKB"]  # old copy and staging removed
    with pytest.raises(ValueError, match="Dataset909_UKB.*unique"):
        import_unlabeled_dataset(source, tmp_path, 909, MODS, name="Other")


def test_case_id_clash_and_bad_arguments(source, tmp_path):
    clash = tmp_path / "clash"
    shutil.copytree(source / CASES[0], clash / "a b")
    shutil.copytree(source / CASES[1], clash / "a_b")
    with pytest.raises(ValueError, match="'a b' and 'a_b' both become 'a_b'"):
        import_unlabeled_dataset(clash, tmp_path / "raw", 910, MODS)
    with pytest.raises(ValueError, match="overlap"):
        import_unlabeled_dataset(clash, clash, 910, MODS)
    inner = tmp_path / "raw2" / "Dataset911_In" / "src"
    shutil.copytree(clash, inner)
    with pytest.raises(ValueError, match="overlap"):  # overwrite would delete the input
        import_unlabeled_dataset(inner, tmp_path / "raw2", 911, MODS, name="In", overwrite=True)
    with pytest.raises(ValueError, match="dataset_id"):
        import_unlabeled_dataset(clash, tmp_path / "raw", 0, MODS)
    with pytest.raises(ValueError, match="name"):
        import_unlabeled_dataset(clash, tmp_path / "raw", 910, MODS, name="bad name")
    with pytest.raises(ValueError, match="unique"):
        import_unlabeled_dataset(clash, tmp_path / "raw", 910, ["T1", "t1"])
    with pytest.raises(FileNotFoundError, match="--images"):
        import_unlabeled_dataset(tmp_path / "missing", tmp_path / "raw", 910, MODS)


def test_dataset_has_the_mode_of_a_plain_mkdir(source, tmp_path):
    """Group-readable under the caller's umask (issue 17); also with overwrite, which replaces the folder."""
    with umask(0o002):
        folder, _ = import_unlabeled_dataset(source, tmp_path, 912, ["T1"], name="UKB")
    assert_plain_mkdir_mode(folder, 0o002)
    with umask(0o027):
        import_unlabeled_dataset(source, tmp_path, 912, ["T1"], name="UKB", overwrite=True)
    assert_plain_mkdir_mode(folder, 0o027)
