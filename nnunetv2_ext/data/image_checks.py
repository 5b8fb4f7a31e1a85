"""Voxel checks the dataset importers share (``brats convert``, ``unlabeled-dataset``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def count_non_finite(path: Path, img: sitk.Image) -> tuple[int, int] | None:
    """``(NaN count, inf count)`` of a scalar image, or None if all voxels are finite.

    ITK's NIfTI reader (ITK < 6, InsightSoftwareConsortium/ITK#6683) silently turns NaN and inf into 0, so for NIfTI
    files the voxels are read again with nibabel; the files are copied unchanged, and nibabel-based readers (nnU-Net's
    ``NibabelIO``) would see the NaNs.
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        nii = nibabel.load(str(path))
        if not np.issubdtype(nii.get_data_dtype(), np.inexact):
            return None
        array = np.asanyarray(nii.dataobj)
    else:
        array = sitk.GetArrayViewFromImage(img)
        if not np.issubdtype(array.dtype, np.inexact):
            return None
    if np.isfinite(array).all():
        return None
    return int(np.isnan(array).sum()), int(np.isinf(array).sum())
