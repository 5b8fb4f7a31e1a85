"""Per-case, per-region segmentation metrics and a folder evaluator.

Overlap metrics follow the definitions of the multi-encoder nnU-Net paper (Taheri Otaghsara et al. 2025, "Multi-encoder
nnU-Net outperforms Transformer models with self-supervised pretraining", section 5: Eq. 3 DSC, ACC, Eq. 4 SE, SP, Eq. 5
PRE); lesion-wise metrics follow BrainSegFounder (Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models for
Neuroimage Segmentation", section 2.2.3), which takes them from the ATLAS v2.0 challenge (Liew et al., 2022). Surface
distances (HD95, ASSD) are computed with MONAI, spacing-aware.

Conventions shared by every function here:

- Arrays are indexed in numpy order ``(z, y, x)`` and ``spacing`` is given in the same order, in mm
  (SimpleITK's ``GetSpacing()`` is ``(x, y, z)`` and is reversed when images are read).
- A ratio whose denominator is zero and for which no convention is stated is ``NaN`` ("undefined"); the
  means computed by :func:`evaluate_folders` skip NaNs. Dice/Jaccard/HD95/ASSD of empty masks follow the
  BraTS convention documented in :func:`overlap_metrics` and :func:`surface_metrics`.
"""
from __future__ import annotations

import csv
import math
import multiprocessing
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from nnunetv2_ext.io_utils import atomic_write_json, json_safe, load_json

#: Dataset137 (nnU-Net's BraTS 2021 conversion) labels: 1 edema, 2 necrosis/non-enhancing core, 3 enhancing.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}

#: Short names for nnU-Net region labels, matched case-insensitively with '_' read as ' '.
REGION_ALIASES: dict[str, str] = {"whole tumor": "WT", "tumor core": "TC", "enhancing tumor": "ET",
                                  "resection cavity": "RC"}

#: Keys returned per region by :func:`case_metrics`, in the order used for the CSV columns.
METRIC_NAMES: tuple[str, ...] = (
    "dice", "jaccard", "sensitivity", "specificity", "precision", "accuracy",
    "hd95_mm", "assd_mm",
    "lesion_precision", "lesion_recall", "lesion_f1", "lesion_count_diff", "abs_lesion_count_diff",
    "n_ref_lesions", "n_pred_lesions",
    "volume_ref_ml", "volume_pred_ml", "abs_volume_diff_ml", "abs_volume_diff_voxels",
    "tp", "fp", "fn", "tn",
)

#: Connected-component connectivity per image dimensionality (full neighbourhood: 26 in 3D, as in ATLAS).
LESION_CONNECTIVITY: dict[int, int] = {2: 8, 3: 26}


