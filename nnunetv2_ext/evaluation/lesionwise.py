"""The BraTS challenges' lesion-wise Dice, HD95 (and NSD), as their official evaluation computes them.

BraTS ranks teams since 2023 by lesion-wise metrics (Fathi Kazerooni et al. 2023, "The Brain Tumor Segmentation (BraTS)
Challenge 2023: Focus on Pediatrics (CBTN-CONNECT-DIPGR-ASNR-MICCAI BraTS-PEDs)", arXiv:2305.17033; LaBella et al.
2023, "The ASNR-MICCAI Brain Tumor Segmentation (BraTS) Challenge 2023: Intracranial Meningioma",
arXiv:2305.07642; de Verdier et al. 2024, "The 2024 Brain Tumor Segmentation (BraTS) Challenge: Glioma
Segmentation on Post-treatment MRI", arXiv:2405.18368). The definitions here follow the challenge's own scripts,
read, not copied: R. Saluja, github.com/rachitsaluja/BraTS-2023-Metrics (``metrics.py``, used by the Synapse
evaluation of BraTS 2023) for ``'2023'`` and github.com/rachitsaluja/BraTS-2024-Metrics (``metrics_GLI.py``) for
``'2024'`` (adult glioma, post-treatment). Per region and case:

1. Region masks from the challenge tissues (:data:`CHALLENGE_LABELS`), e.g. WT = NETC|SNFH|ET, TC = NETC|ET.
2. Reference lesions: 26-connected components of the reference, where components that fall into one
   26-connected component of the reference dilated ``dilation`` times (``scipy.ndimage.binary_dilation``,
   18-connected structuring element ``generate_binary_structure(3, 2)``) are one lesion.
3. Predicted lesions: 26-connected components of the prediction (2023). In 2024 they are combined by dilation
   exactly as the reference, and predicted lesions of at most ``min_volume`` voxels are deleted.
4. 2024 sub-regions (NETC, SNFH, ET, RC) also merge lesions across tissues, in reference and prediction alike:
   the lesions of the region that touch (18-neighbourhood) a lesion of a partner tissue (:attr:`Region.partners`,
   in order) are regrouped by the first (lowest-numbered) partner lesion they touch.
5. A reference lesion is matched to *all* predicted lesions that overlap it dilated ``dilation`` times; its Dice
   and HD95 are those between the lesion and the union of its matches (no match: Dice 0, HD95 the penalty,
   NSD 0). A predicted lesion matched by no reference lesion is a false positive (Dice 0, HD95 the penalty, NSD 0).
6. Reference lesions of volume <= ``min_volume`` mm³ are left out of the score (their matches are not false
   positives). The case score is sum(lesion scores) / (kept reference lesions + false positives), with the
   penalty HD95 for each false positive; with no kept lesion and no false positive Dice = NSD = 1, HD95 = 0.

Deviations, kept small on purpose: HD95 is this package's MONAI 95th percentile of boundary-voxel distances
(:func:`nnunetv2_ext.evaluation.metrics.surface_metrics`) where the scripts use the DeepMind ``surface_distance``
package's surfel-area-weighted percentile (``benchmarks/brats_lesionwise_check.py``: on random cases the case
scores differed by 0.02 mm on average, at most 0.55-3.1 mm depending on the seed, while lesion counts, Dice and NSD
were identical); the 2024 script's temporary NIfTI files are replaced by arrays. Everything else (connectivities,
dilation counts, thresholds, penalties, matching, the NSD of nnU-Net v1 at 0.5 and 1.0 mm that the 2024 repository
added in May 2025) is the scripts' behaviour, including their quirks: the reference threshold is in mm³ and the
2024 prediction threshold in voxels, and SNFH is dilated 3 times (the script tests for the misspelt "SFNH" when
choosing 5).

BraTS 2025 and later moved to the panoptica-based ``BraTS-evaluation`` package (BrainLesion), not reproduced here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from nnunetv2_ext.evaluation.metrics import _check_spacing, _components, surface_metrics

#: Challenge tissue -> label value in the BraTS 2023/2024 GLI release (NETC is the 2023 NCR).
CHALLENGE_LABELS: dict[str, int] = {"NETC": 1, "SNFH": 2, "ET": 3, "RC": 4}
#: Challenge tissue -> label value in nnU-Net's Dataset137 convention (what ``convert_brats`` writes); RC, which
#: that convention lacks, keeps the challenge's 4.
NNUNET_LABELS: dict[str, int] = {"SNFH": 1, "NETC": 2, "ET": 3, "RC": 4}
#: Metric keys added per region, in CSV column order (NSD keys only for definitions with NSD tolerances).
LESIONWISE_COUNTS: tuple[str, ...] = ("brats_lesion_tp", "brats_lesion_fn", "brats_lesion_fp",
                                      "brats_lesion_ignored")


@dataclass(frozen=True)
class Region:
    """One evaluated region of a :class:`Definition`.

    Attributes:
        name: region key (WT, TC, ET, NETC, SNFH, RC).
        tissues: the challenge tissues it unites (keys of :data:`CHALLENGE_LABELS`).
        dilation: dilation iterations for combining and matching lesions.
        min_volume: reference lesions of at most this volume (mm³) are ignored; with ``merge_predictions``,
            predicted lesions of at most this many voxels are deleted.
        partners: tissues whose lesions merge this region's lesions (step 4 of the module docstring), in order.
    """
    name: str
    tissues: tuple[str, ...]
    dilation: int
    min_volume: float
    partners: tuple[str, ...] = ()


@dataclass(frozen=True)
class Definition:
    """A challenge's lesion-wise evaluation.

    Attributes:
        name: key in :data:`DEFINITIONS`.
        source: the script it follows.
        regions: the regions, in output order.
        hd95_penalty_mm: HD95 of a missed or false positive lesion.
        merge_predictions: predicted lesions are combined by dilation and small ones deleted (2024).
        nsd_tolerances_mm: lesion-wise NSD at these tolerances (none: no NSD).
    """
    name: str
    source: str
    regions: tuple[Region, ...]
    hd95_penalty_mm: float
    merge_predictions: bool = False
    nsd_tolerances_mm: tuple[float, ...] = ()

    def metric_names(self) -> tuple[str, ...]:
        """Per-region keys of :func:`lesionwise_metrics`, in CSV column order."""
        nsd = tuple(nsd_key(t) for t in self.nsd_tolerances_mm)
        return ("brats_lesion_dice", "brats_lesion_hd95_mm", *nsd, *LESIONWISE_COUNTS)


def nsd_key(tolerance_mm: float) -> str:
    """``brats_lesion_nsd_<tolerance>mm``, e.g. ``brats_lesion_nsd_0.5mm``."""
    return f"brats_lesion_nsd_{tolerance_mm:g}mm"


def _regions_2023(dilation: int, min_volume: float) -> tuple[Region, ...]:
    return (Region("WT", ("NETC", "SNFH", "ET"), dilation, min_volume),
            Region("TC", ("NETC", "ET"), dilation, min_volume),
            Region("ET", ("ET",), dilation, min_volume))


_SRC_2023 = "github.com/rachitsaluja/BraTS-2023-Metrics metrics.py, challenge "
_SRC_2024 = "github.com/rachitsaluja/BraTS-2024-Metrics metrics_GLI.py (BraTS-GLI 2024, post-treatment)"

#: The definitions: 2023 GLI (also SSA, PED: dilation 3, 50 mm³), MEN (dilation 1, 50 mm³), MET (dilation 1,
#: 2 mm³), HD95 penalty 374 mm; 2024 GLI: six regions, dilation 3 (NETC, RC: 5), 20 voxels / mm³ (ET: 10),
#: predictions merged and filtered, penalty 337 mm, NSD at 0.5 and 1.0 mm.
DEFINITIONS: dict[str, Definition] = {
    "2023": Definition("2023", _SRC_2023 + "BraTS-GLI (same parameters for SSA and PED)", _regions_2023(3, 50), 374.0),
    "2023-MEN": Definition("2023-MEN", _SRC_2023 + "BraTS-MEN", _regions_2023(1, 50), 374.0),
    "2023-MET": Definition("2023-MET", _SRC_2023 + "BraTS-MET", _regions_2023(1, 2), 374.0),
    "2024": Definition("2024", _SRC_2024, (
        Region("WT", ("NETC", "SNFH", "ET"), 3, 20),
        Region("TC", ("NETC", "ET"), 3, 20),
        Region("NETC", ("NETC",), 5, 20, partners=("ET", "RC")),
        Region("SNFH", ("SNFH",), 3, 20, partners=("ET", "RC", "NETC")),
        Region("ET", ("ET",), 3, 10, partners=("NETC", "RC")),
        Region("RC", ("RC",), 5, 20, partners=("ET", "NETC")),
    ), 337.0, merge_predictions=True, nsd_tolerances_mm=(0.5, 1.0)),
}

_DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)  # 18-neighbourhood, as the scripts


def get_definition(definition: str | Definition) -> Definition:
    """A :class:`Definition` from its key (``'2023'``, ``'2023-MEN'``, ``'2023-MET'``, ``'2024'``) or itself.

    Raises:
        ValueError: unknown key.
    """
    if isinstance(definition, Definition):
        return definition
    if str(definition) not in DEFINITIONS:
        raise ValueError(f"unknown BraTS lesion-wise definition {definition!r}; expected one of "
                         f"{sorted(DEFINITIONS)} (--brats)")
    return DEFINITIONS[str(definition)]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..n in the order of the old ones (0 stays 0), int32."""
    present = np.bincount(labels.reshape(-1)) > 0
    present[0] = False
    lookup = np.zeros(present.size, np.int32)
    lookup[present] = np.arange(1, np.count_nonzero(present) + 1, dtype=np.int32)
    return lookup[labels]


