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
