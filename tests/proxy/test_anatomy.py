"""Tests for nnunetv2_ext.proxy.anatomy at coarse resolutions (6 mm files, 3 mm for the contrasts) and tiny counts."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_ext.proxy.anatomy import (
    CLASSES,
    MANIFEST,
    PRETRAIN_MODALITIES,
    TARGET_MODALITIES,
    TUMOUR_CLASSES,
    ProxySpec,
    jacobian_determinant,
    load_anatomy,
    make_proxy,
    mass_effect,
    random_deformation,
    synthesize_case,
)
from tests.data.test_raw_dataset import assert_plain_mkdir_mode, umask

SPEC = ProxySpec(seed=3, resolution=6.0, n_pretrain=2, n_target=2, n_test=1, pretrain_id=611, target_id=612)
# Written out here rather than imported, so that a wrong constant in the module cannot agree with itself.
BRATS_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
FULL = np.ones((3, 3, 3), bool)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("proxy")
    return out, make_proxy(out, SPEC)


def _dataset(out: Path, manifest: dict, key: str) -> Path:
    return out / "nnUNet_raw" / manifest[key]


def test_same_seed_same_case_other_seed_differs():
    a, b = synthesize_case(SPEC, "target", 1), synthesize_case(SPEC, "target", 1)
    for m in TARGET_MODALITIES:
        assert a["images"][m].dtype == np.float32 and a["images"][m].tobytes() == b["images"][m].tobytes()
    assert a["label"].dtype == np.uint8 and a["label"].tobytes() == b["label"].tobytes()
    other = synthesize_case(replace(SPEC, seed=4), "target", 1)
    assert not np.array_equal(a["label"], other["label"])
    assert not np.array_equal(a["images"]["T1"], other["images"]["T1"])
    assert not np.array_equal(a["images"]["T1"], synthesize_case(SPEC, "test", 1)["images"]["T1"])


def test_case_depends_only_on_seed_cohort_index(proxy):
    out, manifest = proxy
    case = synthesize_case(replace(SPEC, n_pretrain=7, n_target=1, n_test=5, target_id=5), "target", 1)
    folder = _dataset(out, manifest, "target_dataset")
    assert np.array_equal(_read(folder / "labelsTr" / f"{manifest['target_train_cases'][1]}.nii.gz"), case["label"])
    for channel, m in enumerate(TARGET_MODALITIES):
        written = _read(folder / "imagesTr" / f"{manifest['target_train_cases'][1]}_{channel:04d}.nii.gz")
        assert np.array_equal(written, case["images"][m])


def test_pool_and_overwrite(proxy, tmp_path):
    out, manifest = proxy
    assert make_proxy(tmp_path, SPEC, num_processes=2) == manifest
    assert _digest(tmp_path / "nnUNet_raw") == _digest(out / "nnUNet_raw")
    other = make_proxy(tmp_path, replace(SPEC, seed=5), overwrite=True)
    assert json.loads((tmp_path / MANIFEST).read_text())["spec"]["seed"] == other["spec"]["seed"] == 5
    assert _digest(tmp_path / "nnUNet_raw") != _digest(out / "nnUNet_raw")
    assert sorted(p.name for p in (tmp_path / "nnUNet_raw").iterdir()) == sorted(
        [manifest["pretrain_dataset"], manifest["target_dataset"]])  # no partial or old folders left


def test_label_nesting_and_tumour_inside_brain():
    for cohort, index in [("target", i) for i in range(4)] + [("test", i) for i in range(2)]:
        case = synthesize_case(SPEC, cohort, index)
        label, brain = case["label"], case["brain"]
        wt, tc, et, nec = label > 0, np.isin(label, (2, 3)), label == 3, label == 2
        assert set(np.unique(label)) <= {0, 1, 2, 3}
        assert wt.any() and tc.any() and et.any(), (cohort, index)
        assert not (wt & ~brain).any()
        assert not (ndimage.binary_dilation(nec, FULL) & ~tc).any(), "necrosis must be surrounded by enhancing tumour"
        assert not (ndimage.binary_dilation(tc, FULL) & brain & ~wt).any(), "the core must be surrounded by edema"
        assert (wt & ~tc).any()


def test_healthy_cohort_has_two_modalities_and_brain_label():
    case = synthesize_case(SPEC, "pretrain", 0)
    assert tuple(case["images"]) == PRETRAIN_MODALITIES
    assert np.array_equal(case["label"], case["brain"].astype(np.uint8))


def test_background_zero_and_probabilities():
    case = synthesize_case(SPEC, "test", 0)
    brain = case["brain"]
    for image in case["images"].values():
        assert np.all(image[~brain] == 0) and np.all(image[brain] > 0) and np.isfinite(image).all()
    fractions, label = case["fractions"], case["label"]
    assert fractions.shape == (len(CLASSES), *brain.shape) and fractions.min() >= 0
    assert np.allclose(fractions.sum(0)[brain], 1, atol=1e-5) and np.all(fractions[:, ~brain] == 0)
    for k, name in enumerate(("csf", "gm", "wm")):
        assert np.array_equal(case["tissue"][name], fractions[k])
    tumour = fractions[CLASSES.index(TUMOUR_CLASSES[0]):].sum(0)
    core = ndimage.binary_erosion(label >= 2, FULL, iterations=2)
    assert core.any() and np.all(tumour[core] > 0.999), "deep in the core there is no normal tissue"
    border = ndimage.binary_dilation(label > 0, FULL) & (label == 0) & brain
    assert np.all(tumour[border] < 0.5) and np.mean(tumour[border] > 0.01) > 0.5, "partial volume at the border"
    assert np.mean(fractions[:3].sum(0)[label == 1] > 0.05) > 0.5, "the edema fades into the tissue it invades"
    anatomy = load_anatomy(SPEC.resolution)
    assert anatomy["spacing"] == (6.0, 6.0, 6.0) and not anatomy["gm"].flags.writeable
    assert np.allclose((anatomy["csf"] + anatomy["gm"] + anatomy["wm"])[anatomy["brain"]], 1, atol=1e-5)
    assert 1500 < anatomy["brain"].sum() * 6.0 ** 3 / 1000 < 2200  # the MNI152 brain mask holds ~1.9 l


def test_tissue_ordering_and_tumour_signatures():
    spec = replace(SPEC, resolution=3.0)  # at 6 mm hardly any voxel is pure CSF
    for cohort, index in (("target", 0), ("test", 1), ("pretrain", 1)):
        case = synthesize_case(spec, cohort, index)
        label, tissue = case["label"] * (cohort != "pretrain"), case["tissue"]
        mean = {}
        for m, image in case["images"].items():
            regions = {k: (p > 0.9) & (label == 0) for k, p in tissue.items()}
            regions.update(edema=label == 1, necrosis=label == 2, enhancing=label == 3)
            assert all(r.sum() >= 10 for k, r in regions.items() if k in tissue), cohort
            mean[m] = {k: image[r].mean() for k, r in regions.items() if r.any()}
        assert mean["T1"]["wm"] > mean["T1"]["gm"] > mean["T1"]["csf"]
        assert mean["FLAIR"]["csf"] < min(mean["FLAIR"]["gm"], mean["FLAIR"]["wm"])
        if cohort == "pretrain":
            continue
        assert mean["T2"]["csf"] > mean["T2"]["gm"] > mean["T2"]["wm"]
        for m in ("FLAIR", "T2"):
            assert mean[m]["edema"] > max(mean[m]["wm"], mean[m]["gm"]), m
        assert mean["T1"]["edema"] < mean["T1"]["wm"]
        # the enhancing tumour overlaps white matter on T1Gd (both bright) but enhances relative to it
        assert mean["T1Gd"]["enhancing"] == max(v for k, v in mean["T1Gd"].items() if k != "wm")
        gain = {m: mean[m]["enhancing"] / mean[m]["wm"] for m in ("T1", "T1Gd")}
        assert gain["T1Gd"] > 1.2 * gain["T1"], gain
        assert mean["T1"]["enhancing"] < mean["T1"]["wm"]
        assert mean["T1Gd"]["necrosis"] < min(mean["T1Gd"]["enhancing"], mean["T1Gd"]["wm"])
        assert mean["T2"]["necrosis"] > mean["T2"]["wm"]


def test_geometry_identical_across_channels_and_label(proxy):
    out, manifest = proxy
    anatomy = load_anatomy(SPEC.resolution)
    for key, case, n in (("pretrain_dataset", manifest["pretrain_cases"][0], 2),
                         ("target_dataset", manifest["test_cases"][0], 4)):
        folder = _dataset(out, manifest, key)
        files = [folder / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(n)]
        files.append(folder / "labelsTr" / f"{case}.nii.gz")
        for f in files:
            img = sitk.ReadImage(str(f))
            assert img.GetSize() == anatomy["brain"].shape[::-1]
            assert np.allclose(img.GetSpacing(), (6.0, 6.0, 6.0))
            assert np.allclose(img.GetOrigin(), anatomy["origin"])
            assert np.allclose(img.GetDirection(), np.eye(3).ravel())
        assert sitk.ReadImage(str(files[-1])).GetPixelID() == sitk.sitkUInt8


def test_anatomy_sits_at_its_mni_world_coordinates():
    """The anatomy grid's LPS world box of the brain is the template's RAS box with x and y negated."""
    import nilearn.datasets

    mask = nilearn.datasets.load_mni152_brain_mask(resolution=1)
    ijk = np.argwhere(mask.get_fdata() > 0.5)
    ras = mask.affine[:3, :3] @ np.array([ijk.min(0), ijk.max(0)]).T + mask.affine[:3, 3:4]
    lps = np.sort(ras * np.array([[-1], [-1], [1]]), axis=1)
    anatomy = load_anatomy(3.0)  # cached by the contrast test
    zyx = np.argwhere(anatomy["brain"])
    world = np.array(anatomy["origin"])[:, None] + 3.0 * np.array([zyx.min(0), zyx.max(0)]).T[::-1]
    assert np.allclose(world, lps, atol=3.0)


@pytest.mark.parametrize("seed", range(3))
def test_deformations_have_positive_jacobian(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 36, 30)
    coords = random_deformation(rng, shape, 4.0)
    assert coords.shape == (3, *shape) and coords.dtype == np.float32
    assert jacobian_determinant(coords).min() > 0
    assert not np.allclose(coords, np.indices(shape))
    pushed = mass_effect(coords, np.array(shape) / 2, radius_vox=10.0, strength=0.6)
    assert jacobian_determinant(pushed).min() > 0
    assert not np.array_equal(pushed, coords)
    with pytest.raises(ValueError, match="strength"):
        mass_effect(coords, np.array(shape) / 2, 10.0, 1.0)


def test_datasets_pass_nnunet_integrity_check(proxy):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    out, manifest = proxy
    for key in ("pretrain_dataset", "target_dataset"):
        verify_dataset_integrity(str(_dataset(out, manifest, key)), num_processes=1)


def test_dataset_json_and_manifest(proxy):
    out, manifest = proxy
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["spec"] == {**SPEC.__dict__}
    assert manifest["pretrain_dataset"] == "Dataset611_ProxyPretrain"
    assert manifest["target_dataset"] == "Dataset612_ProxyTarget"
    assert manifest["pretrain_cases"] == ["ProxyPretrain_000", "ProxyPretrain_001"]
    assert manifest["target_train_cases"] == ["ProxyTarget_train_000", "ProxyTarget_train_001"]
    assert manifest["test_cases"] == ["ProxyTarget_test_000"]
    assert not set(manifest["target_train_cases"]) & set(manifest["test_cases"])
    for key, cases, n in (("pretrain_dataset", manifest["pretrain_cases"], 2),
                          ("target_dataset", manifest["target_train_cases"] + manifest["test_cases"], 4)):
        folder = _dataset(out, manifest, key)
        assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(
            f"{c}_{i:04d}.nii.gz" for c in cases for i in range(n))
        assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in cases)
        assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    pretrain_json = json.loads((_dataset(out, manifest, "pretrain_dataset") / "dataset.json").read_text())
    assert pretrain_json["channel_names"] == {"0": "T1", "1": "FLAIR"}
    assert pretrain_json["labels"] == {"background": 0, "foreground": 1} and pretrain_json["numTraining"] == 2
    assert "not real data" in pretrain_json["description"]
    target_json = json.loads((_dataset(out, manifest, "target_dataset") / "dataset.json").read_text())
    assert target_json["channel_names"] == {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
    assert target_json["labels"] == BRATS_LABELS and target_json["regions_class_order"] == [1, 2, 3]
    assert target_json["numTraining"] == 3 and target_json["file_ending"] == ".nii.gz"
    assert "NOT BraTS" in target_json["description"] and "MNI152" in target_json["description"]
    assert set(manifest["tumour_volumes_ml"]) == set(manifest["target_train_cases"] + manifest["test_cases"])
    for case, volumes in manifest["tumour_volumes_ml"].items():
        label = _read(_dataset(out, manifest, "target_dataset") / "labelsTr" / f"{case}.nii.gz")
        voxel_ml = 6.0 ** 3 / 1000
        assert volumes == pytest.approx({"WT": (label > 0).sum() * voxel_ml, "TC": (label >= 2).sum() * voxel_ml,
                                         "ET": (label == 3).sum() * voxel_ml})
        assert volumes["WT"] > volumes["TC"] > volumes["ET"] > 0


def test_refuses_to_overwrite(proxy, tmp_path):
    out, manifest = proxy
    before = _digest(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_proxy(out, SPEC)
    assert _digest(out) == before
    assert not [p for p in (out / "nnUNet_raw").iterdir() if p.name.startswith(".")]
    (tmp_path / MANIFEST).write_text("{}")  # a manifest alone also blocks
    with pytest.raises(FileExistsError, match=MANIFEST):
        make_proxy(tmp_path, SPEC)
    assert not (tmp_path / "nnUNet_raw").exists() or not any((tmp_path / "nnUNet_raw").iterdir())


@pytest.mark.parametrize("change", [dict(n_pretrain=1), dict(n_target=0), dict(n_test=0), dict(resolution=0.5),
                                    dict(resolution=9.0), dict(pretrain_id=0), dict(target_id=1000),
                                    dict(target_id=611), dict(seed=-1), dict(n_target=2.5),
                                    dict(pretrain_name="bad name")])
def test_bad_spec_values(tmp_path, change):
    with pytest.raises(ValueError):
        make_proxy(tmp_path / "out", replace(SPEC, **change))
    assert not (tmp_path / "out" / "nnUNet_raw").exists() or not any((tmp_path / "out" / "nnUNet_raw").iterdir())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_processes"):
        make_proxy("unused", SPEC, num_processes=0)
    with pytest.raises(ValueError, match="cohort"):
        synthesize_case(SPEC, "validation", 0)
    with pytest.raises(ValueError, match="index"):
        synthesize_case(SPEC, "target", -1)
    with pytest.raises(ValueError, match="resolution"):
        load_anatomy(0.5)


def test_missing_nilearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(ImportError, match=r"pip install 'nnunetv2-ext\[proxy\]'"):
        load_anatomy(7.25)  # a resolution not cached by other tests


def test_datasets_have_the_mode_of_a_plain_mkdir(tmp_path):
    """``proxy make``'s datasets are group-readable under the caller's umask, not 0o700 (issue 17)."""
    with umask(0o002):
        manifest = make_proxy(tmp_path, replace(SPEC, n_target=1))
    for key in ("pretrain_dataset", "target_dataset"):
        assert_plain_mkdir_mode(_dataset(tmp_path, manifest, key), 0o002)
