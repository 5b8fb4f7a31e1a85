"""Tests for nnunetv2_ext.proxy.threshold_baseline: known answers on hand-made cases, nnU-Net's z-score, the files
the benchmark scores, and the proxy cohort's difficulty (a single threshold well below a multimodal classifier)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ext.proxy import threshold_baseline as tb

DATASET_JSON = {"channel_names": {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"},
                "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
                "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def _case(seed: int, name: str = "c") -> tb.Case:
    """A cube of brain with nested blobs; WT is FLAIR-bright, TC T2-dark, ET T1Gd-bright, T1 is noise."""
    rng = np.random.default_rng(seed)
    shape = (12, 14, 16)
    grid = np.indices(shape).astype(float)
    r = np.sqrt(((grid - (np.array(shape)[:, None, None, None] / 2 + rng.uniform(-1, 1, 3)[:, None, None, None]))
                 ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[r < 5] = 1
    label[r < 3.5] = 2
    label[r < 2] = 3
    images = rng.normal(1.0, 0.05, (4, *shape))
    images[3][label > 0] += 1.0
    images[2][label >= 2] -= 0.6
    images[1][label == 3] += 1.5
    z, mask = tb.zscore(images)
    return tb.Case(name, z, mask, label)


def test_zscore_is_nnunets_masked_zscore():
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization

    rng = np.random.default_rng(0)
    images = np.zeros((2, 8, 9, 10), np.float32)
    images[:, 2:6, 2:7, 3:8] = rng.uniform(1, 5, (2, 4, 5, 5))
    z, mask = tb.zscore(images)
    assert mask.sum() == 4 * 5 * 5
    for c in range(2):
        seg = np.where(mask, 0, -1)
        expected = ZScoreNormalization(use_mask_for_norm=True, intensityproperties={}).run(images[c].copy(), seg)
        assert np.allclose(z[c], expected, atol=1e-5)
    assert np.all(z[:, ~mask] == 0)


def test_fit_finds_the_modality_and_direction_of_each_region():
    rules = tb.fit_thresholds([_case(s) for s in range(3)], DATASET_JSON)
    by_region = {r.region: r for r in rules}
    assert [r.region for r in rules] == ["WT", "TC", "ET"] and [r.label for r in rules] == [1, 2, 3]
    assert (by_region["WT"].modality, by_region["WT"].direction) == ("FLAIR", ">")
    assert (by_region["TC"].modality, by_region["TC"].direction) == ("T2", "<")  # the only "<" separator
    assert (by_region["ET"].modality, by_region["ET"].direction) == ("T1Gd", ">")
    assert all(r.train_dice > 0.97 for r in rules)
    test = _case(7)
    dice = tb.region_dice(test.label, tb.predict_thresholds(rules, test), REGIONS)
    assert all(d > 0.95 for d in dice.values()), dice


def test_fit_scores_the_painted_label_map():
    """TC is fitted given ET's painted mask: a TC rule that only finds label 2 still scores TC fully."""
    cases = [_case(s) for s in range(2)]
    for case in cases:
        case.z[2][case.label == 3] = 0.0  # ET voxels no longer T2-dark: only painting ET over TC recovers them
    rules = tb.fit_thresholds(cases, DATASET_JSON)
    assert rules[1].modality == "T2" and rules[1].train_dice > 0.97
    label = tb.predict_thresholds(rules, cases[0])
    assert tb.region_dice(cases[0].label, label, REGIONS)["TC"] > 0.97


def test_fit_refuses_no_case_or_unlabelled_cases():
    with pytest.raises(ValueError, match="at least one"):
        tb.fit_thresholds([], DATASET_JSON)
    case = _case(0)
    case.label = None
    with pytest.raises(ValueError, match="no label"):
        tb.fit_thresholds([case], DATASET_JSON)


