"""A dataset fingerprint from a fixed-size random subset of the cases: the bounded data path of a large pretraining
cohort (docs/scale.md).

nnU-Net's ``DatasetFingerprintExtractor`` reads every training case once (time linear in the cohort) and keeps
``1e8 / n_cases`` foreground intensity samples per case and channel (1e8 per channel in total, whatever the cohort: its
memory is bounded already, but at about 3 GB for 2 channels, and drawing and sorting 1e8 samples costs ~45 s even at
10 cases; measured in docs/scale.md). What planning takes from it are medians (spacing, shape after cropping) and
intensity percentiles, which a few thousand random cases estimate as well as 50,000 do; the batch-size cap of the
planner reads ``numTraining`` from dataset.json, not the fingerprint. :func:`extract_subset_fingerprint` runs
nnU-Net's own extractor on ``max_cases`` cases drawn with a fixed seed, keeps nnU-Net's per-case 10,000 samples
(:data:`SAMPLES_PER_CASE`) and records the draw in the fingerprint (``nnunetv2_ext_subset``), so
``nnUNetv2_plan_experiment`` and ``nnUNetv2_preprocess`` (or ``nnUNetv2_plan_and_preprocess`` without ``--clean``,
which keeps an existing fingerprint) run unchanged on every case.
"""
from __future__ import annotations

import json
import os
from typing import Type, Union

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

__all__ = ["SUBSET_KEY", "subset_fingerprint_extractor", "extract_subset_fingerprint"]

#: key of the fingerprint JSON that records the subset (n_cases, n_cases_total, seed)
SUBSET_KEY = "nnunetv2_ext_subset"


#: foreground intensity samples per case and channel: nnU-Net's own per-case default (``analyze_case(num_samples=
#: 10000)``), which its extractor reaches at 10,000 cases; with fewer it draws up to 1e8 / n_cases per case (with
#: replacement: 3,000 copies of each voxel of a 32^3 case at 10 cases) and holds 1e8 per channel, ~3 GB at 2 channels
SAMPLES_PER_CASE = 10000


def subset_fingerprint_extractor(max_cases: int, seed: int = 0, samples_per_case: int = SAMPLES_PER_CASE
                                 ) -> Type[DatasetFingerprintExtractor]:
    """nnU-Net's ``DatasetFingerprintExtractor`` restricted to ``max_cases`` training cases drawn without replacement
    with ``numpy.random.default_rng(seed)`` from the sorted case names (all of them if there are fewer), keeping
    ``samples_per_case`` foreground intensities per case and channel (at most nnU-Net's 1e8 in total)."""
    if max_cases < 1 or samples_per_case < 1:
        raise ValueError(f"--max-cases (and the samples per case) must be >= 1, got {max_cases} and "
                         f"{samples_per_case}")

    class SubsetFingerprintExtractor(DatasetFingerprintExtractor):
        def __init__(self, dataset_name_or_id: Union[str, int], num_processes: int = 8, verbose: bool = False):
            super().__init__(dataset_name_or_id, num_processes, verbose)
            dataset: dict = self.dataset  # type: ignore[has-type]  # (nnU-Net is untyped)
            keys = sorted(dataset)
            if len(keys) > max_cases:
                chosen = np.random.default_rng(seed).choice(len(keys), max_cases, replace=False)
                dataset = {keys[i]: dataset[keys[i]] for i in sorted(chosen)}
            self.dataset = dataset
            total: float = self.num_foreground_voxels_for_intensitystats  # type: ignore[has-type]
            self.num_foreground_voxels_for_intensitystats = min(total, samples_per_case * len(dataset))

    return SubsetFingerprintExtractor


def extract_subset_fingerprint(dataset: Union[str, int], max_cases: int, seed: int = 0, num_processes: int = 1,
                               clean: bool = True) -> dict:
    """Write ``$nnUNet_preprocessed/DatasetXXX/dataset_fingerprint.json`` from ``max_cases`` random training cases
    (nnU-Net's extractor, :func:`subset_fingerprint_extractor`) and return it. ``clean=False`` keeps an existing
    fingerprint, as nnU-Net's does."""
    from nnunetv2.paths import nnUNet_preprocessed

    if not nnUNet_preprocessed:
        raise ValueError("export nnUNet_preprocessed (and nnUNet_raw), as for nnUNetv2_extract_fingerprint")
    name = maybe_convert_to_dataset_name(dataset)
    path = os.path.join(nnUNet_preprocessed, name, "dataset_fingerprint.json")
    if not clean and os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    extractor = subset_fingerprint_extractor(max_cases, seed)
    fingerprint = extract_fingerprint_dataset(int(name[len("Dataset"):len("Dataset") + 3]), extractor, num_processes,
                                              clean=True, verbose=False, show_progress_bar=False)
    fingerprint[SUBSET_KEY] = {"n_cases": len(fingerprint["spacings"]), "max_cases": max_cases, "seed": seed}
    with open(path, "w") as f:
        json.dump(fingerprint, f, indent=4, sort_keys=False)
    return fingerprint
