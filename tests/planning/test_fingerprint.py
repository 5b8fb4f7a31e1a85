"""Tests for nnunetv2_ext.planning.fingerprint: which cases the subset extractor reads and how many intensity samples
it keeps (its __init__ only; the extraction itself is nnU-Net's, run in benchmarks/scale_data_path.py)."""
from __future__ import annotations

import json

import pytest
from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor

from nnunetv2_ext.planning.fingerprint import SAMPLES_PER_CASE, subset_fingerprint_extractor

N_CASES = 12


@pytest.fixture
def raw_dataset(tmp_path, monkeypatch):
    folder = tmp_path / "Dataset950_Cohort"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(N_CASES):
        for c in range(2):
            (folder / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz").touch()
        (folder / "labelsTr" / f"case_{i:03d}.nii.gz").touch()
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "foreground": 1},
        "numTraining": N_CASES, "file_ending": ".nii.gz"}))
    monkeypatch.setattr(fingerprint_extractor, "nnUNet_raw", str(tmp_path))
    return folder


def test_subset_is_a_seeded_draw_of_max_cases(raw_dataset):
    a = subset_fingerprint_extractor(5, seed=0)("Dataset950_Cohort", 1)
    b = subset_fingerprint_extractor(5, seed=0)("Dataset950_Cohort", 1)
    c = subset_fingerprint_extractor(5, seed=1)("Dataset950_Cohort", 1)
    assert len(a.dataset) == 5 and list(a.dataset) == list(b.dataset) == sorted(a.dataset)
    assert set(a.dataset) != set(c.dataset)
    assert set(a.dataset) <= {f"case_{i:03d}" for i in range(N_CASES)}
    assert a.num_foreground_voxels_for_intensitystats == 5 * SAMPLES_PER_CASE


def test_subset_larger_than_the_cohort_takes_every_case(raw_dataset):
    extractor = subset_fingerprint_extractor(100, samples_per_case=10)("Dataset950_Cohort", 1)
    assert len(extractor.dataset) == N_CASES
    assert extractor.num_foreground_voxels_for_intensitystats == N_CASES * 10


def test_ill_arguments():
    with pytest.raises(ValueError, match=r"--max-cases \(and the samples per case\) must be >= 1"):
        subset_fingerprint_extractor(0)
