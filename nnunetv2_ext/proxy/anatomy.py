"""An offline BraTS-like proxy dataset built from real anatomy: the MNI152 2009a template shipped with nilearn.

The paper's experiments (UK Biobank pretraining, BraTS fine-tuning) need data that cannot be downloaded here.
This module builds a stand-in that keeps what matters for comparing pretraining methods, from files that ship
inside nilearn's wheel (no download): the ICBM 2009a nonlinear symmetric template's grey- and white-matter
probability maps and its brain mask (Fonov et al., "Unbiased average age-appropriate atlases for pediatric
studies", NeuroImage 54(1), 2011). Every case is

1. the template's tissue maps (CSF = brain mask - GM - WM) resampled to ``resolution`` mm,
2. warped by a random smooth deformation: a cubic B-spline free-form deformation (Rueckert et al., "Nonrigid
   registration using free-form deformations", IEEE TMI 18(8), 1999) composed with a random scale and rotation;
   the control-point displacements are bounded by 0.4 x their spacing, which makes the free-form part a
   diffeomorphism (Choi & Lee, "Injectivity conditions of 2D and 3D uniform cubic B-spline functions", Graphical
   Models 62(6), 2000: bound 1/K with K ~ 2.48 in 3D),
3. for the labelled cohorts, given a glioma-like tumour: an irregular star-shaped edema (label 1) around a
   tumour core made of an enhancing rim (label 3) around necrosis / non-enhancing core (label 2), the label
   convention of nnU-Net's BraTS dataset (``nnunetv2_ext.data.brats``), plus up to three small satellite lesions
   nearby; the tumour pushes the surrounding tissue outwards (a compactly supported radial mass effect) and
   replaces the tissue it covers,
4. rendered as skull-stripped T1, T1Gd, T2 and FLAIR images from per-class mean intensities with partial volume
   (from the tissue probabilities, thin vessels, and the tumour classes blurred at their borders), smooth texture,
   and per image a contrast exponent, a smooth multiplicative bias field of random strength, Rician noise of random
   level (Gudbjartsson & Patz, "The Rician distribution of noisy MRI data", MRM 34(6), 1995) and an arbitrary global
   scale.

The contrasts are chosen so that the tumour is *not* found by thresholding one image (issue 18: a single z-scored
FLAIR / T1Gd threshold scored above every trained method on an earlier version): on every modality each tumour class
overlaps a normal tissue (edema fades into the tissue it invades and is only a tissue contrast brighter than grey
matter on FLAIR and T2; the label-2 core mixes fluid necrosis, CSF-like, with non-enhancing solid tumour,
edema-like; the enhancing rim is about as bright as white matter on T1Gd, and vessels enhance too), and scanner
parameters differ between images. The combination of modalities separates much of it (subtraction of T1 from
T1Gd, FLAIR against T2), and shape and context the rest; :mod:`nnunetv2_ext.proxy.threshold_baseline` measures
both.

The result is a *synthetic proxy*, not BraTS: anatomy varies only by the random deformation of a single
template, and the tumours are geometric models. It is documented as such in every ``dataset.json`` and in the
manifest.

Arrays are indexed ``(z, y, x)`` as ``SimpleITK.GetArrayFromImage`` returns them. Images are written in LPS
world coordinates with the identity direction, so that x grows to the left, y to the back and z upwards, and
world coordinates are MNI coordinates (up to the sign of x and y, as LPS vs RAS) before the random deformation.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import numbers
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from nnunetv2_ext.data.brats import CHANNEL_NAMES, NNUNET_LABELS, REGIONS_CLASS_ORDER
from nnunetv2_ext.data.raw_dataset import raw_dataset_target, staged_dataset_folder
from nnunetv2_ext.data.unlabeled import LABELS
from nnunetv2_ext.io_utils import atomic_write_json

PRETRAIN_MODALITIES = ("T1", "FLAIR")
"""Channels of the healthy pretraining cohort (the paper pretrains on UK Biobank T1 and T2-FLAIR)."""
TARGET_MODALITIES = tuple(CHANNEL_NAMES[i] for i in range(len(CHANNEL_NAMES)))
"""Channels of the labelled cohorts, in the order of ``nnunetv2_ext.data.brats.CHANNEL_NAMES``."""
MANIFEST = "proxy_manifest.json"
"""File name of the manifest that :func:`make_proxy` writes into ``out_dir``."""
COHORT_TAG = {"pretrain": 0, "target": 1, "test": 2}
"""Second entry of every case's seed sequence ``[seed, tag, index]``: cohorts draw independent subjects."""
DESCRIPTION = "synthetic proxy built from the MNI152 2009a template (nilearn), NOT BraTS"

TEMPLATE_RESOLUTION = 1
"""Resolution (mm) at which nilearn's template maps are loaded; they are resampled to the requested one."""
CROP_MARGIN_MM = 8.0
"""Background kept around the template's brain bounding box."""
DEFORMATION_ROOM_MM = 12.0
"""Further background so that a random deformation (scale up to 1.1, rotation, free-form) keeps the brain in
the volume."""

CONTROL_SPACING_MM = 25.0
"""Control-point spacing of the free-form deformation."""
DISPLACEMENT_SD_MM = 3.0
"""Standard deviation of the control-point displacements, clipped to ``0.4 * CONTROL_SPACING_MM`` (Choi & Lee
2000) so that the free-form part is a diffeomorphism."""
SCALE_RANGE = (0.9, 1.1)
"""Range of the random isotropic brain size relative to the template."""
ROTATION_DEG = 4.0
"""Maximum random rotation about each axis (degrees): the subjects are roughly aligned, as BraTS's
co-registered scans are."""

WT_RADIUS_MM = (15.0, 30.0)
"""Mean radius of the whole tumour (edema included): 14-113 ml for a sphere, the order of the glioma whole-tumour
volumes in BraTS (Menze et al., IEEE TMI 34(10), 2015; Bakas et al., arXiv:1811.02629). The brief's 12 mm
lower end is raised so that the nested regions fit at 8 mm voxels."""
CORE_FRACTION = (0.55, 0.8)
"""Tumour-core radius as a fraction of the whole-tumour radius; with the rim rule below the median core is about
a third of the whole-tumour volume, so that edema is the largest region, as in most BraTS cases."""
NECROSIS_FRACTION = (0.5, 0.8)
"""Necrosis radius as a fraction of the tumour-core radius (the rim thickness ``RIM_MM`` then grows the core
where needed, so the enhancing rim stays most of the core)."""
RIM_MM = (6.0, 8.0)
"""Least thickness of the enhancing rim (at least 1.5 voxels at 4 mm, so that it survives resampling)."""
EDEMA_MIN_MM = 3.0
"""Least thickness of edema around the tumour core."""
SHAPE_NOISE = (0.2, 0.35)
"""(Largest standard deviation, clip) of the relative radius perturbation that makes the tumour regions
irregular; each tumour draws its standard deviation from ``[0.5, 1] x`` the first."""
SHAPE_CONTROL_MM = 12.0
"""Control-point spacing of the smooth noise that perturbs the tumour radii."""
MASS_EFFECT_STRENGTH = (0.3, 0.6)
"""Range of the mass effect's strength ``P``: tissue at distance ``r`` from the tumour centre comes from distance
``r * (1 - P * (1 - r^2 / R_s^2)^2)``; ``P < 1`` keeps the map a diffeomorphism."""
MASS_EFFECT_RADIUS = (1.5, 2.2)
"""Support radius ``R_s`` of the mass effect as a multiple of the whole-tumour radius."""

