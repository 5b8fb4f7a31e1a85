"""Synthetic BraTS-like multi-modal MRI data in nnU-Net v2 raw format.

The volumes are *synthetic* (not BraTS data): a skull-stripped ellipsoidal "brain" with three tissue
classes (CSF ventricles, white matter, grey-matter shell), optionally a nested tumour (edema around an
enhancing rim around a necrotic core) and four MR-like contrasts with bias field and Rician-like noise.
Contrasts are deliberately strong so that a small network learns them in a few iterations.

Arrays are indexed ``(z, y, x)``; ``spacing`` is given in the same numpy order and is reversed for
SimpleITK (which uses ``x, y, z``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_ext.data.raw_dataset import raw_dataset_target, staged_dataset_folder

MODALITIES = ("T1", "T1Gd", "T2", "FLAIR")

# Intensity classes: 0 background, 1 CSF, 2 GM, 3 WM, 4 edema, 5 necrosis, 6 enhancing tumour.
_MEANS = {
    "T1": (0.0, 0.30, 0.60, 0.85, 0.48, 0.20, 0.55),
    "T1Gd": (0.0, 0.30, 0.62, 0.85, 0.48, 0.15, 1.60),
    "T2": (0.0, 1.00, 0.62, 0.42, 1.15, 1.20, 0.75),
    "FLAIR": (0.0, 0.12, 0.62, 0.48, 1.25, 0.60, 0.90),
}
_NOISE_SD = 0.035
_BRATS_LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
_TAG_LABELED, _TAG_UNLABELED = 0, 1


def _validate(shape, spacing, modalities) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[str, ...]]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or not all(24 <= s <= 512 for s in shape):
        raise ValueError(f"shape must have 3 entries, each >= 24 and <= 512; got {shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must have 3 finite entries > 0; got {spacing}")
    modalities = tuple(modalities)
    if not modalities or len(set(modalities)) != len(modalities) or not set(modalities) <= set(MODALITIES):
        raise ValueError(f"modalities must be non-empty, unique and each one of {MODALITIES}; got {modalities}")
    return shape, spacing, modalities


def _rng(seed: int, tag: int, *key: int) -> np.random.Generator:
    """Independent stream per (seed, purpose tag, case, ...), independent of how many cases are made."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), tag], spawn_key=key))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random field with unit standard deviation (coarse grid of ``cells``^3 cubically upsampled)."""
    coarse = rng.standard_normal((cells,) * len(shape))
    field = ndimage.zoom(coarse, [s / cells for s in shape], order=3, mode="nearest")
    field = field[tuple(slice(0, s) for s in shape)]
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _grid(shape: tuple[int, int, int]) -> list[np.ndarray]:
    return [g.astype(np.float32) for g in np.ogrid[tuple(slice(-1, 1, complex(0, s)) for s in shape)]]


def _tissue_model(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(tissue, semi_axes)``; tissue is uint8 with 0 outside, 1 CSF, 2 GM, 3 WM."""
    grid = _grid(shape)
    axes = np.array([0.78, 0.86, 0.80]) * rng.uniform(0.95, 1.05, 3)
    rho = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, axes)))
    brain = rho < 1.0 + 0.05 * np.clip(_smooth_noise(rng, shape, 4), -2, 2)
    gm = rho > 0.82 + 0.05 * np.clip(_smooth_noise(rng, shape, 6), -2, 2)
    v_axes = axes * np.array([0.30, 0.40, 0.22]) * rng.uniform(0.85, 1.15, 3)
    rho_v = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, v_axes)))
    vent = rho_v < 1.0 + 0.15 * np.clip(_smooth_noise(rng, shape, 5), -2, 2)
    tissue = np.where(brain, 3, 0).astype(np.uint8)
    tissue[brain & gm] = 2
    tissue[brain & vent] = 1
    return tissue, axes


def _tumour_model(rng: np.random.Generator, parenchyma: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Nested tumour labels (1 edema, 2 necrosis, 3 enhancing) in GM/WM; ET and necrosis strictly interior."""
    grid = _grid(parenchyma.shape)
    # centre in one hemisphere (last axis), lateral to the ventricles and well inside the brain
    centre = axes * np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25),
                              rng.choice([-1, 1]) * rng.uniform(0.3, 0.4)])
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    r_edema = rng.uniform(0.34, 0.42)
    r_core = r_edema * rng.uniform(0.60, 0.75)
    r_nec = r_core * rng.uniform(0.55, 0.70)
    masks = [dist < r * np.clip(1 + 0.18 * _smooth_noise(rng, parenchyma.shape, 5), 0.75, 1.3)
             for r in (r_edema, r_core, r_nec)]
    edema = masks[0] & parenchyma
    core = masks[1] & ndimage.binary_erosion(edema)
    nec = masks[2] & ndimage.binary_erosion(core)
    label = edema.astype(np.uint8)
    label[core] = 3
    label[nec] = 2
    return label


