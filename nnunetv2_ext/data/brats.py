"""BraTS challenge data <-> nnU-Net v2 raw datasets, for the 2021 and the 2023/2024 GLI releases.

The two releases name files and labels differently (see ``LAYOUTS``):

* 2021: ``BraTS2021_xxxxx/BraTS2021_xxxxx_{t1,t1ce,t2,flair,seg}.nii.gz``; labels 1 necrotic core (NCR),
  2 edema (ED), 4 enhancing tumour (ET).
* 2023/2024 GLI: ``BraTS-GLI-xxxxx-xxx/BraTS-GLI-xxxxx-xxx-{t1n,t1c,t2w,t2f,seg}.nii.gz``; labels 1 NCR, 2 ED,
  3 ET. The 2024 release adds 4 (resection cavity), which this converter does not model and rejects.

:func:`convert_brats` writes both as one nnU-Net dataset convention, that of nnU-Net's
``Dataset137_BraTS21`` (Isensee et al., "nnU-Net for Brain Tumor Segmentation", BrainLes 2020): channels T1,
T1Gd, T2, FLAIR; labels 1 edema, 2 necrosis, 3 enhancing tumour, trained as the regions whole tumour
(1, 2, 3), tumour core (2, 3) and enhancing tumour (3). The source convention is recorded in
``dataset.json`` (``"brats_layout"``) so that :func:`to_brats_labels` maps predictions back; a script written
for 2021 labels silently yields an empty ET on GLI data (nnU-Net issue #1990), hence no value is ever remapped
unless the layout says so, and unknown values are errors.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_ext.data.image_checks import count_non_finite
from nnunetv2_ext.data.raw_dataset import raw_dataset_target, staged_dataset_folder


@dataclass(frozen=True)
class BratsLayout:
    """File naming and label convention of one BraTS release.

    Attributes:
        name: Layout key, also written to ``dataset.json`` as ``"brats_layout"``.
        case_prefix: How case folder names start (used when a folder has no recognisable file).
        separator: Between the case id and the file suffix.
        modalities: File suffixes in nnU-Net channel order T1, T1Gd, T2, FLAIR.
        to_nnunet: Source label -> nnU-Net label; its keys are the only values accepted.
        description: Written to ``dataset.json``.
        default_name: The dataset name when none is given: what the data is (the 2023 and 2024 GLI releases
            name their files alike, so no year is claimed for GLI).
    """
    name: str
    case_prefix: str
    separator: str
    modalities: tuple[str, str, str, str]
    to_nnunet: dict[int, int]
    description: str
    seg: str = "seg"
    default_name: str = ""

    def file(self, case: str, suffix: str) -> str:
        return f"{case}{self.separator}{suffix}.nii.gz"

    @property
    def to_source(self) -> dict[int, int]:
        return {v: k for k, v in self.to_nnunet.items()}


LAYOUTS: dict[str, BratsLayout] = {
    "2021": BratsLayout("2021", "BraTS2021_", "_", ("t1", "t1ce", "t2", "flair"), {0: 0, 1: 2, 2: 1, 4: 3},
                        "BraTS 2021 (labels 1 NCR, 2 ED, 4 ET in the source data)", default_name="BraTS2021"),
    "gli": BratsLayout("gli", "BraTS-GLI-", "-", ("t1n", "t1c", "t2w", "t2f"), {0: 0, 1: 2, 2: 1, 3: 3},
                       "BraTS 2023/2024 GLI (labels 1 NCR, 2 ED, 3 ET in the source data)", default_name="BraTSGLI"),
}
CHANNEL_NAMES = {0: "T1", 1: "T1Gd", 2: "T2", 3: "FLAIR"}
NNUNET_LABELS = {"background": 0, "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
REGIONS_CLASS_ORDER = (1, 2, 3)


@dataclass
class ConversionReport:
    """What :func:`convert_brats` did; saved as ``conversion_report.json`` in the dataset folder.

    Attributes:
        layout: ``'2021'`` or ``'gli'``.
        input_dir: The BraTS folder read.
        dataset: Name of the written dataset folder.
        converted: Case ids written, sorted.
        skipped: Case id -> reasons, for the cases left out with ``skip_bad=True``.
    """
    layout: str
    input_dir: str
    dataset: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _classify(case_dir: Path) -> str | None:
    """Layout of one case folder: by its files, else by its name; None if it looks like neither."""
    names = {p.name for p in case_dir.iterdir()}
    hits = [k for k, lay in LAYOUTS.items()
            if any(lay.file(case_dir.name, s) in names for s in (*lay.modalities, lay.seg))]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        hits = [k for k, lay in LAYOUTS.items() if case_dir.name.startswith(lay.case_prefix)]
        return hits[0] if len(hits) == 1 else None
    return "mixed"


def _scan(input_dir: str | os.PathLike) -> tuple[str, list[Path]]:
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"BraTS folder {input_dir} does not exist")
    by_layout: dict[str, list[Path]] = {}
    for d in sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        kind = _classify(d)
        if kind is not None:
            by_layout.setdefault(kind, []).append(d)
    if len(by_layout) == 1 and "mixed" not in by_layout:
        return next(iter(by_layout.items()))
    if not by_layout:
        examples = sorted(str(p.relative_to(input_dir)) for p in input_dir.glob("*/*") if p.is_file())[:5] or \
            sorted(p.name for p in input_dir.iterdir())[:5]
        expected = "; ".join(f"{k}: {lay.case_prefix}xxxxx/{lay.file(lay.case_prefix + 'xxxxx', lay.modalities[0])}"
                             for k, lay in LAYOUTS.items())
        raise ValueError(f"{input_dir} holds no BraTS case folders (expected e.g. {expected}); found {examples}")
    examples = ", ".join(f"{by_layout[k][0].name} ({k})" for k in sorted(by_layout))
    raise ValueError(f"{input_dir} mixes BraTS layouts: {examples}; convert one release at a time")


def detect_layout(input_dir: str | os.PathLike) -> str:
    """``'2021'`` or ``'gli'``: the layout of the case folders in a BraTS training folder.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        ValueError: It holds no case folder of either layout (the message shows files found) or both.
    """
    return _scan(input_dir)[0]


def _first_line(error: Exception) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


def _check_case(case_dir: Path, layout: BratsLayout) -> tuple[list[str], dict[str, sitk.Image]]:
    """Reasons why a case cannot be converted (empty if none) and its readable images by suffix."""
    case, reasons, images = case_dir.name, [], {}
    suffixes = (*layout.modalities, layout.seg)
    missing = [layout.file(case, s) for s in suffixes if not (case_dir / layout.file(case, s)).is_file()]
    if missing:
        reasons.append(f"missing file(s) {missing}")
    for s in suffixes:
        path = case_dir / layout.file(case, s)
        if not path.is_file():
            continue
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as e:
            reasons.append(f"unreadable file {path.name}: {_first_line(e)}")
            continue
        if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
            reasons.append(f"{path.name}: expected a 3D scalar image, got {img.GetDimension()}D with "
                           f"{img.GetNumberOfComponentsPerPixel()} components per voxel")
            continue
        try:
            non_finite = count_non_finite(path, img)
        except Exception as e:  # nibabel raises a variety of errors on corrupt NIfTI data
            reasons.append(f"cannot read the voxels of {path.name} with nibabel: {type(e).__name__}: {e}")
            continue
        if non_finite:
            reasons.append(f"{path.name}: {sum(non_finite)} NaN/inf voxel value(s) ({non_finite[0]} NaN, "
                           f"{non_finite[1]} inf)")
        images[s] = img
    if images:
        ref_suffix = next(iter(images))
        ref = images[ref_suffix]
        for s, img in images.items():
            diffs = [f"{what} {a} vs {b}" for what, a, b, same in (
                ("size", ref.GetSize(), img.GetSize(), ref.GetSize() == img.GetSize()),
                ("spacing", ref.GetSpacing(), img.GetSpacing(), np.allclose(ref.GetSpacing(), img.GetSpacing())),
                ("origin", ref.GetOrigin(), img.GetOrigin(), np.allclose(ref.GetOrigin(), img.GetOrigin())),
                ("direction", ref.GetDirection(), img.GetDirection(),
                 np.allclose(ref.GetDirection(), img.GetDirection()))) if not same]
            if diffs:
                reasons.append(f"geometry mismatch between {layout.file(case, ref_suffix)} and "
                               f"{layout.file(case, s)}: {'; '.join(diffs)}")
    if layout.seg in images:
        values = np.unique(sitk.GetArrayViewFromImage(images[layout.seg]))
        unknown = [v.item() for v in values if v not in layout.to_nnunet]
        if unknown:
            reasons.append(f"{layout.file(case, layout.seg)}: label value(s) {unknown} not in the {layout.name} "
                           f"label set {sorted(layout.to_nnunet)}")
    return reasons, images


def _relabel(image: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    """Apply a label mapping voxel-wise; pixel type and geometry are kept."""
    array = sitk.GetArrayViewFromImage(image)
    out = np.zeros(array.shape, dtype=array.dtype)
    for src, dst in mapping.items():
        out[array == src] = dst
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def _convert_case(job: tuple[Path, str, Path]) -> tuple[str, list[str]]:
    """Check one case and, if it is good, write it into ``staging``; returns ``(case, reasons)``."""
    case_dir, layout_name, staging = job
    layout, case = LAYOUTS[layout_name], case_dir.name
    reasons, images = _check_case(case_dir, layout)
    if not reasons:
        for i, s in enumerate(layout.modalities):
            shutil.copyfile(case_dir / layout.file(case, s), staging / "imagesTr" / f"{case}_{i:04d}.nii.gz")
        sitk.WriteImage(_relabel(images[layout.seg], layout.to_nnunet), str(staging / "labelsTr" / f"{case}.nii.gz"),
                        useCompression=True)
    return case, reasons


def _map_cases(jobs: list, num_processes: int, progress: bool, desc: str) -> list[tuple[str, list[str]]]:
    bar = tqdm(total=len(jobs), desc=desc, file=sys.stderr, disable=not progress)
    try:
        if num_processes > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                results = []
                for r in pool.imap(_convert_case, jobs):
                    results.append(r)
                    bar.update()
                return results
        results = []
        for job in jobs:
            results.append(_convert_case(job))
            bar.update()
        return results
    finally:
        bar.close()


def convert_brats(input_dir: str | os.PathLike, raw_root: str | os.PathLike, dataset_id: int = 137,
                  name: str | None = None, skip_bad: bool = False, overwrite: bool = False,
                  num_processes: int = 1, progress: bool = False) -> tuple[Path, ConversionReport]:
    """Convert a BraTS 2021 or 2023/2024 GLI training folder into an nnU-Net v2 raw dataset.

    Writes ``raw_root/Dataset{dataset_id:03d}_{name}`` with ``imagesTr/{case}_{0000..0003}.nii.gz`` (T1, T1Gd,
    T2, FLAIR, byte-exact copies), ``labelsTr/{case}.nii.gz`` in nnU-Net's Dataset137 convention (1 edema,
    2 necrosis/non-enhancing core, 3 enhancing tumour; 2021: 2->1, 1->2, 4->3; GLI: 2->1, 1->2, 3->3),
    ``dataset.json`` with the BraTS regions and ``"brats_layout"``, and ``conversion_report.json``. The layout
    is detected from the file names (:func:`detect_layout`). The input is only read.

    Every case is checked before it is written: all five files present and readable, identical geometry
    (size, spacing, origin, direction) across modalities and segmentation, no NaN/inf, and only the layout's
    label values. By default any bad case fails the whole run and nothing is left behind.

    Args:
        input_dir: Folder with one sub-folder per case.
        raw_root: nnU-Net raw folder (created if missing).
        dataset_id: Id of the new dataset, 1..999, not used by another dataset in ``raw_root``.
        name: Dataset name (letters, digits, ``_`` and ``-``); default the layout's: ``BraTS2021`` or
            ``BraTSGLI``.
        skip_bad: Leave bad cases out (they are listed in the report) instead of failing.
        overwrite: Replace an existing dataset folder of the same name.
        num_processes: Worker processes (cases are independent).
        progress: Show a tqdm progress bar on stderr.

    Returns:
        ``(dataset folder, report)``.

    Raises:
        ValueError: Bad cases without ``skip_bad`` (every case and reason is listed), no good case at all,
            an unrecognised or mixed layout, or a clash of dataset ids/names.
        FileExistsError: The dataset folder exists and ``overwrite`` is False.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1; got {num_processes}")
    input_dir = Path(input_dir)
    layout_name, case_dirs = _scan(input_dir)
    layout = LAYOUTS[layout_name]
    target = raw_dataset_target(raw_root, dataset_id, name if name is not None else layout.default_name, overwrite)
    with staged_dataset_folder(target, overwrite=overwrite) as staging:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        jobs = [(d, layout_name, staging) for d in case_dirs]
        results = _map_cases(jobs, int(num_processes), progress, target.name)
        bad = {case: reasons for case, reasons in results if reasons}
        good = sorted(case for case, reasons in results if not reasons)
        if bad and not skip_bad:
            listing = "\n".join(f"  {case}: {'; '.join(reasons)}" for case, reasons in sorted(bad.items()))
            raise ValueError(f"{len(bad)} of {len(results)} cases in {input_dir} cannot be converted "
                             f"(use --skip-bad to leave them out):\n{listing}")
        if not good:
            raise ValueError(f"none of the {len(results)} cases in {input_dir} can be converted: {bad}")
        generate_dataset_json(
            str(staging), channel_names=dict(CHANNEL_NAMES), labels=dict(NNUNET_LABELS),
            num_training_cases=len(good), file_ending=".nii.gz", regions_class_order=REGIONS_CLASS_ORDER,
            dataset_name=target.name, license="see the BraTS data use agreement",
            description=f"{layout.description}, converted to nnU-Net labels 1 edema, 2 necrosis/non-enhancing "
                        f"tumour core, 3 enhancing tumour",
            converted_by="nnunetv2_ext.data.brats", brats_layout=layout_name)
        report = ConversionReport(layout_name, str(input_dir), target.name, good, dict(sorted(bad.items())))
        (staging / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=4))
    return target, report


