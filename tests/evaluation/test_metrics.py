"""Known-answer tests for nnunetv2_ext.evaluation.metrics (tiny arrays)."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.evaluation.metrics import (
    METRIC_NAMES,
    brats_regions,
    case_metrics,
    confusion,
    evaluate_folders,
    lesion_metrics,
    overlap_metrics,
    regions_from_dataset_json,
    surface_metrics,
)

BRATS_JSON = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
              "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}


def _cubes():
    """A 10^3 cube and the same cube shifted by 2 voxels along axis 0, in a 20^3 image."""
    ref = np.zeros((20, 20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:12, 2:12, 2:12] = True
    pred[4:14, 2:12, 2:12] = True
    return ref, pred


def _same(a, b):
    """Equal dicts of dicts of numbers, NaN == NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or b is None:  # JSON null stands for NaN
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6, abs=1e-9)


def test_confusion_and_overlap_known_answer():
    ref, pred = _cubes()
    tp, fp, fn, tn = 8 * 10 * 10, 2 * 10 * 10, 2 * 10 * 10, 20 ** 3 - 1200
    assert confusion(ref, pred) == (tp, fp, fn, tn)
    m = overlap_metrics(ref, pred)
    assert m["dice"] == pytest.approx(0.8)  # 2*800 / (1000 + 1000)
    assert m["jaccard"] == pytest.approx(800 / 1200)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(6800 / 7000)
    assert m["precision"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(7600 / 8000)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, fp, fn, tn)


def test_overlap_asymmetric_sensitivity_precision():
    ref = np.zeros((4, 4, 4), bool)
    ref[0, :2, :2] = True  # 4 voxels
    pred = np.zeros_like(ref)
    pred[0] = True  # 16 voxels, covering ref
    m = overlap_metrics(ref, pred)
    assert m["sensitivity"] == 1.0 and m["precision"] == pytest.approx(4 / 16)
    assert m["dice"] == pytest.approx(8 / 20)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        confusion(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))


@pytest.mark.parametrize("spacing, expected", [((2.0, 1.0, 1.0), 8.0), ((1.0, 3.0, 1.0), 4.0)])
def test_surface_distance_between_planes_is_spacing_aware(spacing, expected):
    ref = np.zeros((12, 6, 6), bool)
    pred = np.zeros_like(ref)
    ref[2] = True
    pred[6] = True  # 4 voxels apart along axis 0
    m = surface_metrics(ref, pred, spacing)
    assert m["hd95_mm"] == pytest.approx(expected)
    assert m["assd_mm"] == pytest.approx(expected)


def test_surface_identical_masks_zero():
    ref, _ = _cubes()
    assert surface_metrics(ref, ref, (1, 1, 1)) == {"hd95_mm": 0.0, "assd_mm": 0.0}


def test_empty_conventions():
    empty = np.zeros((4, 5, 6), bool)
    full = empty.copy()
    full[1, 2, 3] = True
    both = {**overlap_metrics(empty, empty), **surface_metrics(empty, empty, (2, 1, 0.5))}
    assert both["dice"] == 1.0 and both["jaccard"] == 1.0
    assert both["hd95_mm"] == 0.0 and both["assd_mm"] == 0.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    diagonal = math.sqrt(8 ** 2 + 5 ** 2 + 3 ** 2)  # shape * spacing = (8, 5, 3) mm
    for ref, pred in [(empty, full), (full, empty)]:
        one = {**overlap_metrics(ref, pred), **surface_metrics(ref, pred, (2, 1, 0.5))}
        assert one["dice"] == 0.0 and one["jaccard"] == 0.0
        assert one["hd95_mm"] == pytest.approx(diagonal) and one["assd_mm"] == pytest.approx(diagonal)