def _as_masks(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if ref.shape != pred.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {ref.shape} and {pred.shape}")
    return ref, pred


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(spacing) != ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must hold {ndim} positive finite values in numpy axis order (mm), got {spacing}")
    return spacing


def confusion(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """Voxel counts ``(tp, fp, fn, tn)`` of a binary prediction against a binary reference.

    Args:
        ref: reference mask (anything non-zero is foreground).
        pred: predicted mask of the same shape.

    Raises:
        ValueError: the shapes differ.
    """
    ref, pred = _as_masks(ref, pred)
    tp = int(np.count_nonzero(ref & pred))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    tn = int(ref.size) - tp - fp - fn
    return tp, fp, fn, tn


def overlap_metrics(ref: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Voxel-wise overlap metrics of Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net), section 5
    (P = prediction, G = reference).

    - ``dice`` = 2|P ∩ G| / (|P| + |G|) (Eq. 3) = 2TP / (2TP + FP + FN)
    - ``jaccard`` = |P ∩ G| / |P ∪ G| = TP / (TP + FP + FN)
    - ``sensitivity`` = |P ∩ G| / |G| (Eq. 4) = TP / (TP + FN)
    - ``specificity`` = |Pᶜ ∩ Gᶜ| / |Gᶜ| (section 5.4) = TN / (TN + FP)
    - ``precision`` = |P ∩ G| / |P| (Eq. 5) = TP / (TP + FP)
    - ``accuracy`` = (TP + TN) / (TP + TN + FP + FN) (section 5.2)

    plus the counts ``tp``, ``fp``, ``fn``, ``tn``.

    Empty masks (BraTS convention): both empty -> Dice = Jaccard = 1; exactly one empty -> Dice = Jaccard = 0
    (which the formulas give). Sensitivity with an empty reference, precision with an empty prediction and
    specificity with an all-foreground reference are 0/0 and returned as NaN.
    """
    tp, fp, fn, tn = confusion(ref, pred)
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2.0 * tp / (2 * tp + fp + fn),
        "jaccard": 1.0 if both_empty else tp / (tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def surface_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """95th-percentile Hausdorff distance and average symmetric surface distance, in mm.

    Computed with MONAI (``compute_hausdorff_distance(percentile=95)`` and
    ``compute_average_surface_distance(symmetric=True)``) on one-hot tensors of shape ``(1, 1, *shape)``,
    with the voxel ``spacing`` so that anisotropic images give physical distances.

    Empty masks (BraTS convention): both empty -> HD95 = ASSD = 0; exactly one empty -> HD95 = ASSD = the
    image diagonal ``sqrt(sum((shape * spacing) ** 2))`` in mm, the largest distance possible in the image.

    Args:
        ref: reference mask.
        pred: predicted mask of the same shape.
        spacing: voxel size in mm, in numpy axis order (one value per axis of ``ref``).

    Returns:
        ``{'hd95_mm': float, 'assd_mm': float}``

    Raises:
        ValueError: the shapes differ or ``spacing`` does not match the dimensionality.
    """
    ref, pred = _as_masks(ref, pred)
    spacing = _check_spacing(spacing, ref.ndim)
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return {"hd95_mm": 0.0, "assd_mm": 0.0}
    if has_ref != has_pred:
        diagonal = float(np.sqrt(np.sum((np.asarray(ref.shape) * np.asarray(spacing)) ** 2)))
        return {"hd95_mm": diagonal, "assd_mm": diagonal}

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    y = torch.from_numpy(np.ascontiguousarray(ref))[None, None]
    y_pred = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes to itself
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                spacing=spacing)
    return {"hd95_mm": float(hd95.reshape(-1)[0]), "assd_mm": float(assd.reshape(-1)[0])}


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    import cc3d

    if mask.ndim not in LESION_CONNECTIVITY:
        raise ValueError(f"lesion metrics need a 2D or 3D mask, got {mask.ndim} dimensions")
    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=LESION_CONNECTIVITY[mask.ndim],
                                          return_N=True)
    return labels, int(n)


def lesion_metrics(ref: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Lesion-wise detection metrics of Cox et al. 2024 (BrainSegFounder), section 2.2.3 (ATLAS v2.0, Liew et al. 2022).

    Lesions are the 3D connected components (26-connectivity; 8 in 2D) of each mask. Following the paper:
    "a true positive is any 3D connected component in the ground-truth image that overlaps with at least one
    voxel in the prediction image", "a false positive is any 3D connected component in the prediction image
    that does not overlap with the ground-truth image", and "a false negative is a connected component in the
    ground truth that lacks overlapping voxels in the prediction image". Hence

    - ``lesion_f1`` = 2TP / (2TP + FP + FN), TP counted on reference lesions (the challenge's lesion-wise F1);
    - ``lesion_recall`` = TP / n_ref (reference lesions detected);
    - ``lesion_precision`` = (predicted lesions overlapping any reference lesion) / n_pred = 1 - FP / n_pred;
    - ``lesion_count_diff`` = n_pred - n_ref (signed) and ``abs_lesion_count_diff`` = |n_pred - n_ref|,
      the challenge's "simple lesion count";
    - ``n_ref_lesions``, ``n_pred_lesions``.

    When one predicted lesion merges several reference lesions the F1 above is not the harmonic mean of
    ``lesion_precision`` and ``lesion_recall``; the paper's F1 is the one reported. Both masks empty ->
    F1 = 1; recall (no reference lesion) and precision (no predicted lesion) are 0/0 -> NaN.
    """
    ref, pred = _as_masks(ref, pred)
    ref_cc, n_ref = _components(ref)
    pred_cc, n_pred = _components(pred)
    detected_ref = np.unique(ref_cc[pred & (ref_cc > 0)]).size
    matched_pred = np.unique(pred_cc[ref & (pred_cc > 0)]).size
    tp, fn, fp = detected_ref, n_ref - detected_ref, n_pred - matched_pred
    return {
        "lesion_precision": _ratio(matched_pred, n_pred),
        "lesion_recall": _ratio(tp, n_ref),
        "lesion_f1": 1.0 if n_ref == n_pred == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "lesion_count_diff": n_pred - n_ref,
        "abs_lesion_count_diff": abs(n_pred - n_ref),
        "n_ref_lesions": n_ref,
        "n_pred_lesions": n_pred,
    }


def case_metrics(ref_label: np.ndarray, pred_label: np.ndarray, spacing: Sequence[float],
                 regions: Mapping[str, Sequence[int]]) -> dict[str, dict[str, float]]:
    """All metrics of one case, per region.

    A region is the union of its labels (e.g. BraTS ``{'WT': [1, 2, 3], 'TC': [2, 3], 'ET': [3]}``). Per region
    it returns :func:`overlap_metrics`, :func:`surface_metrics` and :func:`lesion_metrics`, plus
    ``volume_ref_ml``, ``volume_pred_ml``, ``abs_volume_diff_ml`` (voxel volume = prod(spacing) mm³ / 1000) and
    ``abs_volume_diff_voxels``.

    Args:
        ref_label: reference label map (integers).
        pred_label: predicted label map of the same shape.
        spacing: voxel size in mm, numpy axis order.
        regions: region name -> labels it unites.

    Raises:
        ValueError: shapes differ, the spacing does not fit, or a region has no labels.
    """
    ref_label, pred_label = np.asarray(ref_label), np.asarray(pred_label)
    if ref_label.shape != pred_label.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {ref_label.shape} and "
                         f"{pred_label.shape}")
    spacing = _check_spacing(spacing, ref_label.ndim)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out: dict[str, dict[str, float]] = {}
    for name, labels in regions.items():
        labels = [int(v) for v in np.atleast_1d(labels)]
        if not labels:
            raise ValueError(f"region {name!r} lists no labels")
        ref, pred = np.isin(ref_label, labels), np.isin(pred_label, labels)
        metrics: dict[str, float] = {}
        metrics.update(overlap_metrics(ref, pred))
        metrics.update(surface_metrics(ref, pred, spacing))
        metrics.update(lesion_metrics(ref, pred))
        n_ref, n_pred = metrics["tp"] + metrics["fn"], metrics["tp"] + metrics["fp"]
        metrics.update({
            "volume_ref_ml": n_ref * voxel_ml,
            "volume_pred_ml": n_pred * voxel_ml,
            "abs_volume_diff_ml": abs(n_pred - n_ref) * voxel_ml,
            "abs_volume_diff_voxels": abs(n_pred - n_ref),
        })
        out[name] = {k: metrics[k] for k in METRIC_NAMES}
    return out


def brats_regions() -> dict[str, list[int]]:
    """BraTS evaluation regions in nnU-Net's Dataset137 label convention (1 edema, 2 necrosis, 3 enhancing)."""
    return {name: list(labels) for name, labels in BRATS_REGIONS.items()}


def regions_from_dataset_json(dataset_json: Mapping[str, Any] | str | os.PathLike) -> dict[str, list[int]]:
    """Evaluation regions of an nnU-Net ``dataset.json`` (a dict or its path).

    Region datasets (some label is a list/tuple of more than one value, nnU-Net's own test): one region per
    non-background label, named by :data:`REGION_ALIASES` ('whole tumor' -> 'WT', 'tumor core' -> 'TC',
    'enhancing tumor' -> 'ET', 'resection cavity' -> 'RC') or else by the label name, with the label values it
    lists. Other datasets: one region per foreground label, ``{name: [value]}``. The ``ignore`` label is never a
    region.

    Raises:
        ValueError: there is no ``labels`` dict or it declares no foreground label.
    """
    if not isinstance(dataset_json, Mapping):
        dataset_json = load_json(dataset_json)
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping):
        raise ValueError("dataset.json has no 'labels' dict (expected e.g. {'background': 0, 'tumor': 1})")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    regions: dict[str, list[int]] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        values = sorted({int(v) for v in np.atleast_1d(value)})
        if values == [0] or (not has_regions and 0 in values):
            continue
        key = REGION_ALIASES.get(name.strip().lower().replace("_", " "), name) if has_regions else name
        regions[key] = values
    if not regions:
        raise ValueError(f"dataset.json declares no foreground label: {dict(labels)}")
    return regions