def _write_dataset(folder: Path, cases: dict[str, tb.Case]) -> None:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for name, case in cases.items():
        for c in range(4):
            image = sitk.GetImageFromArray((case.z[c] + 10.0).astype(np.float32) * case.mask)
            image.SetSpacing((2.0, 2.0, 2.0))
            sitk.WriteImage(image, str(folder / "imagesTr" / f"{name}_{c:04d}.nii.gz"))
        label = sitk.GetImageFromArray(case.label)
        label.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{name}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": len(cases)}))


def test_run_writes_test_predictions_that_score_like_a_method(tmp_path):
    from nnunetv2_ext.evaluation.metrics import evaluate_folders

    raw = tmp_path / "Dataset900_T"
    _write_dataset(raw, {f"train_{i}": _case(i) for i in range(3)} | {f"test_{i}": _case(10 + i) for i in range(2)})
    out = tb.run_threshold_baseline(raw, ["train_0", "train_1", "train_2"], ["test_0", "test_1"], tmp_path / "tb")
    written = sorted(p.name for p in (out / "validation").iterdir())
    assert written == ["test_0.nii.gz", "test_1.nii.gz"]
    prediction = sitk.ReadImage(str(out / "validation" / "test_0.nii.gz"))
    assert prediction.GetSpacing() == (2.0, 2.0, 2.0) and prediction.GetPixelID() == sitk.sitkUInt8
    summary = evaluate_folders(raw / "labelsTr", out / "validation", raw / "dataset.json", strict=False)
    assert set(summary["cases"]) == {"test_0", "test_1"} and list(summary["mean"]) == ["WT", "TC", "ET"]
    assert all(summary["mean"][r]["dice"] > 0.9 for r in REGIONS)
    stored = json.loads((out / tb.RULES_FILE).read_text())
    assert stored["train_cases"] == ["train_0", "train_1", "train_2"] and len(stored["rules"]) == 3
    # a second call with the same cases keeps the files; other cases refit
    before = (out / "validation" / "test_0.nii.gz").stat().st_mtime_ns
    tb.run_threshold_baseline(raw, ["train_0", "train_1", "train_2"], ["test_0", "test_1"], tmp_path / "tb")
    assert (out / "validation" / "test_0.nii.gz").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="never see a test case"):
        tb.run_threshold_baseline(raw, ["train_0", "test_0"], ["test_0"], tmp_path / "tb2")
    with pytest.raises(FileNotFoundError, match="proxy make"):
        tb.run_threshold_baseline(raw, ["train_9"], ["test_0"], tmp_path / "tb3")


def test_proxy_cohort_needs_the_combination_of_modalities():
    """On the proxy's tumour cohort the best single-modality threshold per region (fitted on the training cases)
    scores well below a per-voxel classifier of all four z-scored modalities: no one contrast separates the
    lesion, their combination does (and context, for a CNN, on top)."""
    from nnunetv2_ext.proxy.anatomy import TARGET_MODALITIES, ProxySpec, synthesize_case

    spec = ProxySpec(seed=0, resolution=4.0)

    def case(cohort: str, index: int) -> tb.Case:
        data = synthesize_case(spec, cohort, index)
        z, mask = tb.zscore(np.stack([data["images"][m] for m in TARGET_MODALITIES]))
        return tb.Case(f"{cohort}_{index}", z, mask, data["label"])

    train = [case("target", i) for i in range(5)]
    test = [case("test", i) for i in range(4)]
    rules = tb.fit_thresholds(train, DATASET_JSON)
    threshold = tb.mean_region_dice([(c.label, tb.predict_thresholds(rules, c)) for c in test], REGIONS)
    classifier = tb.fit_voxel_classifier(train, DATASET_JSON, max_voxels=60_000)
    combined = tb.mean_region_dice([(c.label, classifier.predict(c)) for c in test], REGIONS)
    assert threshold["mean"] < 0.6, threshold
    assert combined["mean"] > threshold["mean"] + 0.15, (threshold, combined)