def _layout_of_predictions(input_dir: Path, layout: str | None) -> BratsLayout:
    recorded = None
    dj = input_dir / "dataset.json"
    if dj.is_file():
        recorded = json.loads(dj.read_text()).get("brats_layout")
    if recorded is not None and layout is not None and recorded != layout:
        raise ValueError(f"{dj} records brats_layout {recorded!r} but layout={layout!r} was passed")
    chosen = recorded if recorded is not None else layout
    if chosen is None:
        raise ValueError(f"no brats_layout in {input_dir / 'dataset.json'}; use --layout with one of {list(LAYOUTS)}")
    if chosen not in LAYOUTS:
        raise ValueError(f"unknown BraTS layout {chosen!r}; expected one of {list(LAYOUTS)}")
    return LAYOUTS[chosen]


def to_brats_labels(input_dir: str | os.PathLike, output_dir: str | os.PathLike, layout: str | None = None,
                    overwrite: bool = False) -> list[Path]:
    """Write nnU-Net predictions (labels 0..3, ``{case}.nii.gz``) in the source BraTS label convention.

    2021: 1->2, 2->1, 3->4; GLI: 1->2, 2->1, 3->3. The layout is read from ``dataset.json`` in ``input_dir``
    (nnU-Net copies it into every predictions folder) or else taken from ``layout``. Geometry and pixel type
    are kept. All files are converted into a temporary folder first, so an error leaves ``output_dir`` as it
    was.

    Args:
        input_dir: nnU-Net predictions folder.
        output_dir: Where to write; must be empty or missing unless ``overwrite``.
        layout: ``'2021'`` or ``'gli'``; needed only when ``input_dir`` has no ``dataset.json`` recording it.
        overwrite: Write into a non-empty ``output_dir``, replacing files of the same name.

    Returns:
        The written files, sorted.

    Raises:
        ValueError: Unknown or conflicting layout, a value outside 0..3 (file and values named), or
            ``output_dir`` equal to ``input_dir``.
        FileNotFoundError: ``input_dir`` is missing or holds no ``.nii.gz`` file.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"predictions folder {input_dir} does not exist")
    lay = _layout_of_predictions(input_dir, layout)
    files = sorted(p for p in input_dir.glob("*.nii.gz") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no .nii.gz predictions in {input_dir}")
    if output_dir.resolve() == input_dir.resolve():
        raise ValueError(f"output_dir must differ from input_dir ({input_dir}): converting in place would lose "
                         f"the nnU-Net labels")
    # an existing folder is written into (the files are renamed in one by one), a missing one is renamed whole
    with staged_dataset_folder(output_dir, overwrite=overwrite, merge=True) as staging:
        for f in files:
            image = sitk.ReadImage(str(f))
            values = np.unique(sitk.GetArrayViewFromImage(image))
            unknown = [v.item() for v in values if v not in lay.to_source]
            if unknown:
                raise ValueError(f"{f}: value(s) {unknown} are not nnU-Net BraTS labels {sorted(lay.to_source)}")
            sitk.WriteImage(_relabel(image, lay.to_source), str(staging / f.name), useCompression=True)
    return [output_dir / f.name for f in files]