def _read_label(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in image.GetSpacing()[::-1])


def _evaluate_case(args: tuple) -> tuple[str, dict[str, dict[str, float]]]:
    case, ref_file, pred_file, regions, lesion_wise = args
    ref, ref_spacing = _read_label(Path(ref_file))
    pred, pred_spacing = _read_label(Path(pred_file))
    if ref.shape != pred.shape:
        raise ValueError(f"case {case}: reference {ref_file} has shape {ref.shape} but prediction {pred_file} has "
                         f"{pred.shape} (numpy order); predictions must be in the reference image geometry")
    if not np.allclose(ref_spacing, pred_spacing, rtol=1e-3, atol=1e-5):
        raise ValueError(f"case {case}: reference spacing {ref_spacing} differs from prediction spacing "
                         f"{pred_spacing} (numpy order, mm)")
    metrics = case_metrics(ref, pred, ref_spacing, regions)
    if lesion_wise is not None:
        from nnunetv2_ext.evaluation.lesionwise import lesionwise_metrics

        definition, labels, lw_regions = lesion_wise
        for region, values in lesionwise_metrics(ref, pred, ref_spacing, definition, labels, lw_regions).items():
            metrics[region].update(values)
    return case, metrics


#: Label names (lower case, '_' as ' ') of the necrosis / non-enhancing core and of the edema / SNFH.
_NETC_NAMES = {"ncr", "netc", "necrosis", "necrotic core", "necrotic tumor core", "non enhancing tumor core",
               "necrotic and non enhancing tumor core"}
