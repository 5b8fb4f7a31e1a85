"""Tests for nnunetv2_ext.data.synthetic (tiny volumes, must stay fast)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunetv2_ext.data.synthetic import (
    _TAG_LABELED,
    MODALITIES,
    _synth_case,
    make_brats_like_dataset,
    make_unlabeled_images,
)
from tests.data.test_raw_dataset import assert_plain_mkdir_mode, umask

SHAPE = (32, 32, 32)
KW = dict(n_train=3, n_test=1, shape=SHAPE)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _case(folder, split, case):
    images = [_read(folder / f"images{split}" / f"{case}_{i:04d}.nii.gz") for i in range(len(MODALITIES))]
    return np.stack(images), _read(folder / f"labels{split}" / f"{case}.nii.gz")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_brats_like_dataset(tmp_path_factory.mktemp("raw"), seed=3, **KW)


def test_layout_and_dataset_json(dataset):
    assert dataset.name == "Dataset991_SyntheticBraTS"
    cases = [f"SynBraTS_{k:03d}" for k in range(4)]
    tr = sorted(p.name for p in (dataset / "imagesTr").iterdir())
    assert tr == [f"{c}_{i:04d}.nii.gz" for c in cases[:3] for i in range(4)]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases[:3]]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == \
        [f"SynBraTS_003_{i:04d}.nii.gz" for i in range(4)]
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == ["SynBraTS_003.nii.gz"]
    assert not [p for p in dataset.parent.iterdir() if "partial" in p.name]  # staging folder renamed away
    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
    assert dj["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                            "enhancing tumor": [3]}
    assert dj["regions_class_order"] == [1, 2, 3]
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert "synthetic" in dj["description"].lower() and "not brats" in dj["description"].lower()
    img = sitk.ReadImage(str(dataset / "imagesTr" / "SynBraTS_000_0000.nii.gz"))
    lab = sitk.ReadImage(str(dataset / "labelsTr" / "SynBraTS_000.nii.gz"))
    assert img.GetPixelID() == sitk.sitkFloat32 and lab.GetPixelID() == sitk.sitkUInt8


def test_nnunet_verify_dataset_integrity(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset), 1)  # raises on any problem


def test_labels_nested_and_inside_brain(dataset):
    for split, case in [("Tr", f"SynBraTS_{k:03d}") for k in range(3)] + [("Ts", "SynBraTS_003")]:
        images, lab = _case(dataset, split, case)
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        tumour = lab > 0
        assert tumour.mean() >= 0.005, case
        assert (lab == 3).any() and (lab == 1).any(), case
        assert np.all(images[:, tumour] > 0), "tumour outside the brain"
        # necrosis (2) and enhancing (3) are strictly interior: 6-neighbourhood inside TC resp. WT
        assert not np.any((lab == 2) & ~ndimage.binary_erosion(lab >= 2)), case
        assert not np.any((lab == 3) & ~ndimage.binary_erosion(tumour)), case


def test_contrast_signatures(dataset):
    t1_means = []
    for k in range(3):
        case = f"SynBraTS_{k:03d}"
        images, lab = _case(dataset, "Tr", case)
        generated, glab, tissue = _synth_case(3, _TAG_LABELED, k, SHAPE, MODALITIES, tumour=True)
        np.testing.assert_array_equal(glab, lab)  # helper regenerates exactly what was written
        np.testing.assert_array_equal(generated["FLAIR"], images[3])
        t1, t1gd, t2, flair = images
        normal = (tissue > 0) & (lab == 0)
        assert flair[lab == 1].mean() > flair[normal].mean() + 3 * flair[normal & (tissue == 3)].std()
        assert t2[lab == 1].mean() > t2[normal].mean()
        assert t1gd[lab == 3].mean() > t1gd[lab == 1].mean() + 3 * t1gd[normal & (tissue == 3)].std()
        def core(t):  # avoid partial-volume edges
            return ndimage.binary_erosion((tissue == t) & (lab == 0))

        t1_means.append([t1[core(t)].mean() / t1[normal].mean() for t in (1, 2, 3)])
        assert t2[core(1)].mean() > t2[core(2)].mean() > t2[core(3)].mean()
        assert flair[core(1)].mean() < flair[core(3)].mean()  # CSF suppressed
    csf, gm, wm = np.mean(t1_means, axis=0)
    assert wm > gm > csf


def test_determinism(tmp_path, dataset):
    again = make_brats_like_dataset(tmp_path, seed=3, **KW)
    other = make_brats_like_dataset(tmp_path, dataset_id=992, seed=4, **KW)
    for rel in ["imagesTr/SynBraTS_001_0002.nii.gz", "labelsTr/SynBraTS_001.nii.gz",
                "imagesTs/SynBraTS_003_0001.nii.gz"]:
        a, b, c = _read(dataset / rel), _read(again / rel), _read(other / rel)
        assert a.tobytes() == b.tobytes()
        assert a.tobytes() != c.tobytes()


def test_geometry_anisotropic(tmp_path):
    ds = make_brats_like_dataset(tmp_path, n_train=2, n_test=0, shape=(24, 32, 32), spacing=(2.0, 1.0, 1.0),
                                 modalities=("T2", "FLAIR"))
    files = sorted((ds / "imagesTr").glob("SynBraTS_000_*.nii.gz")) + [ds / "labelsTr" / "SynBraTS_000.nii.gz"]
    assert len(files) == 3
    imgs = [sitk.ReadImage(str(f)) for f in files]
    for img in imgs:
        assert img.GetSpacing() == (1.0, 1.0, 2.0)
        assert img.GetOrigin() == imgs[0].GetOrigin() and img.GetDirection() == imgs[0].GetDirection()
        assert sitk.GetArrayFromImage(img).shape == (24, 32, 32)
    assert json.loads((ds / "dataset.json").read_text())["channel_names"] == {"0": "T2", "1": "FLAIR"}


def test_without_labels(tmp_path):
    ds = make_brats_like_dataset(tmp_path, n_train=2, n_test=0, shape=(24, 24, 24), with_labels=False)
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "foreground": 1} and "regions_class_order" not in dj
    for p in (ds / "labelsTr").iterdir():  # brain masks: foreground inside the head only
        label, t1 = _read(p), _read(ds / "imagesTr" / p.name.replace(".nii.gz", "_0000.nii.gz"))
        assert set(np.unique(label)) == {0, 1} and not t1[label == 0].any() and (t1[label == 1] > 0).mean() > 0.99


def test_overwrite_rules(tmp_path):
    kw = dict(n_train=2, n_test=0, shape=(24, 24, 24))
    ds = make_brats_like_dataset(tmp_path, **kw)
    (ds / "marker.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_brats_like_dataset(tmp_path, **kw)
    assert (ds / "marker.txt").exists()
    assert make_brats_like_dataset(tmp_path, overwrite=True, **kw) == ds
    assert not (ds / "marker.txt").exists() and (ds / "dataset.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == [ds.name]  # no leftover staging folders


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(8, 8, 8)), "24"),
    (dict(n_train=1), "n_train"),
    (dict(modalities=("T1", "T3")), "T3"),
    (dict(modalities=()), "modalities"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(dataset_id=1000), "dataset id"),
])
def test_validation(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_brats_like_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_unlabeled_images(tmp_path):
    out = make_unlabeled_images(tmp_path / "ukb", n_cases=2, shape=(24, 24, 24), seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["UKB_000", "UKB_001"]
    assert sorted(p.name for p in (out / "UKB_001").iterdir()) == ["UKB_001_FLAIR.nii.gz", "UKB_001_T1.nii.gz"]
    flair = _read(out / "UKB_000" / "UKB_000_FLAIR.nii.gz")
    _, label, tissue = _synth_case(1, 1, 0, (24, 24, 24), ("FLAIR",), tumour=False)
    assert not label.any() and set(np.unique(tissue)) == {0, 1, 2, 3}
    brain = tissue > 0
    assert np.all(flair[~brain] == 0) and np.all(flair[brain] > 0)
    # healthy: no tumour-like FLAIR hyperintensity (edema would be ~2x the brain mean)
    assert np.percentile(flair[brain], 99.5) < 1.6 * flair[brain].mean()
    with pytest.raises(FileExistsError, match="overwrite"):
        make_unlabeled_images(out, n_cases=1, shape=(24, 24, 24))
    make_unlabeled_images(out, n_cases=1, shape=(24, 24, 24), modalities=("T2",), overwrite=True)
    assert [p.name for p in (out / "UKB_000").iterdir()] == ["UKB_000_T2.nii.gz"] and not (out / "UKB_001").exists()
    with pytest.raises(ValueError, match="n_cases"):
        make_unlabeled_images(tmp_path / "x", n_cases=0, shape=(24, 24, 24))


def test_outputs_have_the_mode_of_a_plain_mkdir(tmp_path):
    """``example-data``'s dataset and the unlabeled scans folder are group-readable, not 0o700 (issue 17)."""
    with umask(0o002):
        ds = make_brats_like_dataset(tmp_path / "raw", n_train=2, n_test=0, shape=(24, 24, 24),
                                     modalities=("T1",))
        scans = make_unlabeled_images(tmp_path / "ukb", n_cases=1, shape=(24, 24, 24), modalities=("T1",))
    assert_plain_mkdir_mode(ds, 0o002)
    assert_plain_mkdir_mode(scans, 0o002)
