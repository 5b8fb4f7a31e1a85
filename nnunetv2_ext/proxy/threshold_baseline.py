"""Baselines without learning of shape: one intensity threshold per region, and a per-voxel multimodal classifier.

The proxy benchmark ranks segmentation methods on synthetic cases (:mod:`nnunetv2_ext.proxy.anatomy`); it can only
do so if its lesions are not found by a rule a radiologist would call trivial. :func:`fit_thresholds` picks, for
each evaluation region of the dataset (BraTS: whole tumour, tumour core, enhancing tumour), the single modality,
direction (``>`` or ``<``) and threshold on the z-scored intensity that maximise the mean per-case Dice over the
*training pool*; :func:`run_threshold_baseline` applies them to the held-out test cases and writes the predictions
where :func:`nnunetv2_ext.proxy.analysis.score_runs` scores them like any method's (one more row, ``"threshold
baseline"``, in every table of ``proxy run``).

The images are z-scored per case as nnU-Net's ``ZScoreNormalization`` with ``use_mask_for_norm`` does it: mean and
standard deviation over the non-zero mask (``nnunetv2.preprocessing.cropping.cropping.create_nonzero_mask``: any
channel non-zero, holes filled), 0 outside. The three region masks are combined into one label map the way nnU-Net
converts region predictions (``regions_class_order``: each region's mask painted with its label, in order), and the
thresholds are fitted on that painted result: the last-painted region first, each earlier one given those already
fitted, so that the Dice maximised is the Dice scored.

:func:`fit_voxel_classifier` is the counterpart that sees all modalities at once (multinomial logistic regression on
the z-scored intensities and their pairwise products, per voxel, no spatial context); a cohort where it clearly
beats the best single threshold is one where only the combination of modalities separates the lesion.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunetv2_ext.io_utils import atomic_write_json, load_json

METHOD = "threshold"
"""Method key of the baseline in the benchmark's runs and tables."""
LABEL = "threshold baseline"
"""Its display name."""
FOLDER = "threshold_baseline"
"""Folder of ``proxy run``'s output that holds the baseline (``validation/`` predictions and :data:`RULES_FILE`)."""
RULES_FILE = "threshold_rules.json"
THRESHOLDS = np.round(np.arange(-4.0, 8.0 + 1e-9, 0.05), 2)
"""Thresholds searched, in units of the case's standard deviation (z-score)."""
DIRECTIONS = (">", "<")


@dataclass(frozen=True)
class RegionRule:
    """One region's rule: voxels of the non-zero mask whose z-scored ``modality`` is ``direction`` ``threshold``.

    ``train_dice`` is the mean per-case Dice of the painted label map on the training cases it was fitted on.
    """
    region: str
    label: int
    modality: str
    channel: int
    direction: str
    threshold: float
    train_dice: float


@dataclass
class Case:
    """One case, ready for the baselines: z-scored images ``(C, z, y, x)``, non-zero mask and label map."""
    name: str
    z: np.ndarray
    mask: np.ndarray
    label: np.ndarray | None
    reference: sitk.Image | None = None  # geometry for writing predictions