def combined_by_dilation(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Lesion labels of ``mask``: its voxels labelled by the 26-connected component of ``mask`` dilated
    ``dilation`` times with the 18-connected structure (step 2 of the module docstring); 0 outside."""
    out = np.zeros(mask.shape, np.int32)
    if not mask.any():
        return out
    # the dilation reaches `dilation` voxels (Chebyshev) beyond the mask: work in its bounding box plus that margin
    box = tuple(slice(max(s.start - dilation, 0), s.stop + dilation)
                for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    crop = mask[box]
    dilated = ndimage.binary_dilation(crop, structure=_DILATION_STRUCTURE, iterations=dilation) if dilation else crop
    labels, _ = _components(dilated)
    out[box] = np.where(crop, labels, 0)  # every dilated component holds a lesion: labels have no gaps
    return out


def _touching_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairs ``(label in a, label in b)``, shape (n, 2), of lesions within one 18-neighbourhood step of each other
    (the script's ``get_touching_labels``: one dilation of either touches the other)."""
    idx = np.nonzero(a)
    if not idx[0].size or not b.any():
        return np.zeros((0, 2), np.int64)
    shape = np.asarray(a.shape)
    coords = np.stack(idx, axis=1)
    values = a[idx]
    found = []
    for offset in np.argwhere(_DILATION_STRUCTURE) - 1:
        nb = coords + offset
        inside = np.all((nb >= 0) & (nb < shape), axis=1)
        la = values[inside]
        lb = b[tuple(nb[inside].T)]
        hit = lb > 0
        found.append(np.stack([la[hit], lb[hit]], axis=1).astype(np.int64))
    return np.unique(np.concatenate(found), axis=0)


def merge_touching(labels: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Lesions of ``labels`` that touch a lesion of ``partner`` regrouped by the lowest partner lesion each touches
    (the script's ``relabel_nifti_image``); lesions touching none keep their own label."""
    pairs = _touching_pairs(labels, partner)
    if not len(pairs):
        return labels
    n = int(labels.max())
    lookup = np.arange(n + 1, dtype=np.int64)
    first = np.unique(pairs[:, 0], return_index=True)  # pairs are sorted: first row of a label = lowest partner
    lookup[first[0]] = n + pairs[first[1], 1]
    return _relabel(lookup[labels])


def _lesion_labels(masks: Mapping[str, np.ndarray], region: Region, definition: Definition,
                   prediction: bool, cache: dict) -> np.ndarray:
    """Lesion label map of one region (steps 2-4 of the module docstring); ``cache`` keeps the single-tissue maps
    that several regions merge with."""
    def tissue_lesions(tissues: Sequence[str], dilation: int, min_volume: float) -> np.ndarray:
        key = (tissues, dilation, min_volume)
        if key not in cache:
            cache[key] = lesions_of(tissues, dilation, min_volume)
        return cache[key]

    def lesions_of(tissues: Sequence[str], dilation: int, min_volume: float) -> np.ndarray:
        mask = np.logical_or.reduce([masks[t] for t in tissues])
        if prediction and not definition.merge_predictions:
            return _components(mask)[0].astype(np.int32, copy=False)
        lesions = combined_by_dilation(mask, dilation)
        if prediction:
            counts = np.bincount(lesions.reshape(-1))
            small = np.flatnonzero(counts <= min_volume)
            lesions = _relabel(np.where(np.isin(lesions, small[small > 0]), 0, lesions))
        return lesions

    lesions = tissue_lesions(region.tissues, region.dilation, region.min_volume)
    for partner in region.partners:
        spec = next((r for r in definition.regions if r.tissues == (partner,)), None)
        if spec is None:
            raise ValueError(f"definition {definition.name!r}: region {region.name} merges with {partner}, "
                             f"which is not one of its single-tissue regions")
        lesions = merge_touching(lesions, tissue_lesions(spec.tissues, spec.dilation, spec.min_volume))
    return lesions


def _crop(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the masks' union plus one voxel of background on every side (clipped to the image)."""
    union = np.logical_or.reduce(masks)
    box = ndimage.find_objects(union.astype(np.uint8))[0]
    return tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)


def normalized_surface_dice(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                            tolerance_mm: float) -> float:
    """NSD of nnU-Net v1 (``nnunet/evaluation/surface_dice.py``, Isensee et al.), as the BraTS 2024 script uses it.

    Surfaces are the voxels of each mask removed by one erosion with the 6-connected structure (``medpy``'s
    ``__surface_distances``, image border as background); NSD is the mean of the fractions of each surface within
    ``tolerance_mm`` of the other. Both empty: 1; exactly one empty: 0.
    """
    ref, pred = np.asarray(ref, bool), np.asarray(pred, bool)
    if not ref.any() and not pred.any():
        return 1.0
    if not ref.any() or not pred.any():
        return 0.0
    box = _crop(ref, pred)
    ref, pred = np.pad(ref[box], 1), np.pad(pred[box], 1)
    structure = ndimage.generate_binary_structure(ref.ndim, 1)
    border_ref = ref & ~ndimage.binary_erosion(ref, structure)
    border_pred = pred & ~ndimage.binary_erosion(pred, structure)
    to_ref = ndimage.distance_transform_edt(~border_ref, sampling=spacing)[border_pred]
    to_pred = ndimage.distance_transform_edt(~border_pred, sampling=spacing)[border_ref]
    within = np.count_nonzero(to_ref <= tolerance_mm) / to_ref.size + np.count_nonzero(to_pred <= tolerance_mm) \
        / to_pred.size
    return float(within / (2.0 + 1e-8))  # the script's (tp_a + tp_b) / (tp_a + tp_b + fp + fn + 1e-8)


def region_lesionwise(ref_lesions: np.ndarray, pred_lesions: np.ndarray, spacing: Sequence[float], region: Region,
                      definition: Definition) -> dict[str, float]:
    """Lesion-wise scores of one region from its reference and predicted lesion label maps (steps 5-6).

    Returns the keys of :meth:`Definition.metric_names`.
    """
    spacing = _check_spacing(spacing, ref_lesions.ndim)
    voxel_mm3 = float(np.prod(spacing))
    n_ref, n_pred = int(ref_lesions.max()), int(pred_lesions.max())
    pred_sizes = np.bincount(pred_lesions.reshape(-1), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_lesions.reshape(-1), minlength=n_ref + 1)
    both = (ref_lesions > 0) & (pred_lesions > 0)
    overlap = np.zeros((n_ref + 1, n_pred + 1), np.int64)
    np.add.at(overlap, (ref_lesions[both], pred_lesions[both]), 1)
    ref_boxes = ndimage.find_objects(ref_lesions)
    pred_boxes = ndimage.find_objects(pred_lesions)
    matched_pred = np.zeros(n_pred + 1, bool)
    penalty = definition.hd95_penalty_mm
    dice, hd95 = [], []
    nsd: dict[float, list[float]] = {t: [] for t in definition.nsd_tolerances_mm}
    tp = fn = ignored = 0
    for lesion in range(1, n_ref + 1):
        box = tuple(slice(max(s.start - region.dilation, 0), s.stop + region.dilation) for s in ref_boxes[lesion - 1])
        gt = ref_lesions[box] == lesion
        reach = ndimage.binary_dilation(gt, structure=_DILATION_STRUCTURE, iterations=region.dilation) \
            if region.dilation > 0 else gt
        matches = np.unique(pred_lesions[box][reach])
        matches = matches[matches > 0]
        matched_pred[matches] = True
        if ref_sizes[lesion] * voxel_mm3 <= region.min_volume:
            ignored += 1
            continue
        if not matches.size:
            fn += 1
            dice.append(0.0)
            hd95.append(penalty)
            for t in nsd:
                nsd[t].append(0.0)
            continue
        tp += 1
        inter, pred_size = int(overlap[lesion, matches].sum()), int(pred_sizes[matches].sum())
        dice.append(2.0 * inter / (ref_sizes[lesion] + pred_size))
        union_box = [ref_boxes[lesion - 1], *(pred_boxes[m - 1] for m in matches)]
        crop = tuple(slice(min(b[d].start for b in union_box), max(b[d].stop for b in union_box))
                     for d in range(ref_lesions.ndim))
        gt_crop = np.pad(ref_lesions[crop] == lesion, 1)
        pred_crop = np.pad(np.isin(pred_lesions[crop], matches), 1)
        hd95.append(surface_metrics(gt_crop, pred_crop, spacing)["hd95_mm"])
        for t in nsd:
            nsd[t].append(normalized_surface_dice(gt_crop, pred_crop, spacing, t))
    fp = int(np.count_nonzero(~matched_pred[1:]))
    n = len(dice) + fp
    out: dict[str, float] = {
        "brats_lesion_dice": float(sum(dice) / n) if n else 1.0,
        "brats_lesion_hd95_mm": float((sum(hd95) + fp * penalty) / n) if n else 0.0,
    }
    for t, values in nsd.items():
        out[nsd_key(t)] = float(sum(values) / n) if n else 1.0
    out.update({"brats_lesion_tp": tp, "brats_lesion_fn": fn, "brats_lesion_fp": fp,
                "brats_lesion_ignored": ignored})
    return out


def region_values(definition: str | Definition, labels: Optional[Mapping[str, int]] = None) -> dict[str, list[int]]:
    """Label values of each region of a definition under a tissue -> value map (default :data:`NNUNET_LABELS`)."""
    definition = get_definition(definition)
    labels = NNUNET_LABELS if labels is None else labels
    return {r.name: sorted(int(labels[t]) for t in r.tissues) for r in definition.regions}


def lesionwise_metrics(ref_label: np.ndarray, pred_label: np.ndarray, spacing: Sequence[float],
                       definition: str | Definition = "2023", labels: Optional[Mapping[str, int]] = None,
                       regions: Optional[Sequence[str]] = None) -> dict[str, dict[str, float]]:
    """BraTS lesion-wise scores of one case, per region (the module docstring gives the definition).

    Args:
        ref_label: reference label map, 3D, numpy axis order.
        pred_label: predicted label map of the same shape.
        spacing: voxel size in mm, numpy axis order.
        definition: ``'2023'``, ``'2023-MEN'``, ``'2023-MET'``, ``'2024'`` or a :class:`Definition`.
        labels: challenge tissue (NETC, SNFH, ET, RC) -> label value in the maps; default
            :data:`NNUNET_LABELS` (nnU-Net's Dataset137 convention); :data:`CHALLENGE_LABELS` for the
            challenge's own files.
        regions: only these regions of the definition (default all).

    Returns:
        ``{region: {metric: value}}`` with the keys of :meth:`Definition.metric_names`.

    Raises:
        ValueError: shapes differ, the maps are not 3D, spacing does not fit, a tissue has no label value, or a
            region is not in the definition.
    """
    definition = get_definition(definition)
    ref_label, pred_label = np.asarray(ref_label), np.asarray(pred_label)
    if ref_label.shape != pred_label.shape:
        raise ValueError(f"reference and prediction must have the same shape, got {ref_label.shape} and "
                         f"{pred_label.shape}")
    if ref_label.ndim != 3:
        raise ValueError(f"BraTS lesion-wise metrics need 3D label maps, got {ref_label.ndim} dimensions")
    spacing = _check_spacing(spacing, 3)
    labels = NNUNET_LABELS if labels is None else labels
    missing = sorted({t for r in definition.regions for t in r.tissues + r.partners} - set(labels))
    if missing:
        raise ValueError(f"no label value for tissue(s) {missing}; labels must map {sorted(CHALLENGE_LABELS)} "
                         f"to values, got {dict(labels)}")
    names = [r.name for r in definition.regions]
    if regions is not None and set(regions) - set(names):
        raise ValueError(f"regions {sorted(set(regions) - set(names))} are not in definition {definition.name!r} "
                         f"({names})")
    tissues = {t for r in definition.regions for t in r.tissues + r.partners}
    values = [labels[t] for t in tissues]
    foreground = np.isin(ref_label, values) | np.isin(pred_label, values)
    if foreground.any():  # all steps are local: work in the foreground's box plus the largest dilation + 1
        margin = max(r.dilation for r in definition.regions) + 1
        box = tuple(slice(max(s.start - margin, 0), s.stop + margin)
                    for s in ndimage.find_objects(foreground.astype(np.uint8))[0])
        ref_label, pred_label = ref_label[box], pred_label[box]
    ref_masks = {t: ref_label == labels[t] for t in tissues}
    pred_masks = {t: pred_label == labels[t] for t in tissues}
    out: dict[str, dict[str, float]] = {}
    ref_cache: dict = {}
    pred_cache: dict = {}
    for region in definition.regions:
        if regions is not None and region.name not in regions:
            continue
        ref_lesions = _lesion_labels(ref_masks, region, definition, False, ref_cache)
        pred_lesions = _lesion_labels(pred_masks, region, definition, True, pred_cache)
        out[region.name] = region_lesionwise(ref_lesions, pred_lesions, spacing, region, definition)
    return out