SATELLITES = (0, 3)
"""Range of the number of satellite lesions per tumour (small foci near the main mass, as multifocal gliomas
show)."""
SATELLITE_RADIUS_MM = (4.0, 9.0)
"""Range of a satellite's radius (its edema included)."""
SATELLITE_CORE = (0.6, 0.35, 0.6)
"""(Probability that a satellite has an enhancing core, range of the core's radius as a fraction of the
satellite's); the others are edema only."""
SATELLITE_GAP_MM = (4.0, 24.0)
"""Range of a satellite's distance from the main tumour (edge to centre)."""

CLASSES = ("csf", "gm", "wm", "vessel", "edema", "necrosis", "solid", "enhancing")
"""Intensity classes: the three tissues, vessels, then the tumour's edema (label 1), necrosis and non-enhancing
solid tumour (both label 2) and enhancing tumour (label 3)."""
TUMOUR_CLASSES = ("edema", "necrosis", "solid", "enhancing")
CLASS_MEANS = {
    #        csf   gm    wm   vessel edema necr  solid  enh
    "T1": (0.25, 0.55, 0.80, 0.55, 0.50, 0.25, 0.45, 0.55),
    "T2": (1.00, 0.62, 0.45, 0.25, 0.78, 0.95, 0.74, 0.70),
    "FLAIR": (0.15, 0.62, 0.50, 0.30, 0.78, 0.45, 0.78, 0.75),
}
"""Relative mean intensity of each class of ``CLASSES``. Tissues: T1 WM > GM > CSF, T2 CSF > GM > WM and FLAIR
(an inversion-recovery T2 with the CSF signal nulled) CSF darkest, GM > WM, from the relaxation times of brain
tissue (WM shorter T1 and T2 than GM, CSF much longer; Wansapura et al., JMRI 9(4), 1999). Vessels: flow voids on
T2 and FLAIR. Tumour (Menze et al., IEEE TMI 34(10), 2015, section II; Bakas et al. 2018, arXiv:1811.02629,
section 2): edema bright on T2 and FLAIR and slightly dark on T1, but only by about a tissue contrast above grey
matter, so that on every single modality it overlaps a normal tissue (FLAIR and T2: grey matter, T2 also CSF; T1:
grey matter); necrosis fluid-like (dark T1, bright T2, FLAIR not fully nulled), close to CSF; non-enhancing solid
tumour close to edema on every contrast (the hard part of the tumour core in BraTS); enhancing tumour like grey
matter before contrast."""
T1GD_ENHANCEMENT = {"vessel": (0.45, 0.8), "gm": (0.0, 0.04), "edema": (0.0, 0.05), "solid": (0.0, 0.06),
                    "enhancing": (0.3, 0.6)}
"""T1Gd = T1 + a per-case enhancement drawn from these ranges (0 for the other classes): gadolinium leaks where the
blood-brain barrier is broken. The enhancing tumour ends up about as bright as, or brighter than, white matter
(which is bright on any T1-weighted image) and darker than vessels, so that a T1Gd threshold alone also picks
white matter and vessels; the difference to the native T1 (subtraction imaging) and the T2/FLAIR flow void tell
them apart."""
MEAN_JITTER = 0.10
"""Per subject, each class mean is multiplied by a factor from ``[1 - j, 1 + j]``."""
EDEMA_FADE = (0.2, 0.45)
"""Range of the edema's fade: its contrast to the underlying tissue falls linearly from 1 at the tumour core to
``1 - fade`` at its outer edge (infiltrative edema mixes with the tissue it invades)."""
NECROSIS_SHARE = (0.1, 0.9)
"""Range of the per-tumour mean share of fluid necrosis (the rest non-enhancing solid tumour) in label 2; it varies
smoothly within the core (``NECROSIS_SHARE_SD``)."""
NECROSIS_SHARE_SD = 0.3
PARTIAL_VOLUME_VOXELS = 0.5
"""Gaussian sigma (voxels) applied to the tumour classes' fractions: partial volume at the lesion borders."""
VESSEL_WIDTH = 0.12
"""Vessels are where two smooth unit fields are both near zero: fraction ``exp(-(a^2 + b^2) / (2 w^2))``."""
VESSEL_MAX = 0.8
"""Largest vessel fraction of a voxel."""
VESSEL_CONTROL_MM = 16.0
TUMOUR_TEXTURE_SD = 0.12
"""Relative standard deviation of the smooth heterogeneity within the tumour classes."""
TISSUE_TEXTURE_SD = 0.04
"""Relative standard deviation of the smooth heterogeneity of normal tissue."""
TEXTURE_SHARED = 0.5
"""Share of the texture's variance common to all modalities (the rest is drawn per modality)."""
TEXTURE_CONTROL_MM = 8.0
"""Control-point spacing of that texture."""
CONTRAST_GAMMA = (0.75, 1.35)
"""Range of the per-image exponent applied to the relative intensities (a scanner's contrast, not only its gain,
differs between sites)."""
BIAS_SD = (0.06, 0.2)
"""Range of the per-image standard deviation of the log bias field (clipped at 2.5 SD)."""
BIAS_CONTROL_MM = 60.0
"""Control-point spacing of the bias field (a field that varies over the head, as from a receive coil)."""
NOISE_FRACTION = (0.02, 0.06)
"""Range of the per-image standard deviation of the Rician noise as a fraction of the white-matter mean."""
GLOBAL_SCALE = (100.0, 2000.0)
"""Range of the log-uniform global intensity factor per image: MR intensities carry no absolute unit, which is
why nnU-Net z-scores each image."""


@dataclass(frozen=True)
class ProxySpec:
    """What :func:`make_proxy` builds.

    Attributes:
        seed: Seed; a case depends only on ``(seed, cohort, index)``, not on the counts.
        resolution: Isotropic voxel size in mm of the written images, in [1, 8].
        n_pretrain: Healthy T1 + FLAIR cases for self-supervised pretraining (>= 2: Volume Fusion pairs two scans).
        n_target: Labelled training cases (T1, T1Gd, T2, FLAIR and tumour labels).
        n_test: Held-out test cases, drawn from the target distribution.
        pretrain_id: nnU-Net id of the pretraining dataset.
        target_id: nnU-Net id of the target dataset (training pool and test cases).
        pretrain_name: Name of the pretraining dataset.
        target_name: Name of the target dataset.
    """

    seed: int = 0
    resolution: float = 2.0
    n_pretrain: int = 24
    n_target: int = 16
    n_test: int = 12
    pretrain_id: int = 601
    target_id: int = 602
    pretrain_name: str = "ProxyPretrain"
    target_name: str = "ProxyTarget"