def zscore(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's z-score with ``use_mask_for_norm``: per channel over the non-zero mask, 0 outside.

    Args:
        images: ``(C, z, y, x)`` (or ``(C, y, x)``) intensities.

    Returns:
        ``(z-scored float32 images, mask)``.
    """
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    images = np.asarray(images, np.float32)
    mask = create_nonzero_mask(images)
    out = np.zeros_like(images)
    for c, image in enumerate(images):
        values = image[mask]
        out[c][mask] = (values - values.mean()) / max(float(values.std()), 1e-8)
    return out, mask


def load_case(raw_dataset: str | os.PathLike, case: str, n_channels: int, file_ending: str = ".nii.gz",
              with_label: bool = True) -> Case:
    """Read ``imagesTr/{case}_{c:04d}`` and ``labelsTr/{case}`` of an nnU-Net raw dataset and z-score the images.

    Raises:
        FileNotFoundError: a file is missing (named).
    """
    folder = Path(raw_dataset)
    files = [folder / "imagesTr" / f"{case}_{c:04d}{file_ending}" for c in range(n_channels)]
    label_file = folder / "labelsTr" / f"{case}{file_ending}"
    for f in files + ([label_file] if with_label else []):
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: the baseline reads the raw dataset that `nnunetv2_ext proxy "
                                    f"make` wrote")
    reference = sitk.ReadImage(str(files[0]))
    z, mask = zscore(np.stack([sitk.GetArrayFromImage(reference)]
                              + [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files[1:]]))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))) if with_label else None
    return Case(case, z, mask, label, reference)


def _dataset_regions(dataset_json: Mapping[str, Any]) -> tuple[dict[str, list[int]], list[int], list[str]]:
    """(regions in order, the label each is painted with, channel names)."""
    from nnunetv2_ext.evaluation.metrics import regions_from_dataset_json

    regions = regions_from_dataset_json(dataset_json)
    order = dataset_json.get("regions_class_order")
    if order is None:  # a plain label dataset: each region is one label, painted with itself
        order = [labels[0] for labels in regions.values()]
    if len(order) != len(regions):
        raise ValueError(f"dataset.json has {len(regions)} regions ({list(regions)}) but regions_class_order "
                         f"{order}: give one label per region")
    channels = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
    return regions, [int(v) for v in order], channels


def _counts(values: np.ndarray, direction: str, thresholds: np.ndarray) -> np.ndarray:
    """Number of ``values`` that are ``direction`` each threshold (``>``: above, ``<``: below)."""
    values = np.sort(values.ravel())
    if direction == ">":
        return values.size - np.searchsorted(values, thresholds, side="right")
    return np.searchsorted(values, thresholds, side="left")


def _dice(tp: np.ndarray, n_pred: np.ndarray, n_ref: int) -> np.ndarray:
    total = n_pred + n_ref
    return np.where(total > 0, 2.0 * tp / np.maximum(total, 1), 1.0)


def fit_thresholds(cases: Sequence[Case], dataset_json: Mapping[str, Any],
                   thresholds: np.ndarray = THRESHOLDS) -> list[RegionRule]:
    """The best single-modality threshold per region on ``cases`` (the training pool; never the test cases).

    For every region, modality, direction and threshold, the mean over ``cases`` of the Dice of the painted label
    map (see the module docstring); regions are fitted from the last painted to the first. Ties go to the first
    modality, then ``>``, then the lower threshold.

    Args:
        cases: labelled cases (z-scored images, mask, label).
        dataset_json: the dataset's ``dataset.json`` (dict): regions, ``regions_class_order``, channel names.
        thresholds: z-score thresholds to search.

    Returns:
        One :class:`RegionRule` per region, in the dataset's region order.

    Raises:
        ValueError: no case, or a case without a label.
    """
    if not cases:
        raise ValueError("fit_thresholds needs at least one labelled case (the training pool)")
    unlabelled = [c.name for c in cases if c.label is None]
    if unlabelled:
        raise ValueError(f"cases {unlabelled} have no label; the thresholds are fitted on labelled cases only")
    regions, order, channels = _dataset_regions(dataset_json)
    names = list(regions)
    thresholds = np.asarray(thresholds, np.float64)
    painted = [np.zeros(c.mask.shape, np.uint8) for c in cases]  # labels painted by the regions fitted so far
    rules: dict[str, RegionRule] = {}
    for i in reversed(range(len(names))):
        region, labels = names[i], regions[names[i]]
        scores = np.zeros((len(channels), len(DIRECTIONS), thresholds.size))
        for case, done in zip(cases, painted):
            ref = np.isin(case.label, labels)
            fixed = np.isin(done, labels)                   # painted later with a label of this region
            free = case.mask & (done == 0)                  # voxels this region's mask decides
            tp0, pred0 = int((fixed & ref).sum()), int(fixed.sum())
            n_ref = int(ref.sum())
            free_ref = free & ref
            for c in range(len(channels)):
                for d, direction in enumerate(DIRECTIONS):
                    n_pred = pred0 + _counts(case.z[c][free], direction, thresholds)
                    tp = tp0 + _counts(case.z[c][free_ref], direction, thresholds)
                    scores[c, d] += _dice(tp, n_pred, n_ref)
        scores /= len(cases)
        c, d, t = np.unravel_index(int(np.argmax(scores)), scores.shape)
        rule = RegionRule(region, order[i], channels[c], int(c), DIRECTIONS[d], float(thresholds[t]),
                          float(scores[c, d, t]))
        rules[region] = rule
        for case, done in zip(cases, painted):
            done[(done == 0) & _rule_mask(rule, case)] = rule.label
    return [rules[r] for r in names]


def _rule_mask(rule: RegionRule, case: Case) -> np.ndarray:
    z = case.z[rule.channel]
    return case.mask & (z > rule.threshold if rule.direction == ">" else z < rule.threshold)


def predict_thresholds(rules: Sequence[RegionRule], case: Case) -> np.ndarray:
    """uint8 label map: each rule's mask painted with its label, in the order of ``rules`` (later ones win)."""
    out = np.zeros(case.mask.shape, np.uint8)
    for rule in rules:
        out[_rule_mask(rule, case)] = rule.label
    return out


def region_dice(reference: np.ndarray, prediction: np.ndarray, regions: Mapping[str, Sequence[int]]) -> dict:
    """Dice per region of two label maps (1.0 when both are empty)."""
    out = {}
    for name, labels in regions.items():
        ref, pred = np.isin(reference, labels), np.isin(prediction, labels)
        total = int(ref.sum() + pred.sum())
        out[name] = 1.0 if total == 0 else 2.0 * float((ref & pred).sum()) / total
    return out


# ------------------------------------------------------------------------------------------- voxel classifier
def _features(z: np.ndarray) -> np.ndarray:
    """``(n, C)`` z-scores -> ``(n, 1 + C + C (C + 1) / 2)``: constant, linear and quadratic terms."""
    n, c = z.shape
    quad = [z[:, i] * z[:, j] for i in range(c) for j in range(i, c)]
    return np.column_stack([np.ones(n, np.float32), z, *quad]).astype(np.float64)


@dataclass(frozen=True)
class VoxelClassifier:
    """One logistic regression per region (region vs the rest) on :func:`_features` of a voxel's z-scores, and a
    threshold per region on their logits fitted like the single-modality thresholds (:func:`fit_thresholds` on the
    logit maps, painted in ``regions_class_order``)."""
    weights: np.ndarray  # (n_features, n_regions)
    rules: tuple         # RegionRule per region, on the logit "channels"

    def logits(self, case: Case) -> Case:
        """The case with its images replaced by one logit map per region (0 outside the mask)."""
        out = np.zeros((self.weights.shape[1], *case.mask.shape), np.float32)
        out[:, case.mask] = (_features(case.z[:, case.mask].T) @ self.weights).T
        return Case(case.name, out, case.mask, case.label, case.reference)

    def predict(self, case: Case) -> np.ndarray:
        """uint8 label map."""
        return predict_thresholds(self.rules, self.logits(case))


def _logistic(features: np.ndarray, target: np.ndarray, l2: float, iterations: int = 25) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (iteratively reweighted least squares); the
    constant term is not penalised."""
    n, k = features.shape
    penalty = np.full(k, l2 * n)
    penalty[0] = 0.0
    w = np.zeros(k)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(features @ w)))
        grad = features.T @ (p - target) + penalty * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features + np.diag(penalty + 1e-9 * n)
        step = np.linalg.solve(hessian, grad)
        w -= step
        if np.abs(step).max() < 1e-6:
            break
    return w


def fit_voxel_classifier(cases: Sequence[Case], dataset_json: Mapping[str, Any], max_voxels: int = 300_000,
                         l2: float = 1e-4, seed: int = 0) -> VoxelClassifier:
    """Fit :class:`VoxelClassifier` on the non-zero-mask voxels of ``cases`` (the training pool).

    Up to ``max_voxels`` voxels are drawn (seeded), a third from the lesion and the rest from the whole mask, so
    that small regions are seen; the logit thresholds (fitted on all voxels) undo that sampling's bias.
    """
    regions, _, _ = _dataset_regions(dataset_json)
    rng = np.random.default_rng(seed)
    x = np.concatenate([c.z[:, c.mask].T for c in cases])
    y = np.concatenate([c.label[c.mask] for c in cases])
    lesion = np.flatnonzero(y > 0)
    keep = np.concatenate([rng.choice(lesion, min(max_voxels // 3, lesion.size), replace=False),
                           rng.choice(y.size, min(max_voxels - max_voxels // 3, y.size), replace=False)])
    features = _features(x[keep])
    weights = np.stack([_logistic(features, np.isin(y[keep], labels).astype(np.float64), l2)
                        for labels in regions.values()], 1)
    logit_json = {**dataset_json, "channel_names": {str(i): f"logit {r}" for i, r in enumerate(regions)}}
    provisional = VoxelClassifier(weights, ())
    rules = fit_thresholds([provisional.logits(c) for c in cases], logit_json,
                           thresholds=np.round(np.arange(-8.0, 8.0 + 1e-9, 0.1), 2))
    return VoxelClassifier(weights, tuple(rules))


# ------------------------------------------------------------------------------------------------ benchmark
def run_threshold_baseline(raw_dataset: str | os.PathLike, train_cases: Sequence[str], test_cases: Sequence[str],
                           out_dir: str | os.PathLike) -> Path:
    """Fit the thresholds on ``train_cases`` and write the test cases' predictions to ``out_dir/validation``.

    ``out_dir`` then looks like an nnU-Net fold folder to :func:`nnunetv2_ext.proxy.analysis.score_runs`; the rules
    go to ``out_dir/threshold_rules.json``. Nothing is recomputed when that file exists for the same cases and
    every prediction is there (the scores are cached by the scoring itself).

    Args:
        raw_dataset: the target dataset's raw folder (``imagesTr``, ``labelsTr``, ``dataset.json``).
        train_cases: the training pool (the thresholds are chosen on these only).
        test_cases: the held-out test cases.
        out_dir: output folder (created).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: a case is in both lists, or either list is empty.
        FileNotFoundError: a raw file is missing.
    """
    train_cases, test_cases = list(train_cases), list(test_cases)
    if not train_cases or not test_cases:
        raise ValueError(f"the threshold baseline needs training and test cases; got {len(train_cases)} and "
                         f"{len(test_cases)}")
    shared = sorted(set(train_cases) & set(test_cases))
    if shared:
        raise ValueError(f"cases {shared} are both training and test cases; the thresholds must never see a test case")
    raw, out = Path(raw_dataset), Path(out_dir)
    validation = out / "validation"
    dataset_json = load_json(raw / "dataset.json")
    ending = dataset_json.get("file_ending", ".nii.gz")
    rules_file = out / RULES_FILE
    if rules_file.is_file() and all((validation / f"{c}{ending}").is_file() for c in test_cases):
        stored = load_json(rules_file)
        if stored.get("train_cases") == train_cases and stored.get("test_cases") == test_cases:
            return out
    n_channels = len(dataset_json["channel_names"])
    rules = fit_thresholds([load_case(raw, c, n_channels, ending) for c in train_cases], dataset_json)
    validation.mkdir(parents=True, exist_ok=True)
    for name in test_cases:
        case = load_case(raw, name, n_channels, ending, with_label=False)
        image = sitk.GetImageFromArray(predict_thresholds(rules, case))
        image.CopyInformation(case.reference)
        sitk.WriteImage(image, str(validation / f"{name}{ending}"), useCompression=True)
    atomic_write_json({"method": LABEL, "rules": [asdict(r) for r in rules], "train_cases": train_cases,
                       "test_cases": test_cases, "thresholds_searched": [float(THRESHOLDS[0]), float(THRESHOLDS[-1]),
                                                                         float(THRESHOLDS[1] - THRESHOLDS[0])]},
                      rules_file, overwrite=True)
    return out


def mean_region_dice(predictions: Iterable[tuple[np.ndarray, np.ndarray]],
                     regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Mean over cases of :func:`region_dice` of ``(reference, prediction)`` pairs, plus ``"mean"`` over regions."""
    per_case = [region_dice(ref, pred, regions) for ref, pred in predictions]
    out = {r: float(np.mean([d[r] for d in per_case])) for r in regions}
    out["mean"] = float(np.mean([np.mean(list(d.values())) for d in per_case])) if per_case else math.nan
    return out
