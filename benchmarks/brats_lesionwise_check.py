"""nnunetv2_ext.evaluation.lesionwise against the BraTS challenge's own scripts, and its time on a BraTS-sized case.

Random multi-lesion cases (spheres of random tissue labels, shifted, partly dropped, with spurious additions) are
scored by both; prints how many case-regions differ in lesion counts (TP/FN/FP), lesion-wise Dice and (2024) NSD,
and the largest and mean HD95 differences (expected: MONAI's boundary-voxel HD95 here vs the DeepMind
surface-distance package's surfel-weighted one there). The official repositories are read from local clones and
run from a temporary copy, with three one-line compatibility edits for NumPy 2 / pandas 2+ (``np.Inf``,
``DataFrame.append``, ``DataFrame.replace`` on list columns) and ``medpy``'s ``__surface_distances`` (needed by the
2024 NSD, not installed here) provided by a small stand-in. Needs nibabel and pandas.

    git clone https://github.com/rachitsaluja/BraTS-2023-Metrics /tmp/BraTS-2023-Metrics
    git clone https://github.com/rachitsaluja/BraTS-2024-Metrics /tmp/BraTS-2024-Metrics
    python benchmarks/brats_lesionwise_check.py --official-2023 /tmp/BraTS-2023-Metrics \
        --official-2024 /tmp/BraTS-2024-Metrics --cases 25 --seed 7
    python benchmarks/brats_lesionwise_check.py --time-only
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunetv2_ext.evaluation.lesionwise import CHALLENGE_LABELS, lesionwise_metrics

SHAPE = (48, 48, 40)


def _medpy_stand_in() -> None:
    """``medpy.metric.binary.__surface_distances`` (surface = mask minus its erosion; EDT to the other surface)."""
    def surface_distances(result, reference, voxelspacing, connectivity):
        result, reference = result.astype(bool), reference.astype(bool)
        structure = ndimage.generate_binary_structure(result.ndim, connectivity)
        result_border = result ^ ndimage.binary_erosion(result, structure=structure, iterations=1)
        reference_border = reference ^ ndimage.binary_erosion(reference, structure=structure, iterations=1)
        return ndimage.distance_transform_edt(~reference_border, sampling=voxelspacing)[result_border]

    binary = types.ModuleType("medpy.metric.binary")
    binary.__dict__["__surface_distances"] = surface_distances
    sys.modules.update({"medpy": types.ModuleType("medpy"), "medpy.metric": types.ModuleType("medpy.metric"),
                        "medpy.metric.binary": binary})


def load_official(clone: Path, module: str, work: Path):
    """Import ``module`` from a patched copy of an official clone."""
    import pandas as pd

    copy = work / clone.name
    shutil.copytree(clone, copy, ignore=shutil.ignore_patterns(".git", "figs"))
    for path in copy.rglob("*.py"):
        text = path.read_text().replace("np.Inf", "np.inf").replace(
            "metric_df = metric_df.replace(np.inf, 374)",
            "metric_df['hd95_lesionwise'] = metric_df['hd95_lesionwise'].replace(np.inf, 374)")
        path.write_text(text)
    if not hasattr(pd.DataFrame, "append"):
        pd.DataFrame.append = lambda self, other: pd.concat([self, other])
    _medpy_stand_in()
    sys.path.insert(0, str(copy))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(copy))


def random_case(rng: np.random.Generator, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    zz, yy, xx = np.indices(SHAPE)

    def spheres(n: int, max_radius: float) -> np.ndarray:
        out = np.zeros(SHAPE, np.uint8)
        for _ in range(n):
            c, r = rng.uniform(4, np.array(SHAPE) - 4), rng.uniform(1.0, max_radius)
            out[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] = rng.choice(labels)
        return out

    ref = spheres(int(rng.integers(0, 7)), 6)
    pred = np.roll(ref, int(rng.integers(-2, 3)), axis=int(rng.integers(3)))
    components, n = ndimage.label(pred > 0)
    for i in range(1, n + 1):
        if rng.random() < 0.25:
            pred[components == i] = 0
    extra = spheres(int(rng.integers(0, 4)), 4)
    return ref, np.where(extra > 0, extra, pred)


def compare(year: str, official, cases: int, seed: int, work: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    labels = [1, 2, 3, 4] if year == "2024" else [1, 2, 3]
    nsd_columns = {"brats_lesion_nsd_0.5mm": "LesionWise_Score_NSD @ 0.5",
                   "brats_lesion_nsd_1mm": "LesionWise_Score_NSD @ 1.0"} if year == "2024" else {}
    n, differ, hd = 0, 0, []
    cwd = os.getcwd()
    os.chdir(work)  # the 2024 script writes tmp_gt/ and tmp_pred/ into the working directory
    try:
        for k in range(cases):
            ref, pred = random_case(rng, labels)
            for name, array in (("gt", ref), ("pred", pred)):
                nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(work / f"{name}{k}.nii.gz"))
            table = official.get_LesionWiseResults(str(work / f"pred{k}.nii.gz"), str(work / f"gt{k}.nii.gz"),
                                                   "BraTS-GLI")
            table = table[0] if isinstance(table, tuple) else table
            ours = lesionwise_metrics(ref, pred, (1.0, 1.0, 1.0), year, CHALLENGE_LABELS)
            for _, row in table.iterrows():
                o = ours[row["Labels"]]
                same = (o["brats_lesion_tp"], o["brats_lesion_fn"], o["brats_lesion_fp"]) == \
                    (row["Num_TP"], row["Num_FN"], row["Num_FP"])
                same &= abs(o["brats_lesion_dice"] - row["LesionWise_Score_Dice"]) < 1e-9
                same &= all(abs(o[ours_key] - row[col]) < 1e-9 for ours_key, col in nsd_columns.items())
                n += 1
                differ += not same
                hd.append(abs(o["brats_lesion_hd95_mm"] - row["LesionWise_Score_HD95"]))
    finally:
        os.chdir(cwd)
    print(f"{year}: {n} case-regions, {differ} differ in TP/FN/FP, Dice{' or NSD' if nsd_columns else ''}; "
          f"|HD95 ours - official|: max {max(hd):.3f} mm, mean {np.mean(hd):.3f} mm, "
          f"{np.count_nonzero(np.asarray(hd) > 1e-6)} nonzero")


def time_full_size(repeats: int) -> None:
    """Seconds per case on a 155 x 240 x 240 volume (the BraTS grid), after one warm-up call (imports)."""
    ref = np.zeros((155, 240, 240), np.uint8)
    ref[40:80, 60:120, 60:120] = 2
    ref[50:70, 80:100, 80:100] = 1
    ref[55:65, 85:95, 85:95] = 3
    ref[100:104, 150:154, 150:154] = 3
    pred = np.roll(ref, 2, axis=0)
    pred[10:13, 10:13, 10:13] = 2
    for year in ("2023", "2024"):
        lesionwise_metrics(ref, pred, (1.0, 1.0, 1.0), year, CHALLENGE_LABELS)
        start = time.perf_counter()
        for _ in range(repeats):
            lesionwise_metrics(ref, pred, (1.0, 1.0, 1.0), year, CHALLENGE_LABELS)
        print(f"{year}: {(time.perf_counter() - start) / repeats:.2f} s per 155x240x240 case")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-2023", type=Path, help="clone of rachitsaluja/BraTS-2023-Metrics")
    parser.add_argument("--official-2024", type=Path, help="clone of rachitsaluja/BraTS-2024-Metrics")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per definition")
    parser.add_argument("--time-only", action="store_true")
    args = parser.parse_args()
    if not args.time_only:
        for year, clone, module in (("2023", args.official_2023, "metrics"), ("2024", args.official_2024,
                                                                               "metrics_GLI")):
            if clone is None:
                print(f"{year}: skipped (no --official-{year})")
                continue
            with tempfile.TemporaryDirectory() as work:
                compare(year, load_official(clone, module, Path(work)), args.cases, args.seed, Path(work))
    time_full_size(args.repeats)


if __name__ == "__main__":
    main()