def _nilearn():
    try:
        import nilearn
        import nilearn.datasets
    except ImportError as e:
        raise ImportError("the proxy dataset is built from the MNI152 template shipped with nilearn, which is not "
                          "installed: pip install 'nnunetv2-ext[proxy]'") from e
    return nilearn


def _check_resolution(resolution: float) -> float:
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Real) or not 1.0 <= resolution <= 8.0:
        raise ValueError(f"resolution must be a number of mm in [1, 8]; got {resolution!r}")
    return float(resolution)


def load_anatomy(resolution: float) -> dict[str, np.ndarray | tuple]:
    """The MNI152 2009a tissue maps on an isotropic ``resolution`` mm grid around the brain.

    nilearn's 1 mm grey- and white-matter probability maps and brain mask (the template thresholded at 0.2) are
    loaded, CSF is taken as ``clip(mask - GM - WM, 0, 1)`` with the mask edge smoothed by a Gaussian of 0.5 mm,
    and the maps are resampled (Gaussian anti-aliasing with the FWHM of the new voxel, then linear
    interpolation) onto a grid covering the brain's bounding box plus ``CROP_MARGIN_MM + DEFORMATION_ROOM_MM``.
    Inside the brain the three probabilities sum to 1; outside they are 0. Cached per resolution; the arrays are
    read-only.

    Args:
        resolution: Voxel size in mm, in [1, 8].

    Returns:
        ``{"csf", "gm", "wm"}``: float32 ``(z, y, x)`` probability maps; ``"brain"``: bool mask; ``"spacing"``:
        ``(x, y, z)`` mm; ``"origin"``: ``(x, y, z)`` LPS world coordinate of voxel ``(0, 0, 0)`` (mm, MNI space).

    Raises:
        ImportError: nilearn is not installed.
        ValueError: ``resolution`` is outside [1, 8].
    """
    return dict(_load_anatomy(_check_resolution(resolution)))


@functools.lru_cache(maxsize=4)
def _load_anatomy(resolution: float) -> dict[str, np.ndarray | tuple]:
    nilearn = _nilearn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask_img = nilearn.datasets.load_mni152_brain_mask(resolution=TEMPLATE_RESOLUTION)
        gm = np.asarray(nilearn.datasets.load_mni152_gm_template(resolution=TEMPLATE_RESOLUTION).get_fdata(),
                        np.float32)
        wm = np.asarray(nilearn.datasets.load_mni152_wm_template(resolution=TEMPLATE_RESOLUTION).get_fdata(),
                        np.float32)
    mask = np.asarray(mask_img.get_fdata(), np.float32)
    affine = np.asarray(mask_img.affine, np.float64)  # voxel (i, j, k) -> RAS mm
    csf = np.clip(ndimage.gaussian_filter(mask, 0.5 / TEMPLATE_RESOLUTION) - gm - wm, 0.0, 1.0)

    # output grid in LPS world coordinates (identity direction), around the brain's bounding box
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    ijk = np.argwhere(mask > 0.5)
    corners = (ras_to_lps @ (affine[:3, :3] @ np.array([ijk.min(0), ijk.max(0)]).T + affine[:3, 3:4])).T
    lo, hi = corners.min(0), corners.max(0)
    margin = CROP_MARGIN_MM + DEFORMATION_ROOM_MM
    origin = lo - margin
    size_xyz = np.floor((hi - lo + 2 * margin) / resolution).astype(int) + 1
    # output index (z, y, x) -> world (x, y, z) -> source index (i, j, k)
    zyx_to_xyz = np.eye(3)[::-1] * resolution
    world_to_src = np.linalg.inv(affine[:3, :3]) @ ras_to_lps
    matrix = world_to_src @ zyx_to_xyz
    offset = world_to_src @ origin - np.linalg.solve(affine[:3, :3], affine[:3, 3])
    sigma = math.sqrt(max(resolution ** 2 - TEMPLATE_RESOLUTION ** 2, 0.0)) / (2 * math.sqrt(2 * math.log(2)))
    shape = tuple(int(s) for s in size_xyz[::-1])

    def resample(volume: np.ndarray) -> np.ndarray:
        if sigma > 0:
            volume = ndimage.gaussian_filter(volume, sigma / TEMPLATE_RESOLUTION, mode="constant")
        return ndimage.affine_transform(volume, matrix, offset, output_shape=shape, order=1, mode="constant",
                                        cval=0.0, output=np.float32)

    brain = resample(mask) > 0.5
    probs = np.stack([resample(csf), resample(gm), resample(wm)])
    probs = _normalise(probs, brain)
    out: dict[str, np.ndarray | tuple] = {"csf": probs[0], "gm": probs[1], "wm": probs[2], "brain": brain,
                                          "spacing": (resolution,) * 3, "origin": tuple(float(o) for o in origin)}
    for value in out.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return out


