"""Proxy-benchmark analysis on tiny synthetic runs: a perfect method ("good" = the references) and a shifted one
("bad"), 2 n_labelled values x 2 subsets, plus one "bad" subset without a "good" partner."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from nnunetv2_ext.proxy.analysis import (
    Run,
    curve_rows,
    hierarchical_bootstrap,
    paired_comparison,
    results_table,
    score_runs,
    table_numbers,
    write_results,
)

DATASET_JSON = {"channel_names": {"0": "T1"}, "file_ending": ".nii.gz", "numTraining": 3,
                "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                "regions_class_order": [1, 2, 3]}
REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}
# (whole tumour, core, enhancing) cubes per case, as (start, stop) on every axis
CUBES = [((2, 9), (3, 7), (4, 6)), ((1, 10), (3, 8), (4, 7)), ((2, 10), (4, 8), (5, 7))]
CASES = [f"case_{i:03d}" for i in range(len(CUBES))]
RUNS = [("good", 2, 0), ("good", 2, 1), ("good", 4, 0), ("good", 4, 1),
        ("bad", 2, 0), ("bad", 2, 1), ("bad", 4, 0), ("bad", 4, 1), ("bad", 4, 2)]


def _reference(i: int) -> np.ndarray:
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    for label, (a, b) in zip((1, 2, 3), CUBES[i]):
        ref[a:b, a:b, a:b] = label
    return ref


def _prediction(method: str, n: int, subset: int, i: int) -> np.ndarray:
    ref = _reference(i)
    return ref if method == "good" else np.roll(ref, 1 + subset % 2, axis=0 if n == 2 else 1)


def _dice(ref: np.ndarray, pred: np.ndarray, labels) -> float:
    r, p = np.isin(ref, labels), np.isin(pred, labels)
    return 2.0 * np.count_nonzero(r & p) / (np.count_nonzero(r) + np.count_nonzero(p))


def _hand_dice(method: str, n: int, subset: int) -> dict[str, list[float]]:
    """Per region (and "mean" over regions) the per-case Dice of one run, computed here with numpy."""
    out = {region: [_dice(_reference(i), _prediction(method, n, subset, i), labels) for i in range(len(CASES))]
           for region, labels in REGIONS.items()}
    out["mean"] = list(np.mean([out[r] for r in REGIONS], axis=0))
    return out


def _write(path, array):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxy")
    gt = root / "gt_segmentations"
    gt.mkdir()
    for i, case in enumerate(CASES):
        _write(gt / f"{case}.nii.gz", _reference(i))
    runs = []
    for method, n, subset in RUNS:
        fold = root / f"{method}_n{n}_s{subset}" / "fold_0"
        (fold / "validation").mkdir(parents=True)
        for i, case in enumerate(CASES):
            _write(fold / "validation" / f"{case}.nii.gz", _prediction(method, n, subset, i))
        runs.append(Run(method, n, subset, str(fold)))
    return root, gt, score_runs(runs, gt, DATASET_JSON)


def test_table_has_one_row_per_method_and_n_and_good_is_perfect(bench):
    rows = results_table(bench[2])
    assert [(r["method"], r["n_labelled"], r["n_subsets"]) for r in rows] == [
        ("good", 2, 2), ("good", 4, 2), ("bad", 2, 2), ("bad", 4, 3)]
    good = rows[0]
    for region in ("WT", "TC", "ET", "mean"):
        assert good[f"{region} Dice"] == "1.0000 ± 0.0000"
        assert good[f"{region} HD95 (mm)"] == "0.00 ± 0.00"
    assert {f"WT {label}" for label in ("ACC", "SE", "SP", "PRE")} <= set(good)
    bad = rows[2]["WT Dice"]
    expected = [np.mean(_hand_dice("bad", 2, s)["WT"]) for s in (0, 1)]
    assert bad == f"{np.mean(expected):.4f} ± {statistics.stdev(expected):.4f}"


def test_curve_rows_are_mean_and_sd_over_subsets_of_the_case_mean_dice(bench):
    rows = {(r["method"], r["n_labelled"], r["region"]): r for r in curve_rows(bench[2])}
    assert len(rows) == 4 * 4
    for n, subsets in ((2, (0, 1)), (4, (0, 1, 2))):
        for region in ("WT", "TC", "ET", "mean"):
            per_subset = [np.mean(_hand_dice("bad", n, s)[region]) for s in subsets]
            row = rows[("bad", n, region)]
            assert row["dice_per_subset"] == pytest.approx(per_subset)
            assert row["mean_dice"] == pytest.approx(np.mean(per_subset))
            assert row["sd_dice"] == pytest.approx(statistics.stdev(per_subset))
    assert rows[("good", 2, "mean")]["mean_dice"] == pytest.approx(1.0)
    assert rows[("good", 2, "mean")]["sd_dice"] == 0.0
    assert {r["region"] for r in curve_rows(bench[2], regions=["ET"])} == {"ET"}


def test_paired_comparison_matches_hand_computed_differences(bench):
    rows = paired_comparison(bench[2], "good", "bad", n_boot=2000, seed=0)
    by_key = {(r["n_labelled"], r["region"]): r for r in rows}
    assert set(by_key) == {(n, r) for n in (2, 4) for r in ("WT", "TC", "ET", "mean")}
    for (n, region), row in by_key.items():
        diffs = [1.0 - d for s in (0, 1) for d in _hand_dice("bad", n, s)[region]]
        assert row["mean_diff"] == pytest.approx(np.mean(diffs))
        assert row["ci_low"] <= row["mean_diff"] <= row["ci_high"]
        assert row["ci_low"] > 0  # every case is better: the interval excludes 0
        assert row["p(a > b)"] == 1.0
        assert row["n_subsets"] == 2 and row["n_cases"] == len(CASES)
    assert by_key[(2, "WT")]["unpaired"] == {}
    assert by_key[(4, "WT")]["unpaired"] == {"bad": [2]}  # bad subset 2 has no good partner and is left out
    reverse = paired_comparison(bench[2], "bad", "good", n_boot=2000, seed=0)
    assert reverse[0]["mean_diff"] == pytest.approx(-rows[0]["mean_diff"]) and reverse[0]["p(a > b)"] == 0.0


def test_bootstrap_is_deterministic_and_resamples_both_levels():
    rng = np.random.default_rng(1)
    groups = [rng.normal(m, 1.0, size=5) for m in (0.0, 0.5, 1.0)]
    first, again = hierarchical_bootstrap(groups, 3000, seed=7), hierarchical_bootstrap(groups, 3000, seed=7)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, hierarchical_bootstrap(groups, 3000, seed=8))
    assert first.mean() == pytest.approx(np.mean([g.mean() for g in groups]), abs=0.05)
    # constant within subsets: only the subset level varies; constant everywhere: no spread at all
    between = hierarchical_bootstrap([np.full(4, 0.0), np.full(4, 1.0)], 2000, seed=0)
    assert set(np.unique(between)) <= {0.0, 0.5, 1.0} and between.std() > 0
    np.testing.assert_allclose(hierarchical_bootstrap([np.full(3, 0.2), np.full(5, 0.2)], 100), 0.2)
    # ragged subsets: the padded slots never enter a mean
    ragged = hierarchical_bootstrap([np.array([1.0]), np.array([1.0, 1.0, 1.0])], 500)
    np.testing.assert_allclose(ragged, 1.0)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_bootstrap(groups, 0)


def test_paired_comparison_rejects_ill_arguments(bench):
    with pytest.raises(ValueError, match="ssl_vf"):
        paired_comparison(bench[2], "ssl_vf", "bad")
    with pytest.raises(ValueError, match="metric"):
        paired_comparison(bench[2], "good", "bad", metric="nope")
    with pytest.raises(ValueError, match="different"):
        paired_comparison(bench[2], "good", "good")


def test_nan_values_are_skipped_and_shown_as_na():
    def summary(hd95_by_case):  # an evaluate_folders summary as read back from its JSON cache (NaN -> null)
        overlap = {m: 0.5 for m in ("dice", "accuracy", "sensitivity", "specificity", "precision")}
        cases = {c: {"WT": {**overlap, "hd95_mm": h}, "ET": {**overlap, "hd95_mm": None}}
                 for c, h in hd95_by_case.items()}
        mean = {"WT": {**overlap, "hd95_mm": 0.0}, "ET": {**overlap, "hd95_mm": None}}
        return {"cases": cases, "mean": mean, "std": {}, "n_cases": len(cases)}

    scores = {Run("m", 1, 0, "a"): summary({"x": 2.0, "y": None}), Run("m", 1, 1, "b"): summary({"x": 4.0})}
    numbers = table_numbers(scores, metrics=("dice", "hd95_mm"))[0]["values"]
    assert numbers["WT"]["hd95_mm"]["per_subset"] == [2.0, 4.0]
    assert numbers["mean"]["hd95_mm"]["per_subset"] == [2.0, 4.0]  # ET's NaN skipped in the mean over regions
    assert math.isnan(numbers["ET"]["hd95_mm"]["mean"])
    row = results_table(scores, regions=["WT", "ET"])[0]
    assert row["ET HD95 (mm)"] == "n/a" and row["WT HD95 (mm)"] == f"3.00 ± {statistics.stdev([2, 4]):.2f}"
    with pytest.raises(ValueError, match="region"):
        results_table(scores, regions=["TC"])
    with pytest.raises(ValueError, match="two runs"):
        table_numbers({Run("m", 1, 0, "a"): summary({"x": 1.0}), Run("m", 1, 0, "b"): summary({"x": 1.0})})


def test_write_results_writes_every_file_and_refuses_to_overwrite(bench, tmp_path):
    out = tmp_path / "results"
    written = write_results(bench[2], out, methods_labels={"good": "Oracle"},
                            comparisons=(("good", "bad"), ("ssl_vf", "scratch")), meta={"seed": 0})
    assert set(written) == {"results", "table", "table_csv", "curve", "paired", "summary"}
    assert all(p.is_file() for p in written.values())
    assert written["curve"].read_bytes()[:4] == b"\x89PNG"
    assert "Oracle" in written["table"].read_text() and "Oracle" in written["paired"].read_text()
    assert "ssl_vf vs scratch" in written["paired"].read_text()
    results = json.loads(written["results"].read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert results["meta"] == {"seed": 0} and results["paired_skipped"] == [["ssl_vf", "scratch"]]
    assert len(results["runs"]) == len(RUNS) and len(results["paired"]) == 1
    assert results["runs"][0]["cases"][CASES[0]]["WT"]["dice"] == 1.0
    summary = written["summary"].read_text()
    assert "| Oracle | " in summary and "1.000 ± 0.000" in summary  # the oracle's Dice, from the numbers
    assert "Oracle minus bad: Dice (mean), paired" in summary and "p(a > b)" in summary
    with pytest.raises(FileExistsError, match="results.json"):
        write_results(bench[2], out)
    write_results(bench[2], out, comparisons=(), overwrite=True)
    assert json.loads(written["results"].read_text())["paired"] == []


def test_a_run_without_predictions_is_named(bench, tmp_path):
    _, gt, _ = bench
    missing = Run("scratch", 2, 0, str(tmp_path / "never_trained" / "fold_0"))
    with pytest.raises(FileNotFoundError, match="never_trained"):
        score_runs([missing], gt, DATASET_JSON)
    with pytest.raises(ValueError, match="n_labelled"):
        Run("scratch", 0, 0, "x")