def _render(rng: np.random.Generator, modality: str, classes: np.ndarray) -> np.ndarray:
    """MR-like image: class means, partial-volume blur, bias field, Rician-like noise, global scale."""
    brain = classes > 0
    img = np.asarray(_MEANS[modality], dtype=np.float32)[classes]
    img = ndimage.gaussian_filter(img, 0.6)
    img *= np.exp(0.10 * _smooth_noise(rng, classes.shape, 3))
    n1, n2 = rng.standard_normal((2, *classes.shape), dtype=np.float32) * _NOISE_SD
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)
    img *= rng.uniform(400.0, 1200.0)
    img[~brain] = 0
    return img.astype(np.float32)


def _synth_case(seed: int, tag: int, index: int, shape: tuple[int, int, int], modalities: Sequence[str],
                tumour: bool) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Generate one case: ``(images by modality, label uint8, tissue uint8)``; deterministic per arguments."""
    anatomy_rng = _rng(seed, tag, index, 0)
    tissue, axes = _tissue_model(anatomy_rng, shape)
    label = _tumour_model(anatomy_rng, tissue >= 2, axes) if tumour else np.zeros(shape, np.uint8)
    classes = tissue.copy()
    classes[label > 0] = (label + 3)[label > 0]  # 1->4 edema, 2->5 necrosis, 3->6 enhancing
    images = {m: _render(_rng(seed, tag, index, 1, MODALITIES.index(m)), m, classes) for m in modalities}
    return images, label, tissue


def _write(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    img.SetOrigin((0.0, 0.0, 0.0))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(path), useCompression=True)


def make_brats_like_dataset(raw_root: str | Path, dataset_id: int = 991, name: str = "SyntheticBraTS",
                            n_train: int = 8, n_test: int = 2, shape: tuple[int, int, int] = (48, 48, 48),
                            spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), seed: int = 0,
                            modalities: Sequence[str] = MODALITIES, with_labels: bool = True,
                            overwrite: bool = False, progress: bool = False) -> Path:
    """Write a synthetic BraTS-like dataset in nnU-Net v2 raw format.

    Layout of ``raw_root/Dataset{dataset_id:03d}_{name}``: ``imagesTr/{case}_{i:04d}.nii.gz`` (channel ``i``
    follows ``modalities``), ``labelsTr/{case}.nii.gz``, ``imagesTs/`` with ``n_test`` further cases (numbering
    continues) and their reference labels in ``labelsTs/``, and a ``dataset.json`` like nnU-Net's
    Dataset137_BraTS21 (region-based labels: whole tumour (1, 2, 3), tumour core (2, 3), enhancing (3);
    label values 1 edema, 2 necrosis, 3 enhancing tumour).

    With ``with_labels=False`` the scans contain no tumour and the label maps are brain masks with labels
    ``{"background": 0, "foreground": 1}`` (nnU-Net's planning needs foreground voxels), so this variant is
    meant for self-supervised pretraining only.

    Args:
        raw_root: nnU-Net raw folder (created if missing).
        dataset_id: Dataset id, 1..999.
        name: Dataset name (letters, digits, ``_`` and ``-``).
        n_train: Number of training cases (>= 2).
        n_test: Number of test cases (>= 0).
        shape: Volume shape in numpy ``(z, y, x)`` order, each entry in 24..512.
        spacing: Voxel spacing in numpy ``(z, y, x)`` order, each > 0.
        seed: Seed; the same seed gives identical data, each case has its own derived stream.
        modalities: Subset of ``MODALITIES``, unique; defines the channel order.
        with_labels: Whether to insert tumours and write the BraTS region labels.
        overwrite: Replace an existing dataset folder instead of raising ``FileExistsError``.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        Path of the written dataset folder.

    Raises:
        ValueError: On invalid arguments, or when ``raw_root`` holds another dataset with the same id.
        FileExistsError: If the dataset folder exists and ``overwrite`` is False.
    """
    shape, spacing, modalities = _validate(shape, spacing, modalities)
    target = raw_dataset_target(raw_root, dataset_id, name, overwrite)
    if n_train < 2:
        raise ValueError(f"n_train must be >= 2; got {n_train}")
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0; got {n_test}")
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    with staged_dataset_folder(target, overwrite=overwrite) as staging:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (staging / sub).mkdir()
        for k in tqdm(range(n_train + n_test), desc=target.name, file=sys.stderr, disable=not progress):
            case, split = f"SynBraTS_{k:03d}", ("Tr" if k < n_train else "Ts")
            images, label, tissue = _synth_case(seed, _TAG_LABELED, k, shape, modalities, tumour=with_labels)
            if not with_labels:  # the brain as foreground: nnU-Net's fingerprint fails on all-zero label maps
                label = (tissue > 0).astype(np.uint8)
            for i, m in enumerate(modalities):
                _write(images[m], staging / f"images{split}" / f"{case}_{i:04d}.nii.gz", spacing)
            _write(label, staging / f"labels{split}" / f"{case}.nii.gz", spacing)
        labels = dict(_BRATS_LABELS) if with_labels else {"background": 0, "foreground": 1}
        generate_dataset_json(
            str(staging), channel_names={i: m for i, m in enumerate(modalities)}, labels=labels,
            num_training_cases=n_train, file_ending=".nii.gz",
            regions_class_order=(1, 2, 3) if with_labels else None, dataset_name=target.name,
            description="Synthetic BraTS-like data generated by nnunetv2_ext (NOT BraTS data). "
                        + ("Labels: 1 edema, 2 necrosis, 3 enhancing tumour." if with_labels
                           else "Label maps are brain masks (no tumours): for self-supervised pretraining only."),
            license="synthetic, no restrictions", converted_by="nnunetv2_ext.data.synthetic")
    return target


def make_unlabeled_images(out_dir: str | Path, n_cases: int, shape: tuple[int, int, int] = (48, 48, 48),
                          seed: int = 0, modalities: Sequence[str] = ("T1", "FLAIR"),
                          spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), overwrite: bool = False,
                          progress: bool = False) -> Path:
    """Write healthy (tumour-free) synthetic scans as a plain folder, e.g. for an unlabeled-data importer.

    Layout: ``out_dir/{case}/{case}_{modality}.nii.gz`` with cases ``UKB_000``, ``UKB_001``, ...

    Args:
        out_dir: Folder to create (must not exist unless ``overwrite``).
        n_cases: Number of cases (>= 1).
        shape: Volume shape in numpy ``(z, y, x)`` order, each entry in 24..512.
        seed: Seed (streams differ from ``make_brats_like_dataset`` with the same seed).
        modalities: Subset of ``MODALITIES``, unique.
        spacing: Voxel spacing in numpy ``(z, y, x)`` order, each > 0.
        overwrite: Replace an existing ``out_dir`` instead of raising ``FileExistsError``.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        Path of ``out_dir``.

    Raises:
        ValueError: On invalid arguments.
        FileExistsError: If ``out_dir`` exists and ``overwrite`` is False.
    """
    shape, spacing, modalities = _validate(shape, spacing, modalities)
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1; got {n_cases}")
    target = Path(out_dir)
    with staged_dataset_folder(target, overwrite=overwrite) as staging:
        for k in tqdm(range(n_cases), desc=target.name, file=sys.stderr, disable=not progress):
            case = f"UKB_{k:03d}"
            (staging / case).mkdir()
            images, _, _ = _synth_case(seed, _TAG_UNLABELED, k, shape, modalities, tumour=False)
            for m in modalities:
                _write(images[m], staging / case / f"{case}_{m}.nii.gz", spacing)
    return target