_SNFH_NAMES = {"ed", "edema", "oedema", "snfh", "peritumoral edema", "surrounding non enhancing flair hyperintensity"}


def _infer_brats_labels(dataset_json: Mapping[str, Any], regions: Mapping[str, Sequence[int]]) -> str:
    """``'challenge'`` (1 NETC, 2 SNFH, 3 ET, 4 RC) or ``'nnunet'`` (Dataset137: 1 SNFH, 2 NETC, 3 ET, 4 RC) from the
    dataset's tumour-core region ((1, 3) or (2, 3)), else from its label names (e.g. 'NCR': 1 or 'edema': 1), else
    ``'nnunet'`` when ``convert_brats`` wrote it (``"brats_layout"``).

    Raises:
        ValueError: none of these tells (pass ``--brats-labels``).
    """
    tc = sorted(regions.get("TC", []))
    if tc in ([1, 3], [2, 3]):
        return "challenge" if tc == [1, 3] else "nnunet"
    for name, value in dataset_json["labels"].items():
        values = [int(v) for v in np.atleast_1d(value)]
        key = name.strip().lower().replace("_", " ").replace("-", " ")
        if len(values) == 1 and values[0] in (1, 2) and (key in _NETC_NAMES or key in _SNFH_NAMES):
            return "challenge" if (values[0] == 1) == (key in _NETC_NAMES) else "nnunet"
    if "brats_layout" in dataset_json:
        return "nnunet"
    raise ValueError(f"cannot tell the BraTS label convention of the dataset.json labels {dict(dataset_json['labels'])}"
                     f" (no tumour core region (1, 3) or (2, 3), no necrosis or edema label named); pass "
                     f"--brats-labels challenge (1 NETC, 2 SNFH, 3 ET) or nnunet (1 edema, 2 necrosis, 3 ET)")


