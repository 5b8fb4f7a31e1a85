"""Report tables and the few-shot curve from fold results (the e2e suite runs `nnunetv2_ext report` on a real
results tree)."""
from __future__ import annotations

import math

import pytest

from nnunetv2_ext.evaluation.report import FoldResult, few_shot_table, plot_few_shot, table_folds, table_models


def _result(model: str, fold: str, wt: float, tc: float, et: float) -> FoldResult:
    mean = {region: {"dice": d, "accuracy": 0.99, "sensitivity": d, "specificity": 1.0, "precision": d,
                     "hd95_mm": 2.0} for region, d in (("WT", wt), ("TC", tc), ("ET", et))}
    return FoldResult(model, fold, {"mean": mean, "cases": {}, "std": {}, "n_cases": 1})


@pytest.fixture
def results():
    return [_result("A__P__3d_fullres", "0", 0.9, 0.8, 0.7), _result("A__P__3d_fullres", "1", 0.6, 0.6, 0.6),
            _result("B__P__3d_fullres", "0", 0.3, 0.3, float("nan")),
            _result("A__P__3d_fullres", "5", 0.5, 0.5, 0.5), _result("A__P__3d_fullres", "6", 0.7, 0.7, 0.7),
            _result("A__P__3d_fullres", "7", 0.8, 0.8, 0.8)]


def test_models_table_averages_regions_then_folds(results):
    rows = {r["model"]: r for r in table_models(results, folds=["0", "1"])}
    assert rows["A__P__3d_fullres"]["Av. DSC"] == pytest.approx((0.8 + 0.6) / 2)
    assert rows["A__P__3d_fullres"]["DSC WT"] == pytest.approx((0.9 + 0.6) / 2)
    assert rows["A__P__3d_fullres"]["folds"] == "0,1"
    assert rows["B__P__3d_fullres"]["Av. DSC"] == pytest.approx(0.3)  # NaN region skipped


def test_folds_table_has_a_column_per_model_and_nan_where_missing(results):
    rows = {r["fold"]: r for r in table_folds(results, folds=["0", "1"])}
    assert set(rows) == {"0", "1"}
    assert rows["0"]["A__P__3d_fullres"] == pytest.approx(0.8)
    assert math.isnan(rows["1"]["B__P__3d_fullres"])


def test_few_shot_curve_mean_and_sd_over_repeats(results, tmp_path):
    index = [{"fold": 5, "fraction": 0.5, "repeat": 0, "n_train": 2},
             {"fold": 6, "fraction": 0.5, "repeat": 1, "n_train": 2},
             {"fold": 7, "fraction": 1.0, "repeat": 0, "n_train": 4}]
    rows = few_shot_table(results, index)
    half = next(r for r in rows if r["model"] == "A__P__3d_fullres" and r["fraction"] == 0.5)
    assert half["mean_dice"] == pytest.approx(0.6) and half["sd_dice"] == pytest.approx(0.1414, abs=1e-3)
    assert half["n_repeats"] == 2 and half["n_train"] == 2
    assert not [r for r in rows if r["model"] == "B__P__3d_fullres"]  # B has no few-shot folds
    png = plot_few_shot(rows, tmp_path / "few_shot.png")
    assert png.stat().st_size > 5000


def _lw_result(model: str, lw_dice: dict, lw_hd95: float) -> FoldResult:
    mean = {region: {"dice": 0.5, "hd95_mm": 2.0, "brats_lesion_dice": d, "brats_lesion_hd95_mm": lw_hd95}
            for region, d in lw_dice.items()}
    return FoldResult(model, "0", {"mean": mean, "cases": {}, "std": {}, "n_cases": 1})


def test_models_table_ranks_by_lesion_wise_metrics():
    results = [_lw_result("A__P__c", {"WT": 0.9, "ET": 0.5}, 10.0), _lw_result("B__P__c", {"WT": 0.8, "ET": 0.8}, 5.0),
               _lw_result("C__P__c", {"WT": 0.1, "ET": float("nan")}, 50.0)]
    rows = table_models(results, rank_by="brats_lesion_dice")
    assert [r["model"] for r in rows] == ["B__P__c", "A__P__c", "C__P__c"] and [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["brats_lesion_dice"] == pytest.approx(0.8) and rows[0]["LW DSC ET"] == pytest.approx(0.8)
    assert rows[1]["LW HD95 (mm)"] == pytest.approx(10.0)
    by_wt = table_models(results, rank_by="brats_lesion_dice:WT")
    assert [r["model"] for r in by_wt] == ["A__P__c", "B__P__c", "C__P__c"]
    by_hd = table_models(results, rank_by="brats_lesion_hd95_mm")  # lower is better
    assert [r["model"] for r in by_hd] == ["B__P__c", "A__P__c", "C__P__c"]
    by_et = table_models(results, rank_by="brats_lesion_dice:ET")  # C's NaN ranks last
    assert by_et[-1]["model"] == "C__P__c" and math.isnan(by_et[-1]["brats_lesion_dice:ET"])
    assert "LW DSC" not in table_models([_result("A__P__c", "0", 0.9, 0.8, 0.7)])[0]
    with pytest.raises(ValueError, match="--brats"):
        table_models([_result("A__P__c", "0", 0.9, 0.8, 0.7)], rank_by="brats_lesion_dice")


def test_fold_metrics_rescores_when_the_lesion_wise_definition_changes(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from nnunetv2_ext.evaluation.report import METRICS_FILE, fold_metrics

    gt, validation = tmp_path / "gt", tmp_path / "fold_0" / "validation"
    gt.mkdir()
    validation.mkdir(parents=True)
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:8, 2:8, 2:8] = 1
    label[3:6, 3:6, 3:6] = 3
    for folder in (gt, validation):
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "a.nii.gz"))
    dataset_json = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
    plain = fold_metrics(tmp_path / "fold_0", gt, dataset_json)
    assert "lesion_wise" not in plain
    scored = fold_metrics(tmp_path / "fold_0", gt, dataset_json, lesion_wise="2023")
    assert scored["lesion_wise"]["definition"] == "2023" and scored["mean"]["ET"]["brats_lesion_dice"] == 1.0
    stamp = (validation / METRICS_FILE).stat().st_mtime_ns
    assert fold_metrics(tmp_path / "fold_0", gt, dataset_json, lesion_wise="2023")["lesion_wise"]
    assert fold_metrics(tmp_path / "fold_0", gt, dataset_json)["lesion_wise"]  # a richer cache serves plain calls
    assert (validation / METRICS_FILE).stat().st_mtime_ns == stamp