def _normalise(probs: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Tissue probabilities summing to 1 in ``brain`` (CSF where none is left) and 0 outside."""
    probs = np.clip(probs, 0.0, None) * brain
    total = probs.sum(0)
    empty = brain & (total < 1e-3)
    probs[0][empty], total[empty] = 1.0, 1.0
    np.divide(probs, total, out=probs, where=total > 0)
    return probs.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- smooth fields
def _bspline_basis(t: np.ndarray, n_ctrl: int) -> np.ndarray:
    """``(len(t), n_ctrl)`` uniform cubic B-spline weights; control point ``k`` sits at knot coordinate ``k - 1``."""
    d = np.abs(np.asarray(t, np.float64)[:, None] - (np.arange(n_ctrl) - 1.0)[None, :])
    return np.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0)).astype(np.float32)


def _grid_bases(shape: tuple[int, ...], spacing_mm: float, knot_mm: float) -> list[np.ndarray]:
    """B-spline bases over a grid that starts at the first knot-covered position, one per axis."""
    bases = []
    for n in shape:
        t = np.arange(n) * spacing_mm / knot_mm
        bases.append(_bspline_basis(t, int(np.floor(t[-1])) + 4))
    return bases


def _bspline_eval(coeffs: np.ndarray, bases: list[np.ndarray]) -> np.ndarray:
    """Tensor-product B-spline ``(..., a, b, c)`` coefficients -> ``(..., z, y, x)`` values (separable)."""
    return np.einsum("...abc,za,yb,xc->...zyx", coeffs, *bases, optimize=True).astype(np.float32, copy=False)


def _unit_sd() -> float:
    """Mean standard deviation of a 3D cubic B-spline field with unit-variance coefficients."""
    t = np.linspace(0, 1, 64, endpoint=False)
    return float(np.mean((_bspline_basis(t + 1, 5) ** 2).sum(1)) ** 1.5)


_BSPLINE_SD = _unit_sd()


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: float,
                  knot_mm: float) -> np.ndarray:
    """Smooth random field of zero mean and unit standard deviation (B-spline of Gaussian coefficients)."""
    bases = _grid_bases(shape, spacing_mm, knot_mm)
    field = _bspline_eval(rng.standard_normal(tuple(b.shape[1] for b in bases)).astype(np.float32), bases)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


# --------------------------------------------------------------------------------------------- deformation
def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    c, s = np.cos(a), np.sin(a)
    rz = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rx = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_deformation(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: float,
                       centre: np.ndarray | None = None) -> np.ndarray:
    """Random smooth map from a subject grid to the template grid (same grid), as voxel coordinates.

    ``x = c + A (y + u(y) - c)``: ``u`` is a cubic B-spline free-form deformation with control points every
    ``CONTROL_SPACING_MM`` and displacements ~ N(0, ``DISPLACEMENT_SD_MM``) clipped to 0.4 x the spacing, which
    makes ``y + u(y)`` a diffeomorphism (Choi & Lee 2000); ``A = R / s`` with a rotation ``R`` of up to
    ``ROTATION_DEG`` about each axis and a brain size ``s`` in ``SCALE_RANGE``. The Jacobian determinant,
    ``det(A) det(I + Du)``, is therefore positive everywhere.

    Args:
        rng: Random generator.
        shape: Grid shape ``(z, y, x)``.
        spacing_mm: Isotropic voxel size.
        centre: Fixed point ``c`` of the affine part in voxels ``(z, y, x)``; default the grid centre.

    Returns:
        float32 array ``(3, z, y, x)``: the template voxel coordinates sampled for each subject voxel, ready for
        ``scipy.ndimage.map_coordinates``.
    """
    centre = (np.array(shape, np.float64) - 1) / 2 if centre is None else np.asarray(centre, np.float64)
    bases = _grid_bases(shape, spacing_mm, CONTROL_SPACING_MM)
    limit = 0.4 * CONTROL_SPACING_MM
    coeffs = np.clip(rng.normal(0.0, DISPLACEMENT_SD_MM, (3, *(b.shape[1] for b in bases))), -limit, limit)
    u = _bspline_eval((coeffs / spacing_mm).astype(np.float32), bases)  # voxels
    matrix = _rotation(rng, ROTATION_DEG) / rng.uniform(*SCALE_RANGE)
    grid = np.indices(shape, dtype=np.float32)
    grid += u
    grid -= centre.astype(np.float32)[:, None, None, None]
    coords = np.einsum("ij,j...->i...", matrix.astype(np.float32), grid)
    coords += centre.astype(np.float32)[:, None, None, None]
    return coords


def mass_effect(coords: np.ndarray, centre: np.ndarray, radius_vox: float, strength: float) -> np.ndarray:
    """Compose a radial push away from ``centre`` before ``coords``: returns ``coords(s(y))``.

    ``s(y) = c + (y - c) (1 - P (1 - q)^2)`` for ``q = |y - c|^2 / R_s^2 < 1`` and ``s(y) = y`` beyond: the tissue
    seen at distance ``r`` comes from nearer the centre, so everything within ``R_s`` is pushed outwards and
    compressed against the unaffected tissue, as a growing tumour displaces the brain. The radial derivative
    ``1 - P (1 - q)(1 - 5 q)`` and the tangential stretch ``1 - P (1 - q)^2`` are both ``>= 1 - P``, so for
    ``0 <= P < 1`` the map is a diffeomorphism; it is C1 at ``r = R_s``.

    Args:
        coords: ``(3, z, y, x)`` map as returned by :func:`random_deformation` (not modified).
        centre: Centre ``(z, y, x)`` in voxels.
        radius_vox: Support radius ``R_s`` in voxels.
        strength: ``P`` in [0, 1).

    Returns:
        A new ``(3, z, y, x)`` float32 map.
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"mass-effect strength must be in [0, 1); got {strength}")
    out = coords.copy()
    shape = coords.shape[1:]
    centre = np.asarray(centre, np.float64)
    lo = np.maximum(np.floor(centre - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius_vox).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    d = np.indices(tuple(hi - lo), dtype=np.float32) + (lo - centre).astype(np.float32)[:, None, None, None]
    q = np.minimum((d ** 2).sum(0) / np.float32(radius_vox ** 2), 1.0)
    points = centre.astype(np.float32)[:, None, None, None] + d * (1.0 - np.float32(strength) * (1.0 - q) ** 2)
    for k in range(3):
        out[k][box] = ndimage.map_coordinates(coords[k], points, order=1, mode="nearest", output=np.float32)
    return out


def jacobian_determinant(coords: np.ndarray) -> np.ndarray:
    """Jacobian determinant of a ``(3, z, y, x)`` voxel map (central differences, one-sided at the border)."""
    jac = np.stack([np.stack(np.gradient(c.astype(np.float64)), 0) for c in coords])  # (3, 3, z, y, x)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def _warp(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0, output=np.float32)


# --------------------------------------------------------------------------------------------- tumour
@dataclass(frozen=True, eq=False)
class _TumourShape:
    """Random draws of one tumour, in mm; the masks are rendered for any voxel size and radius scale."""

    radius: tuple[float, float, float]  # whole tumour, core, necrosis
    rim_mm: float
    axes: np.ndarray  # ellipsoid semi-axis factors (geometric mean 1)
    rotation: np.ndarray
    noise: np.ndarray  # (3, n, n, n) B-spline coefficients of the radius perturbations
    noise_sd: float
    half_mm: float  # the noise is defined on [-half_mm, half_mm]^3 around the centre

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "_TumourShape":
        wt = rng.uniform(*WT_RADIUS_MM)
        core = max(wt * rng.uniform(*CORE_FRACTION), RIM_MM[0] + 2.0)
        necrosis = core * rng.uniform(*NECROSIS_FRACTION)
        axes = rng.uniform(0.85, 1.15, 3)
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        half = 2.5 * WT_RADIUS_MM[1]
        n = int(np.floor(2 * half / SHAPE_CONTROL_MM)) + 4
        return cls(radius=(wt, core, necrosis), rim_mm=rng.uniform(*RIM_MM), axes=axes / np.prod(axes) ** (1 / 3),
                   rotation=rotation, noise=rng.standard_normal((3, n, n, n)).astype(np.float32),
                   noise_sd=rng.uniform(0.5, 1.0) * SHAPE_NOISE[0], half_mm=half)

    def masks(self, spacing_mm: float, scale: float = 1.0) -> np.ndarray:
        """Label box ``(2h + 1,)*3`` centred on the tumour: 1 edema, 2 necrosis, 3 enhancing.

        Built from the inside out so that the nesting holds on the voxel grid: the core contains every voxel
        within ``max(rim, sqrt(3) voxels)`` of the necrosis and the whole tumour every voxel within
        ``max(EDEMA_MIN_MM, sqrt(3) voxels)`` of the core, so a one-voxel dilation (26-neighbourhood) of the
        necrosis stays in the core and one of the core in the whole tumour.
        """
        wt, core, nec = (r * scale for r in self.radius)
        voxel_gap = math.sqrt(3) * spacing_mm * 1.01
        rim, edema = max(self.rim_mm, voxel_gap), max(EDEMA_MIN_MM, voxel_gap)
        reach = (1 + SHAPE_NOISE[1]) * float(self.axes.max())  # largest radius factor
        extent = max(wt * reach, core * reach + edema, nec * reach + rim + edema)
        h = int(math.ceil(extent / spacing_mm)) + 1
        offsets = np.arange(-h, h + 1, dtype=np.float32) * spacing_mm
        d = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"))
        rho = np.sqrt(((np.einsum("ij,j...->i...", self.rotation.T.astype(np.float32), d)
                        / self.axes.astype(np.float32)[:, None, None, None]) ** 2).sum(0))
        n_ctrl = self.noise.shape[1]
        basis = _bspline_basis(np.clip((offsets + self.half_mm) / SHAPE_CONTROL_MM, 0, n_ctrl - 3), n_ctrl)
        noise = _bspline_eval(self.noise, [basis] * 3) / _BSPLINE_SD
        factor = 1.0 + np.clip(self.noise_sd * noise, -SHAPE_NOISE[1], SHAPE_NOISE[1])
        centre = (h, h, h)

        def component(mask: np.ndarray) -> np.ndarray:  # the connected part holding the centre
            mask = mask.copy()
            mask[centre] = True
            lab, _ = ndimage.label(mask)
            return lab == lab[centre]

        necrosis = component(rho < nec * factor[2])
        near_nec = ndimage.distance_transform_edt(~necrosis, sampling=spacing_mm) <= rim
        tc = component(rho < core * factor[1]) | near_nec
        near_tc = ndimage.distance_transform_edt(~tc, sampling=spacing_mm) <= edema
        whole = component(rho < wt * factor[0]) | near_tc
        necrosis &= ndimage.binary_erosion(tc, np.ones((3, 3, 3), bool))
        label = whole.astype(np.uint8)
        label[tc] = 3
        label[necrosis] = 2
        return label


def _place_tumour(rng: np.random.Generator, shape_model: _TumourShape, brain: np.ndarray, wm: np.ndarray,
                  spacing_mm: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Choose the tumour centre: a white-matter voxel deep enough for the whole tumour to lie inside the brain.

    The tumour is shrunk by 15 % at a time until such a voxel exists (then any brain voxel deep enough, then
    the deepest one). Returns ``(centre voxel, label box, scale)``.
    """
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_mm)
    scale = 1.0
    for _ in range(8):
        box = shape_model.masks(spacing_mm, scale)
        h = box.shape[0] // 2
        idx = np.argwhere(box > 0) - h
        extent = float(np.sqrt((idx.astype(np.float64) ** 2).sum(1)).max()) * spacing_mm
        deep = depth > extent + 2 * spacing_mm
        for candidates in (deep & (wm > 0.5), deep):
            points = np.flatnonzero(candidates)
            if points.size:
                return np.array(np.unravel_index(points[rng.integers(points.size)], brain.shape)), box, scale
        scale *= 0.85
    return np.array(np.unravel_index(int(np.argmax(depth)), brain.shape)), box, scale


def _paste(box: np.ndarray, centre: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Full-size array holding ``box`` centred on ``centre`` (parts outside the grid are dropped)."""
    out = np.zeros(shape, box.dtype)
    h = box.shape[0] // 2
    lo, hi = centre - h, centre + h + 1
    dst = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(lo, hi, shape))
    src = tuple(slice(d.start - a, d.stop - a) for d, a in zip(dst, lo))
    out[dst] = box[src]
    return out


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels (clipped to the grid); the whole grid if it is empty."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    idx = np.argwhere(mask)
    return tuple(slice(max(int(a) - pad, 0), min(int(b) + pad + 1, n))
                 for a, b, n in zip(idx.min(0), idx.max(0), mask.shape))


def _ball_label(radius_mm: float, core_mm: float, spacing_mm: float, axes: np.ndarray) -> np.ndarray:
    """Label box of a satellite: an ellipsoidal edema (1) around an optional enhancing core (3), nested on the
    grid as :meth:`_TumourShape.masks` nests its regions (every voxel within ``max(EDEMA_MIN_MM, sqrt(3) voxels)``
    of the core is edema)."""
    voxel_gap = math.sqrt(3) * spacing_mm * 1.01
    margin = max(EDEMA_MIN_MM, voxel_gap)
    h = int(math.ceil((max(radius_mm * float(axes.max()), core_mm + margin)) / spacing_mm)) + 1
    offsets = np.arange(-h, h + 1, dtype=np.float32) * spacing_mm
    d = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"))
    rho = np.sqrt(((d / axes.astype(np.float32)[:, None, None, None]) ** 2).sum(0))
    label = (rho <= radius_mm).astype(np.uint8)
    label[h, h, h] = 1
    if core_mm > 0:
        core = rho <= core_mm
        core[h, h, h] = True
        label[ndimage.distance_transform_edt(~core, sampling=spacing_mm) <= margin] = 1
        label[core] = 3
    return label


def _add_satellites(rng: np.random.Generator, label: np.ndarray, brain: np.ndarray, wm: np.ndarray,
                    spacing_mm: float) -> np.ndarray:
    """Paste ``SATELLITES`` small lesions near the main tumour, in the brain and off the tumour (labels combine by
    maximum, which keeps the nesting: every voxel's label can only grow)."""
    n = int(rng.integers(SATELLITES[0], SATELLITES[1] + 1))
    if n == 0:
        return label
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_mm)
    reach = SATELLITE_GAP_MM[1] + 2 * SATELLITE_RADIUS_MM[1] * 1.25 + 2 * spacing_mm
    box = _bbox(label > 0, int(math.ceil(reach / spacing_mm)))
    gap = np.full(label.shape, np.inf, np.float32)  # distance to the tumour, within reach of it
    gap[box] = ndimage.distance_transform_edt(label[box] == 0, sampling=spacing_mm)
    for _ in range(n):
        radius = rng.uniform(*SATELLITE_RADIUS_MM)
        core = radius * rng.uniform(*SATELLITE_CORE[1:]) if rng.random() < SATELLITE_CORE[0] else 0.0
        axes = rng.uniform(0.8, 1.25, 3)
        box = _ball_label(radius, core, spacing_mm, axes)
        extent = (box.shape[0] // 2 + 1) * spacing_mm
        lo, hi = max(SATELLITE_GAP_MM[0], extent), max(SATELLITE_GAP_MM[1], extent + spacing_mm)
        candidates = (depth > extent + spacing_mm) & (gap > lo) & (gap < hi) & (wm > 0.3)
        points = np.flatnonzero(candidates)
        if not points.size:
            continue
        centre = np.array(np.unravel_index(points[rng.integers(points.size)], brain.shape))
        label = np.maximum(label, _paste(box, centre, brain.shape) * brain)
    return label


# --------------------------------------------------------------------------------------------- contrast
def _class_means(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject class means of every modality of ``TARGET_MODALITIES`` (the jitter keeps the orderings)."""
    jitter = rng.uniform(1 - MEAN_JITTER, 1 + MEAN_JITTER, (3, len(CLASSES)))
    means = {m: np.asarray(CLASS_MEANS[m]) * j for m, j in zip(("T1", "T2", "FLAIR"), jitter)}
    enhancement = np.zeros(len(CLASSES))
    for name, bounds in T1GD_ENHANCEMENT.items():
        enhancement[CLASSES.index(name)] = rng.uniform(*bounds)
    means["T1Gd"] = means["T1"] + enhancement
    return {m: means[m].astype(np.float32) for m in TARGET_MODALITIES}


def _texture(rng: np.random.Generator, shared: np.ndarray, shape: tuple[int, int, int],
             spacing_mm: float) -> np.ndarray:
    """Unit-SD smooth field, ``TEXTURE_SHARED`` of its variance in common with the other modalities."""
    own = _smooth_noise(rng, shape, spacing_mm, TEXTURE_CONTROL_MM)
    return np.clip(math.sqrt(TEXTURE_SHARED) * shared + math.sqrt(1 - TEXTURE_SHARED) * own, -3, 3)


def _render(rng: np.random.Generator, means: np.ndarray, fractions: np.ndarray, shared_texture: np.ndarray,
            brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """One image: partial-volume mixture of textured class means, contrast exponent, bias field, Rician noise
    inside the brain, global scale; the scanner parameters (exponent, bias strength, noise level) per image."""
    texture = _texture(rng, shared_texture, brain.shape, spacing_mm)
    n_normal = CLASSES.index(TUMOUR_CLASSES[0])
    sd = np.where(np.arange(len(CLASSES)) < n_normal, TISSUE_TEXTURE_SD, TUMOUR_TEXTURE_SD).astype(np.float32)
    image = np.einsum("k,k...->...", means, fractions)
    image += texture * np.einsum("k,k...->...", means * sd, fractions)
    np.clip(image, 1e-3, None, out=image)
    gamma = np.float32(rng.uniform(*CONTRAST_GAMMA))
    image **= gamma
    bias_sd = rng.uniform(*BIAS_SD)
    image *= np.exp(bias_sd * np.clip(_smooth_noise(rng, brain.shape, spacing_mm, BIAS_CONTROL_MM), -2.5, 2.5))
    sigma = rng.uniform(*NOISE_FRACTION) * float(means[CLASSES.index("wm")]) ** float(gamma)
    inside = image[brain]
    n1, n2 = rng.standard_normal((2, inside.size), dtype=np.float32) * np.float32(sigma)
    out = np.zeros(brain.shape, np.float32)
    out[brain] = np.sqrt((inside + n1) ** 2 + n2 ** 2)
    out *= np.float32(np.exp(rng.uniform(*np.log(GLOBAL_SCALE))))
    return out


def _vessels(rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Fraction of vessel per voxel: tubes where two smooth fields are both near zero, denser in grey matter and
    CSF (the cortical vessels run in the sulci)."""
    a, b = (_smooth_noise(rng, brain.shape, spacing_mm, VESSEL_CONTROL_MM) for _ in range(2))
    vessel = VESSEL_MAX * np.exp(-(a ** 2 + b ** 2) / (2 * VESSEL_WIDTH ** 2))
    return (vessel * (0.3 + 0.7 * (tissue[0] + tissue[1])) * brain).astype(np.float32)


def _tumour_fractions(rng: np.random.Generator, label: np.ndarray, brain: np.ndarray,
                      spacing_mm: float) -> np.ndarray:
    """``(4, z, y, x)`` fractions of edema, necrosis, solid tumour and enhancing tumour: the label's classes
    blurred by ``PARTIAL_VOLUME_VOXELS``, the edema faded towards its outer edge (``EDEMA_FADE``; the rest of its
    share goes back to the tissue) and label 2 split into necrosis and solid tumour (``NECROSIS_SHARE``)."""
    core, whole = label >= 2, label > 0
    box = _bbox(whole, 2)  # the distances only matter in the tumour, whose box (padded) holds every core voxel
    to_core = np.zeros(label.shape, np.float32)
    to_out = np.zeros(label.shape, np.float32)
    if core.any():
        to_core[box] = ndimage.distance_transform_edt(~core[box], sampling=spacing_mm)
    to_out[box] = ndimage.distance_transform_edt(whole[box], sampling=spacing_mm)
    fade = 1.0 - rng.uniform(*EDEMA_FADE) * to_core / np.maximum(to_core + to_out, 1e-6)
    share = np.clip(rng.uniform(*NECROSIS_SHARE)
                    + NECROSIS_SHARE_SD * _smooth_noise(rng, label.shape, spacing_mm, TEXTURE_CONTROL_MM), 0, 1)
    hard = np.stack([(label == 1) * fade, (label == 2) * share, (label == 2) * (1 - share), label == 3])
    soft = np.stack([ndimage.gaussian_filter(h.astype(np.float32), PARTIAL_VOLUME_VOXELS) for h in hard])
    return (soft * brain).astype(np.float32)


# --------------------------------------------------------------------------------------------- cases
def _case_rngs(spec: ProxySpec, cohort: str, index: int) -> list[np.random.Generator]:
    """Independent streams: deformation, tumour, contrast, vessels and texture, then one per modality of
    ``TARGET_MODALITIES``."""
    if cohort not in COHORT_TAG:
        raise ValueError(f"cohort must be one of {sorted(COHORT_TAG)}; got {cohort!r}")
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or index < 0:
        raise ValueError(f"index must be an integer >= 0; got {index!r}")
    sequence = np.random.SeedSequence([int(spec.seed), COHORT_TAG[cohort], int(index)])
    return [np.random.default_rng(s) for s in sequence.spawn(4 + len(TARGET_MODALITIES))]


def synthesize_case(spec: ProxySpec, cohort: str, index: int) -> dict:
    """One subject of a cohort: deformed MNI152 anatomy, a tumour for ``"target"``/``"test"``, MR contrasts.

    Deterministic in ``(spec.seed, cohort, index)`` and ``spec.resolution`` (the random generator comes from
    ``np.random.SeedSequence([seed, COHORT_TAG[cohort], index])``).

    Args:
        spec: Seed and resolution (other fields are unused here).
        cohort: ``"pretrain"`` (healthy, T1 + FLAIR), ``"target"`` or ``"test"`` (tumour, four modalities).
        index: Case number within the cohort, >= 0.

    Returns:
        ``{"images": {modality: float32 (z, y, x)}, "label": uint8, "tissue": {"csf", "gm", "wm": float32},
        "fractions": float32 (len(CLASSES), z, y, x), "brain": bool, "spacing": (x, y, z), "origin": (x, y, z)}``.
        ``label`` holds 1 edema, 2 necrosis / non-enhancing tumour, 3 enhancing tumour (the brain mask, 0/1, for
        ``"pretrain"``); ``fractions`` holds the share of each class of ``CLASSES`` in every voxel (they sum to 1
        in the brain and are 0 outside) and ``tissue`` the first three of them. Images are exactly 0 outside
        ``brain``.
    """
    anatomy = load_anatomy(spec.resolution)
    rng_deform, rng_tumour, rng_contrast, rng_texture, *rng_modality = _case_rngs(spec, cohort, index)
    res = float(spec.resolution)
    shape = anatomy["brain"].shape
    centre = np.argwhere(anatomy["brain"]).mean(0)
    coords = random_deformation(rng_deform, shape, res, centre)
    template = np.stack([anatomy["csf"], anatomy["gm"], anatomy["wm"], anatomy["brain"].astype(np.float32)])
    tumour = cohort != "pretrain"
    if tumour:
        shape_model = _TumourShape.draw(rng_tumour)
        brain0 = _warp(template[3], coords) > 0.5
        wm0 = _warp(template[2], coords)
        t_centre, box, scale = _place_tumour(rng_tumour, shape_model, brain0, wm0, res)
        radius = shape_model.radius[0] * scale * rng_tumour.uniform(*MASS_EFFECT_RADIUS) / res
        coords = mass_effect(coords, t_centre, radius, rng_tumour.uniform(*MASS_EFFECT_STRENGTH))
    warped = np.stack([_warp(t, coords) for t in template])
    brain = warped[3] > 0.5
    tissue = _normalise(warped[:3], brain)
    fractions = np.zeros((len(CLASSES), *shape), np.float32)
    fractions[CLASSES.index("vessel")] = _vessels(rng_texture, tissue, brain, res)
    if tumour:
        label = _paste(box, t_centre, shape) * brain
        label = _add_satellites(rng_tumour, label, brain, tissue[2], res)
        first = CLASSES.index(TUMOUR_CLASSES[0])
        fractions[first:] = _tumour_fractions(rng_tumour, label, brain, res)
        fractions[first - 1] *= 1.0 - fractions[first:].sum(0)  # no vessel drawn through the tumour
    else:
        label = brain.astype(np.uint8)
    fractions[:3] = tissue * (1.0 - fractions[3:].sum(0))
    shared_texture = _smooth_noise(rng_texture, shape, res, TEXTURE_CONTROL_MM)
    means = _class_means(rng_contrast)
    modalities = TARGET_MODALITIES if tumour else PRETRAIN_MODALITIES
    images = {m: _render(rng_modality[TARGET_MODALITIES.index(m)], means[m], fractions, shared_texture, brain, res)
              for m in modalities}
    return {"images": images, "label": label.astype(np.uint8),
            "tissue": {"csf": fractions[0], "gm": fractions[1], "wm": fractions[2]}, "fractions": fractions,
            "brain": brain, "spacing": anatomy["spacing"], "origin": anatomy["origin"]}


def tumour_volumes_ml(label: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Whole tumour (1, 2, 3), tumour core (2, 3) and enhancing tumour (3) volumes in ml."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(label.ravel(), minlength=4)
    return {"WT": float(counts[1:4].sum() * voxel_ml), "TC": float(counts[2:4].sum() * voxel_ml),
            "ET": float(counts[3] * voxel_ml)}


# --------------------------------------------------------------------------------------------- writing
def _write(array: np.ndarray, path: Path, spacing: tuple, origin: tuple) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(path), useCompression=True)


def _write_case(job: tuple) -> tuple[str, dict[str, float] | None]:
    """Synthesise and write one case (a multiprocessing worker); returns its id and tumour volumes."""
    spec, cohort, index, case, folder = job
    case_data = synthesize_case(spec, cohort, index)
    geometry = case_data["spacing"], case_data["origin"]
    modalities = PRETRAIN_MODALITIES if cohort == "pretrain" else TARGET_MODALITIES
    for channel, m in enumerate(modalities):
        _write(case_data["images"][m], folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz", *geometry)
    _write(case_data["label"], folder / "labelsTr" / f"{case}.nii.gz", *geometry)
    volumes = None if cohort == "pretrain" else tumour_volumes_ml(case_data["label"], case_data["spacing"])
    return case, volumes


def _check_int(name: str, value, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or (hi is not None and
                                                                                               value > hi):
        rule = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rule}; got {value!r}")


def _validate(spec: ProxySpec, num_processes: int) -> None:
    if not isinstance(spec, ProxySpec):
        raise ValueError(f"spec must be a ProxySpec; got {type(spec).__name__}")
    _check_int("spec.seed", spec.seed, 0)
    _check_resolution(spec.resolution)
    _check_int("spec.n_pretrain (Volume Fusion pretraining pairs two scans)", spec.n_pretrain, 2)
    _check_int("spec.n_target", spec.n_target, 1)
    _check_int("spec.n_test", spec.n_test, 1)
    _check_int("spec.pretrain_id", spec.pretrain_id, 1, 999)
    _check_int("spec.target_id", spec.target_id, 1, 999)
    if spec.pretrain_id == spec.target_id:
        raise ValueError(f"spec.pretrain_id and spec.target_id must differ; both are {spec.pretrain_id}")
    _check_int("num_processes", num_processes, 1)


def make_proxy(out_dir: str | Path, spec: ProxySpec = ProxySpec(), overwrite: bool = False,
               num_processes: int = 1, progress: bool = False) -> dict:
    """Write the proxy benchmark: a healthy pretraining dataset and a labelled target dataset, plus a manifest.

    Layout under ``out_dir``:

    * ``nnUNet_raw/Dataset{pretrain_id:03d}_{pretrain_name}/``: ``imagesTr/{case}_0000.nii.gz`` (T1),
      ``_0001`` (FLAIR) and ``labelsTr/{case}.nii.gz`` = brain mask (labels ``nnunetv2_ext.data.unlabeled.LABELS``:
      nnU-Net's planning fails on all-zero label maps), cases ``{pretrain_name}_000``, ...
    * ``nnUNet_raw/Dataset{target_id:03d}_{target_name}/``: ``imagesTr`` with the four ``TARGET_MODALITIES`` and
      ``labelsTr`` for the training pool ``{target_name}_train_000``, ... *and* the test cases
      ``{target_name}_test_000``, ...; the experiment holds the test cases out through nnU-Net's
      ``splits_final.json``. ``dataset.json`` as :func:`nnunetv2_ext.data.brats.convert_brats` writes it.
    * ``proxy_manifest.json``: spec, versions, dataset names, case lists and tumour volumes.

    Each dataset is written into a hidden partial folder and renamed when complete (the pretraining dataset
    after the target one); the manifest is written last.

    Args:
        out_dir: Output folder (created if missing).
        spec: What to build.
        overwrite: Replace existing datasets and manifest instead of raising ``FileExistsError``.
        num_processes: Worker processes (fork); the files do not depend on it.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The manifest.

    Raises:
        ValueError: Invalid ``spec`` or ``num_processes``, a bad dataset name, or another dataset with one of the
            ids in ``out_dir/nnUNet_raw``.
        FileExistsError: A dataset folder or the manifest exists and ``overwrite`` is False.
        ImportError: nilearn is not installed.
    """
    _validate(spec, num_processes)
    out_dir = Path(out_dir)
    raw_root = out_dir / "nnUNet_raw"
    pretrain_dir = raw_dataset_target(raw_root, spec.pretrain_id, spec.pretrain_name, overwrite)
    target_dir = raw_dataset_target(raw_root, spec.target_id, spec.target_name, overwrite)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists() and not overwrite:
        raise FileExistsError(f"{manifest_path} already exists; use --overwrite to replace it")
    nilearn = _nilearn()
    load_anatomy(float(spec.resolution))  # before forking, so that the workers share the cache
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    pretrain_cases = [f"{spec.pretrain_name}_{i:03d}" for i in range(spec.n_pretrain)]
    train_cases = [f"{spec.target_name}_train_{i:03d}" for i in range(spec.n_target)]
    test_cases = [f"{spec.target_name}_test_{i:03d}" for i in range(spec.n_test)]
    volumes: dict[str, dict[str, float]] = {}
    with staged_dataset_folder(pretrain_dir, overwrite=overwrite) as pretrain_stage, \
            staged_dataset_folder(target_dir, overwrite=overwrite) as target_stage:
        for folder in (pretrain_stage, target_stage):
            (folder / "imagesTr").mkdir()
            (folder / "labelsTr").mkdir()
        jobs = ([(spec, "pretrain", i, c, pretrain_stage) for i, c in enumerate(pretrain_cases)]
                + [(spec, "target", i, c, target_stage) for i, c in enumerate(train_cases)]
                + [(spec, "test", i, c, target_stage) for i, c in enumerate(test_cases)])
        pool = multiprocessing.get_context("fork").Pool(num_processes) if num_processes > 1 else None
        try:
            results = pool.imap(_write_case, jobs) if pool else map(_write_case, jobs)
            for case, case_volumes in tqdm(results, total=len(jobs), desc="proxy cases", file=sys.stderr,
                                           disable=not progress):
                if case_volumes is not None:
                    volumes[case] = case_volumes
        finally:
            if pool:
                pool.terminate()
                pool.join()
        generate_dataset_json(
            str(pretrain_stage), channel_names=dict(enumerate(PRETRAIN_MODALITIES)), labels=dict(LABELS),
            num_training_cases=spec.n_pretrain, file_ending=".nii.gz", dataset_name=pretrain_dir.name,
            description=f"Healthy T1 + FLAIR cases of a {DESCRIPTION} and not real data, for self-supervised "
                        "pretraining. The label maps in labelsTr are brain masks, not annotations.",
            license="synthetic; the MNI152 2009a template's terms (see nilearn)",
            converted_by="nnunetv2_ext.proxy.anatomy")
        generate_dataset_json(
            str(target_stage), channel_names=dict(CHANNEL_NAMES), labels=dict(NNUNET_LABELS),
            num_training_cases=spec.n_target + spec.n_test, file_ending=".nii.gz",
            regions_class_order=REGIONS_CLASS_ORDER, dataset_name=target_dir.name,
            description=f"{DESCRIPTION}. Labels 1 edema, 2 necrosis/non-enhancing tumour core, 3 enhancing tumour. "
                        f"imagesTr holds the training pool ({spec.target_name}_train_*) and the held-out test cases "
                        f"({spec.target_name}_test_*).",
            license="synthetic; the MNI152 2009a template's terms (see nilearn)",
            converted_by="nnunetv2_ext.proxy.anatomy")
    import nnunetv2_ext

    manifest = {
        "description": f"{DESCRIPTION}: healthy pretraining cases and tumour cases from random deformations "
                       "of one template, generated by nnunetv2_ext.proxy.anatomy",
        "spec": asdict(spec),
        "nilearn_version": nilearn.__version__,
        "nnunetv2_ext_version": nnunetv2_ext.__version__,
        "pretrain_dataset": pretrain_dir.name,
        "target_dataset": target_dir.name,
        "pretrain_cases": pretrain_cases,
        "target_train_cases": train_cases,
        "test_cases": test_cases,
        "tumour_volumes_ml": {case: volumes[case] for case in train_cases + test_cases},
    }
    atomic_write_json(manifest, manifest_path, overwrite=overwrite)
    return manifest


PREVIEW = "proxy_preview.png"


def save_preview(out_dir: str | Path, n_cases: int = 3) -> Path:
    """``out_dir/proxy_preview.png``: for the first ``n_cases`` training cases of the target dataset, the axial
    slice with the most tumour in every modality and the label (1 edema, 2 necrosis, 3 enhancing), read back from
    the written files; the last row shows a healthy pretraining case. Returns the path.

    Raises:
        FileNotFoundError: ``out_dir`` holds no proxy manifest.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from nnunetv2_ext.io_utils import load_json

    out = Path(out_dir)
    manifest = load_json(out / MANIFEST)
    raw = out / "nnUNet_raw"
    rows = [(manifest["target_dataset"], case, TARGET_MODALITIES) for case in manifest["target_train_cases"][:n_cases]]
    rows.append((manifest["pretrain_dataset"], manifest["pretrain_cases"][0], PRETRAIN_MODALITIES))
    label_cmap = ListedColormap(["black", "tab:green", "tab:red", "gold"])
    fig, axes = plt.subplots(len(rows), len(TARGET_MODALITIES) + 1, figsize=(2.2 * (len(TARGET_MODALITIES) + 1),
                                                                            2.4 * len(rows)), squeeze=False)
    for r, (dataset, case, modalities) in enumerate(rows):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / dataset / "labelsTr" / f"{case}.nii.gz")))
        healthy = dataset == manifest["pretrain_dataset"]
        z = label.shape[0] // 2 if healthy else int(np.argmax((label > 0).sum(axis=(1, 2))))
        for c in range(len(TARGET_MODALITIES) + 1):
            axes[r, c].axis("off")
        for c, modality in enumerate(modalities):
            column = TARGET_MODALITIES.index(modality)
            image = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / dataset / "imagesTr" / f"{case}_{c:04d}.nii.gz")))
            axes[r, column].imshow(image[z], cmap="gray", origin="lower")
            axes[r, column].set_title(f"{modality}" if r else f"{modality}\n", fontsize=9)
        if not healthy:
            axes[r, -1].imshow(label[z], cmap=label_cmap, vmin=0, vmax=3, origin="lower", interpolation="nearest")
            axes[r, -1].set_title("label", fontsize=9)
        axes[r, 0].text(-0.05, 0.5, case, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)
    fig.suptitle("nnunetv2_ext proxy (MNI152 template, synthetic; not BraTS): labels 1 edema (green), "
                 "2 necrosis (red), 3 enhancing (gold)", fontsize=9)
    fig.tight_layout()
    path = out / PREVIEW
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
