"""The overview picture: which slice it shows, the region colours, and the folder front end's errors."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.evaluation.overview import (
    REGION_COLOURS,
    case_dice,
    overlay,
    tumour_slice,
    write_overview_from_folders,
)


def test_tumour_slice_is_the_one_with_most_tumour():
    label = np.zeros((6, 8, 8), np.uint8)
    label[1, :2, :2] = 1
    label[4, :4, :4] = 3
    assert tumour_slice(label) == 4
    assert tumour_slice(np.zeros((6, 8, 8), np.uint8)) == 3


def test_overlay_colours_follow_the_nested_regions():
    image = np.ones((4, 4), np.float32)
    label = np.array([[0, 1, 2, 3]] * 4, np.uint8)
    rgb = overlay(image, label, alpha=1.0)
    colours = {name: np.asarray(c) for name, _, c in REGION_COLOURS}
    assert np.allclose(rgb[0, 1], colours["WT"]) and np.allclose(rgb[0, 2], colours["TC"])
    assert np.allclose(rgb[0, 3], colours["ET"])  # ET drawn last, on top of TC and WT
    assert rgb[0, 0, 0] == rgb[0, 0, 1] == rgb[0, 0, 2]  # background stays grey


def test_case_dice_per_region():
    ref = np.array([0, 1, 2, 3, 3])
    pred = np.array([0, 1, 1, 3, 0])
    assert case_dice(ref, pred) == pytest.approx({"WT": 2 * 3 / 7, "TC": 2 * 1 / 4, "ET": 2 * 1 / 3})


def _write(array, path):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ("imagesTs", "labelsTs", "pred", "model/fold_0"):
        (tmp_path / sub).mkdir(parents=True)
    label = np.zeros((8, 12, 12), np.uint8)
    label[3:6, 4:9, 4:9] = 1
    label[4, 5:8, 5:8] = 3
    for i in range(2):
        _write(rng.random(label.shape).astype(np.float32), tmp_path / "imagesTs" / f"case_0001_{i:04d}.nii.gz")
    _write(label, tmp_path / "labelsTs" / "case_0001.nii.gz")
    _write(label, tmp_path / "pred" / "case_0001.nii.gz")
    (tmp_path / "model" / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "T1", "1": "FLAIR"}, "file_ending": ".nii.gz"}))
    return tmp_path


def test_overview_without_a_finished_run_says_so_and_refuses_to_overwrite(folders):
    args = (folders / "imagesTs", folders / "labelsTs", folders / "pred", folders / "model")
    with pytest.raises(FileNotFoundError, match="checkpoint_final.pth"):
        write_overview_from_folders(*args, folders / "o.png")
    assert not (folders / "o.png").exists()
    (folders / "o.png").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_overview_from_folders(*args, folders / "o.png")
    assert (folders / "o.png").read_bytes() == b"keep"
    with pytest.raises(FileNotFoundError, match="-m"):
        write_overview_from_folders(*args[:3], folders, folders / "p.png")