def test_lesion_metrics_three_reference_two_predicted():
    ref = np.zeros((20, 20, 20), bool)
    ref[1:4, 1:4, 1:4] = True
    ref[10:13, 1:4, 1:4] = True
    ref[1:4, 10:13, 10:13] = True
    pred = np.zeros_like(ref)
    pred[2:5, 2:5, 2:5] = True  # overlaps the first reference lesion
    pred[15:18, 15:18, 15:18] = True  # false positive
    m = lesion_metrics(ref, pred)
    assert (m["n_ref_lesions"], m["n_pred_lesions"]) == (3, 2)
    assert m["lesion_precision"] == pytest.approx(1 / 2)
    assert m["lesion_recall"] == pytest.approx(1 / 3)
    assert m["lesion_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))  # TP=1, FP=1, FN=2
    assert m["lesion_count_diff"] == -1 and m["abs_lesion_count_diff"] == 1


def test_lesion_f1_counts_reference_lesions_when_merged():
    """One predicted lesion touching two reference lesions: both are detected (paper's TP on reference)."""
    ref = np.zeros((12, 12, 12), bool)
    ref[1:3, 1:3, 1:3] = True
    ref[1:3, 6:8, 1:3] = True
    pred = np.zeros_like(ref)
    pred[1:3, 1:8, 1:3] = True
    m = lesion_metrics(ref, pred)
    assert (m["n_ref_lesions"], m["n_pred_lesions"]) == (2, 1)
    assert m["lesion_f1"] == 1.0 and m["lesion_recall"] == 1.0 and m["lesion_precision"] == 1.0
    assert m["lesion_count_diff"] == -1


def test_lesions_use_26_connectivity_and_empty_convention():
    ref = np.zeros((5, 5, 5), bool)
    ref[1, 1, 1] = ref[2, 2, 2] = True  # corner-touching: one lesion in 26-connectivity
    assert lesion_metrics(ref, ref)["n_ref_lesions"] == 1
    empty = np.zeros_like(ref)
    both = lesion_metrics(empty, empty)
    assert both["lesion_f1"] == 1.0 and both["lesion_count_diff"] == 0
    assert lesion_metrics(ref, empty)["lesion_f1"] == 0.0


def test_case_metrics_regions_and_volumes():
    ref = np.zeros((6, 6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels edema
    pred[1:3, 1:3, 1:4] = 2  # 12 voxels necrosis
    spacing = (2.0, 1.0, 1.0)  # 2 mm^3 per voxel
    out = case_metrics(ref, pred, spacing, brats_regions())
    assert list(out) == ["WT", "TC", "ET"]
    assert all(list(m) == list(METRIC_NAMES) for m in out.values())
    wt, tc, et = out["WT"], out["TC"], out["ET"]
    assert wt["dice"] == pytest.approx(16 / 20) and wt["sensitivity"] == 1.0
    assert wt["volume_ref_ml"] == pytest.approx(8 * 2 / 1000) and wt["volume_pred_ml"] == pytest.approx(12 * 2 / 1000)
    assert wt["abs_volume_diff_ml"] == pytest.approx(4 * 2 / 1000) and wt["abs_volume_diff_voxels"] == 4
    assert tc["dice"] == 0.0 and tc["lesion_count_diff"] == 1  # empty reference, non-empty prediction
    assert et["dice"] == 1.0 and et["hd95_mm"] == 0.0 and et["volume_pred_ml"] == 0.0


def test_regions_from_dataset_json(tmp_path):
    assert regions_from_dataset_json(BRATS_JSON) == brats_regions() == {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(BRATS_JSON))
    assert regions_from_dataset_json(path) == brats_regions()
    assert regions_from_dataset_json({"labels": {"background": 0, "a": 1, "b": 2}}) == {"a": [1], "b": [2]}
    assert regions_from_dataset_json({"labels": {"background": 0, "a": 1, "ignore": 2}}) == {"a": [1]}
    custom = {"labels": {"background": 0, "lesion plus": [1, 2], "core": [2]}}
    assert regions_from_dataset_json(custom) == {"lesion plus": [1, 2], "core": [2]}
    with pytest.raises(ValueError, match="no foreground"):
        regions_from_dataset_json({"labels": {"background": 0}})


def _write(path, array, spacing):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(image, str(path))


@pytest.fixture()
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    spacing = (2.0, 1.0, 0.5)
    rng = np.random.default_rng(0)
    arrays = {}
    for case in ("case_a", "case_b"):
        ref = np.zeros((8, 9, 10), np.uint8)
        ref[2:6, 2:7, 3:8] = 1
        ref[3:5, 3:6, 4:7] = 2
        if case == "case_a":
            ref[4, 4, 5] = 3  # case_b has no enhancing tumour: its ET sensitivity is NaN
        pred = ref.copy()
        pred[rng.random(ref.shape) < 0.05] = 1
        _write(ref_dir / f"{case}.nii.gz", ref, spacing)
        _write(pred_dir / f"{case}.nii.gz", pred, spacing)
        arrays[case] = (ref, pred)
    return ref_dir, pred_dir, spacing, arrays


def test_evaluate_folders_matches_case_metrics(folders, tmp_path):
    ref_dir, pred_dir, spacing, arrays = folders
    output = tmp_path / "out" / "summary.json"
    summary = evaluate_folders(ref_dir, pred_dir, BRATS_JSON, output=output)
    assert set(summary["cases"]) == {"case_a", "case_b"} and summary["n_cases"] == 2
    for case, (ref, pred) in arrays.items():
        assert _same(summary["cases"][case], case_metrics(ref, pred, spacing, brats_regions()))
    assert math.isnan(summary["cases"]["case_b"]["ET"]["sensitivity"])
    assert summary["mean"]["ET"]["sensitivity"] == summary["cases"]["case_a"]["ET"]["sensitivity"]  # NaN skipped
    dice = [summary["cases"][c]["WT"]["dice"] for c in arrays]
    assert summary["mean"]["WT"]["dice"] == pytest.approx(np.mean(dice))
    assert summary["std"]["WT"]["dice"] == pytest.approx(np.std(dice))

    written = json.loads(output.read_text())
    assert written["cases"]["case_b"]["ET"]["sensitivity"] is None
    assert _same(written["cases"], summary["cases"])
    with open(output.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3
    row = next(r for r in rows if r["case"] == "case_a" and r["region"] == "TC")
    assert float(row["dice"]) == pytest.approx(summary["cases"]["case_a"]["TC"]["dice"])


def test_evaluate_folders_pool_equals_serial(folders):
    ref_dir, pred_dir, _, _ = folders
    serial = evaluate_folders(ref_dir, pred_dir, BRATS_JSON)
    pooled = evaluate_folders(ref_dir, pred_dir, BRATS_JSON, num_processes=2)
    assert _same(serial["cases"], pooled["cases"])


def test_evaluate_folders_missing_and_mismatch(folders):
    ref_dir, pred_dir, spacing, _ = folders
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_b"):
        evaluate_folders(ref_dir, pred_dir, BRATS_JSON)
    partial = evaluate_folders(ref_dir, pred_dir, BRATS_JSON, strict=False)
    assert list(partial["cases"]) == ["case_a"]
    _write(pred_dir / "case_a.nii.gz", np.zeros((8, 9, 11), np.uint8), spacing)
    with pytest.raises(ValueError, match="case_a.*shape"):
        evaluate_folders(ref_dir, pred_dir, BRATS_JSON, strict=False)
    _write(pred_dir / "stray.nii.gz", np.zeros((8, 9, 10), np.uint8), spacing)
    with pytest.raises(ValueError, match="stray"):
        evaluate_folders(ref_dir, pred_dir, BRATS_JSON, strict=False)
