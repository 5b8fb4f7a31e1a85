"""Known-answer tests for nnunetv2_ext.evaluation.lesionwise (the BraTS 2023/2024 lesion-wise metrics), tiny volumes."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.evaluation.lesionwise import (
    CHALLENGE_LABELS,
    DEFINITIONS,
    Definition,
    Region,
    lesionwise_metrics,
    merge_touching,
    normalized_surface_dice,
)
from nnunetv2_ext.evaluation.metrics import METRIC_NAMES, case_metrics, evaluate_folders

ET = 3  # enhancing tumour: label 3 in the challenge's and in nnU-Net's convention
SHAPE = (24, 16, 16)


def _cube(array, start, size=4, value=ET):
    z, y, x = start
    array[z:z + size, y:y + size, x:x + size] = value
    return array


def _et(ref, pred, definition="2023", spacing=(1.0, 1.0, 1.0)):
    return lesionwise_metrics(ref, pred, spacing, definition)["ET"]


def test_missed_lesion_scores_zero_and_the_penalty():
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2)), (16, 10, 10))  # two 64-voxel lesions
    pred = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2))
    et = _et(ref, pred)
    assert (et["brats_lesion_tp"], et["brats_lesion_fn"], et["brats_lesion_fp"]) == (1, 1, 0)
    assert et["brats_lesion_dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert et["brats_lesion_hd95_mm"] == pytest.approx((0.0 + 374.0) / 2)
    et24 = _et(ref, pred, "2024")
    assert et24["brats_lesion_hd95_mm"] == pytest.approx(337.0 / 2)  # 2024's penalty
    assert et24["brats_lesion_nsd_1mm"] == pytest.approx(0.5, abs=1e-6)


def test_spurious_lesion_is_a_false_positive_and_2024_drops_small_predictions():
    ref = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2))
    pred = _cube(ref.copy(), (18, 10, 10), size=2)  # 8 spurious voxels
    et = _et(ref, pred)
    assert (et["brats_lesion_tp"], et["brats_lesion_fn"], et["brats_lesion_fp"]) == (1, 0, 1)
    assert et["brats_lesion_dice"] == pytest.approx(0.5) and et["brats_lesion_hd95_mm"] == pytest.approx(187.0)
    assert _et(ref, pred, "2024")["brats_lesion_fp"] == 0  # 2024: predicted ET lesions of <= 10 voxels removed
    pred = _cube(ref.copy(), (18, 10, 10), size=3)  # 27 voxels: kept
    et24 = _et(ref, pred, "2024")
    assert et24["brats_lesion_fp"] == 1 and et24["brats_lesion_dice"] == pytest.approx(0.5)


def test_two_reference_lesions_merged_in_the_prediction():
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2)), (14, 2, 2))  # 8 voxels apart: two lesions
    pred = np.zeros_like(ref)
    pred[2:18, 2:6, 2:6] = ET  # one component covering both (256 voxels)
    et = _et(ref, pred)
    assert (et["brats_lesion_tp"], et["brats_lesion_fn"], et["brats_lesion_fp"]) == (2, 0, 0)
    assert et["brats_lesion_dice"] == pytest.approx(2 * 64 / (64 + 256))  # each lesion against the whole component
    assert case_metrics(ref, pred, (1, 1, 1), {"ET": [ET]})["ET"]["dice"] == pytest.approx(2 * 128 / (128 + 256))
    assert et["brats_lesion_hd95_mm"] > 0


def test_reference_components_within_the_dilation_are_one_lesion():
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2)), (10, 2, 2))  # 4 voxels apart
    assert _et(ref, ref.copy())["brats_lesion_tp"] == 1  # GLI: dilated 3 times, they touch
    assert _et(ref, ref.copy(), "2023-MEN")["brats_lesion_tp"] == 2  # MEN: dilated once, they do not
    et = _et(ref, ref.copy())
    assert et["brats_lesion_dice"] == 1.0 and et["brats_lesion_hd95_mm"] == 0.0


def test_prediction_within_the_dilated_lesion_matches_without_overlap():
    ref = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2))
    pred = _cube(np.zeros(SHAPE, np.uint8), (8, 2, 2))  # 2 voxels of background between them
    et = _et(ref, pred)
    assert (et["brats_lesion_tp"], et["brats_lesion_fn"], et["brats_lesion_fp"]) == (1, 0, 0)
    assert et["brats_lesion_dice"] == 0.0 and 0 < et["brats_lesion_hd95_mm"] < 374


@pytest.mark.parametrize("definition", sorted(DEFINITIONS))
def test_empty_reference_and_prediction(definition):
    empty = np.zeros(SHAPE, np.uint8)
    for scores in lesionwise_metrics(empty, empty, (1, 1, 1), definition).values():
        assert scores["brats_lesion_dice"] == 1.0 and scores["brats_lesion_hd95_mm"] == 0.0
        assert scores["brats_lesion_tp"] == scores["brats_lesion_fn"] == scores["brats_lesion_fp"] == 0
        assert all(scores[k] == 1.0 for k in scores if "_nsd_" in k)


def test_lesion_below_the_size_threshold_is_ignored():
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2)), (16, 10, 10), size=3)  # 64 and 27 voxels
    pred = _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2))
    et = _et(ref, pred)  # 27 mm^3 <= 50: left out
    assert (et["brats_lesion_tp"], et["brats_lesion_fn"], et["brats_lesion_ignored"]) == (1, 0, 1)
    assert et["brats_lesion_dice"] == 1.0 and et["brats_lesion_hd95_mm"] == 0.0
    found = _et(ref, ref.copy())  # predicting it is no false positive either
    assert found["brats_lesion_fp"] == 0 and found["brats_lesion_dice"] == 1.0
    coarse = _et(ref, pred, spacing=(2.0, 2.0, 2.0))  # the threshold is in mm^3: 27 * 8 > 50 counts
    assert coarse["brats_lesion_fn"] == 1 and coarse["brats_lesion_dice"] == pytest.approx(0.5)


def test_2024_merges_lesions_touching_one_lesion_of_a_partner_tissue():
    netc, et = CHALLENGE_LABELS["NETC"], CHALLENGE_LABELS["ET"]
    ref = np.zeros(SHAPE, np.uint8)
    ref[2:22, 10:12, 10:12] = netc  # a bar of NETC
    ref[2:5, 12:15, 10:13] = et  # two ET lesions 13 voxels apart, both touching the bar
    ref[18:21, 12:15, 10:13] = et
    scores = lesionwise_metrics(ref, ref.copy(), (1, 1, 1), "2024", CHALLENGE_LABELS)
    assert scores["ET"]["brats_lesion_tp"] == 1
    alone = Definition("no-partners", "test", (Region("ET", ("ET",), 3, 10),), 337.0, merge_predictions=True)
    assert lesionwise_metrics(ref, ref.copy(), (1, 1, 1), alone, CHALLENGE_LABELS)["ET"]["brats_lesion_tp"] == 2


def test_merge_touching_groups_by_the_lowest_partner_lesion():
    labels = np.array([[[1, 0, 2, 0, 3, 0, 0, 4]]])
    partner = np.array([[[0, 5, 0, 0, 0, 0, 0, 0]]])  # touches 1 and 2; 3 and 4 touch nothing
    out = merge_touching(labels, partner)
    assert out[0, 0, 0] == out[0, 0, 2] and len({out[0, 0, 0], out[0, 0, 4], out[0, 0, 7]}) == 3


def test_normalized_surface_dice_known_answers():
    ref, pred = np.zeros((10, 6, 6), bool), np.zeros((10, 6, 6), bool)
    ref[4], pred[5] = True, True  # two planes 1 mm apart: every surface voxel at 1 mm
    assert normalized_surface_dice(ref, pred, (1, 1, 1), 1.0) == pytest.approx(1.0, abs=1e-6)
    assert normalized_surface_dice(ref, pred, (1, 1, 1), 0.5) == 0.0
    assert normalized_surface_dice(ref, pred, (2, 1, 1), 1.0) == 0.0  # spacing-aware: now 2 mm
    assert normalized_surface_dice(ref, ref & False, (1, 1, 1), 1.0) == 0.0
    assert normalized_surface_dice(ref & False, ref & False, (1, 1, 1), 1.0) == 1.0


def test_bad_arguments_name_the_fix():
    empty = np.zeros(SHAPE, np.uint8)
    with pytest.raises(ValueError, match="--brats"):
        lesionwise_metrics(empty, empty, (1, 1, 1), "2019")
    with pytest.raises(ValueError, match="3D"):
        lesionwise_metrics(empty[0], empty[0], (1, 1), "2023")


def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(path))


def test_evaluate_folders_writes_lesion_wise_fields(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = _cube(_cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), value=1), (16, 10, 10))  # nnU-Net labels: 1 edema
    _write(ref_dir / "a.nii.gz", ref)
    _write(pred_dir / "a.nii.gz", _cube(np.zeros(SHAPE, np.uint8), (2, 2, 2), value=1))  # misses the ET lesion
    dataset_json = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
    out = tmp_path / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, dataset_json, output=out, lesion_wise="2023")
    et = summary["cases"]["a"]["ET"]
    assert et["dice"] == 0.0 and et["brats_lesion_fn"] == 1 and et["brats_lesion_dice"] == 0.0
    wt = summary["mean"]["WT"]
    assert wt["brats_lesion_dice"] == pytest.approx(0.5) and wt["brats_lesion_hd95_mm"] == pytest.approx(187.0)
    saved = json.loads(out.read_text())
    assert saved["lesion_wise"]["definition"] == "2023" and saved["lesion_wise"]["regions"]["TC"] == [2, 3]
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert {"brats_lesion_dice", "brats_lesion_hd95_mm", *METRIC_NAMES} <= set(rows[0])
    assert float(next(r for r in rows if r["region"] == "ET")["brats_lesion_hd95_mm"]) == pytest.approx(374.0)

    s24 = evaluate_folders(ref_dir, pred_dir, dataset_json, lesion_wise="2024")
    assert list(s24["mean"]) == ["WT", "TC", "ET", "NETC", "SNFH"]  # no RC: the dataset declares no label 4
    assert s24["cases"]["a"]["SNFH"]["dice"] == 1.0 and "brats_lesion_nsd_0.5mm" in s24["mean"]["SNFH"]
    with pytest.raises(ValueError, match="--brats-labels"):  # its TC is (2, 3), not the challenge's (1, 3)
        evaluate_folders(ref_dir, pred_dir, dataset_json, lesion_wise="2023", lesion_labels="challenge")


def test_label_convention_is_read_from_the_dataset_json():
    from nnunetv2_ext.evaluation.metrics import _infer_brats_labels, regions_from_dataset_json

    def infer(labels, **extra):
        dataset_json = {"labels": labels, **extra}
        return _infer_brats_labels(dataset_json, regions_from_dataset_json(dataset_json))

    assert infer({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}) == "nnunet"
    assert infer({"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3], "enhancing tumor": [3]}) \
        == "challenge"
    assert infer({"background": 0, "NCR": 1, "ED": 2, "ET": 3}) == "challenge"
    assert infer({"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}) == "nnunet"
    assert infer({"background": 0, "a": 1, "b": 2, "c": 3}, brats_layout="gli") == "nnunet"
    with pytest.raises(ValueError, match="--brats-labels"):
        infer({"background": 0, "a": 1, "b": 2, "c": 3})