def _lesion_wise_setup(lesion_wise: str, lesion_labels: Mapping[str, int] | str | None,
                       dataset_json: Mapping[str, Any], regions: dict[str, list[int]]
                       ) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The lesion-wise job settings and the regions to evaluate (those of the dataset plus the definition's).

    A definition region is evaluated when the dataset declares all its label values (RC needs a label 4). Without
    ``lesion_labels`` the convention is read from the dataset.json by :func:`_infer_brats_labels`.
    """
    from nnunetv2_ext.evaluation.lesionwise import CHALLENGE_LABELS, NNUNET_LABELS, get_definition, region_values

    definition = get_definition(lesion_wise)
    conventions = {"challenge": CHALLENGE_LABELS, "nnunet": NNUNET_LABELS}
    if lesion_labels is None:
        lesion_labels = conventions[_infer_brats_labels(dataset_json, regions)]
    elif isinstance(lesion_labels, str):
        if lesion_labels not in conventions:
            raise ValueError(f"unknown BraTS label convention {lesion_labels!r}; expected 'challenge' (1 NETC, "
                             f"2 SNFH, 3 ET, 4 RC) or 'nnunet' (1 SNFH, 2 NETC, 3 ET, 4 RC) (--brats-labels)")
        lesion_labels = conventions[lesion_labels]
    declared = {int(v) for name, value in dataset_json["labels"].items() if name != "ignore"
                for v in np.atleast_1d(value)}
    wanted = {name: values for name, values in region_values(definition, lesion_labels).items()
              if set(values) <= declared}
    if not wanted:
        raise ValueError(f"the dataset.json declares label values {sorted(declared)}, which hold none of the BraTS "
                         f"{definition.name} regions {region_values(definition, lesion_labels)}")
    for name, values in wanted.items():
        if name in regions and sorted(regions[name]) != values:
            raise ValueError(f"region {name} is {sorted(regions[name])} in the dataset.json but {values} under the "
                             f"tissue labels {dict(lesion_labels)}; pass the label convention of the dataset "
                             f"(--brats-labels challenge|nnunet)")
    settings = {"definition": definition.name, "source": definition.source, "labels": dict(lesion_labels),
                "regions": wanted, "metrics": list(definition.metric_names())}
    return settings, {**regions, **{k: v for k, v in wanted.items() if k not in regions}}


def _nan_stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std())


def evaluate_folders(ref_dir: str | os.PathLike, pred_dir: str | os.PathLike,
                     dataset_json: Mapping[str, Any] | str | os.PathLike, file_ending: str = ".nii.gz",
                     num_processes: int = 1, output: str | os.PathLike | None = None,
                     strict: bool = True, lesion_wise: str | None = None,
                     lesion_labels: Mapping[str, int] | str | None = None, overwrite: bool = False,
                     progress: bool = False) -> dict[str, Any]:
    """Evaluate every prediction in ``pred_dir`` against the same-named reference in ``ref_dir``.

    Images are read with SimpleITK; the spacing comes from the reference image, reversed to numpy order.
    Regions come from :func:`regions_from_dataset_json`. Cases are computed with :func:`case_metrics`, in a
    multiprocessing pool (``fork`` where available, else ``spawn``) when ``num_processes > 1``.

    Args:
        ref_dir: folder of reference label files (e.g. ``labelsTr`` or ``gt_segmentations``).
        pred_dir: folder of predicted label files, named like the references.
        dataset_json: the dataset's ``dataset.json`` (dict or path).
        file_ending: file ending of both folders.
        num_processes: worker processes (1 = no pool).
        output: if given, the summary is written there as JSON (NaN written as null) and one row per
            case x region to the same path with suffix ``.csv``.
        strict: if False, a prediction folder holding fewer files than the reference folder is evaluated on
            the cases it has (e.g. a validation fold); if True every reference case needs a prediction.
        lesion_wise: a BraTS lesion-wise definition (``'2023'``, ``'2023-MEN'``, ``'2023-MET'``, ``'2024'``, see
            :mod:`nnunetv2_ext.evaluation.lesionwise`): its scores (``brats_lesion_dice``,
            ``brats_lesion_hd95_mm``, 2024 also ``brats_lesion_nsd_0.5mm`` / ``_1mm``, lesion counts) are added
            to each region it defines and the dataset declares (2024: WT, TC, NETC, SNFH, ET and, with a label 4,
            RC); its regions missing from the dataset.json get the global metrics too.
        lesion_labels: challenge tissue (NETC, SNFH, ET, RC) -> label value, or ``'challenge'`` / ``'nnunet'``
            for :data:`~nnunetv2_ext.evaluation.lesionwise.CHALLENGE_LABELS` /
            :data:`~nnunetv2_ext.evaluation.lesionwise.NNUNET_LABELS`; default: inferred (see
            :func:`_lesion_wise_setup`).
        overwrite: replace an existing ``output`` (and its ``.csv``); without it they are refused before any
            case is scored.
        progress: a tqdm bar over the cases on stderr.

    Returns:
        ``{'cases': {case: {region: {metric: value}}}, 'mean': {region: {metric: mean}},
        'std': {region: {metric: std}}, 'n_cases': int}`` plus, with ``lesion_wise``, ``'lesion_wise'``: the
        definition, its source, the tissue labels, the regions and metric names; means and stds skip NaN values.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: predictions are missing for reference cases (listed), a prediction has no reference,
            nothing is to be evaluated, a case's reference and prediction differ in shape (named), or (with
            ``lesion_wise``) the definition is unknown, the label convention cannot be told or contradicts the
            dataset's regions.
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    for folder in (ref_dir, pred_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    if num_processes < 1:
        raise ValueError(f"-np (worker processes) must be >= 1, got {num_processes}")
    if output is not None and not overwrite:
        for path in (Path(output), Path(output).with_suffix(".csv")):
            if path.exists():
                raise FileExistsError(f"{path} already exists; use --overwrite to replace it")
    if not isinstance(dataset_json, Mapping):
        dataset_json = load_json(dataset_json)
    regions = regions_from_dataset_json(dataset_json)
    lw_settings, lw_job = None, None
    if lesion_wise is not None:
        lw_settings, regions = _lesion_wise_setup(lesion_wise, lesion_labels, dataset_json, regions)
        lw_job = (lw_settings["definition"], lw_settings["labels"], list(lw_settings["regions"]))

    def cases_in(folder: Path) -> dict[str, Path]:
        return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
                if p.is_file() and p.name.endswith(file_ending) and not p.name.startswith(".")}

    refs, preds = cases_in(ref_dir), cases_in(pred_dir)
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        raise ValueError(f"{len(no_ref)} prediction(s) in {pred_dir} have no reference in {ref_dir}: {no_ref[:10]}")
    missing = sorted(set(refs) - set(preds))
    if missing and (strict or len(preds) >= len(refs)):
        raise ValueError(f"{len(missing)} reference case(s) in {ref_dir} have no prediction{file_ending} in "
                         f"{pred_dir}: {missing[:10]}{' ...' if len(missing) > 10 else ''}; predict them, or use "
                         f"--partial to evaluate only the predicted cases")
    if not preds:
        raise ValueError(f"no *{file_ending} predictions in {pred_dir}")

    jobs = [(case, str(refs[case]), str(preds[case]), regions, lw_job) for case in sorted(preds)]
    with tqdm(total=len(jobs), desc=f"evaluate {pred_dir.name}", file=sys.stderr, disable=not progress) as bar:
        if num_processes == 1:
            results = []
            for job in jobs:
                results.append(_evaluate_case(job))
                bar.update()
        else:
            # fork: workers inherit the imported MONAI/torch (seconds to import); they never touch CUDA
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(min(num_processes, len(jobs))) as pool:
                results = []
                for result in pool.imap(_evaluate_case, jobs):
                    results.append(result)
                    bar.update()
    cases = dict(results)

    mean: dict[str, dict[str, float]] = {}
    std: dict[str, dict[str, float]] = {}
    lw_names = list(lw_settings["metrics"]) if lw_settings else []
    columns = [*METRIC_NAMES, *lw_names]
    for region in regions:
        mean[region], std[region] = {}, {}
        for metric in columns:
            if all(metric in cases[c][region] for c in cases):
                mean[region][metric], std[region][metric] = _nan_stats([cases[c][region][metric] for c in cases])
    summary = {"cases": cases, "mean": mean, "std": std, "n_cases": len(cases)}
    if lw_settings:
        summary["lesion_wise"] = lw_settings

    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_safe(summary), output, overwrite=True)
        with open(output.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "region", *columns])
            for case, per_region in cases.items():
                for region, metrics in per_region.items():
                    writer.writerow([case, region, *(metrics.get(m, "") for m in columns)])
    return summary
