"""Import a folder of unlabeled scans as an nnU-Net v2 raw dataset, for self-supervised pretraining.

The paper pretrains on UK Biobank T1 and T2-FLAIR volumes (section 3.2 and 4.3: "self-supervised learning using a
large, unlabeled dataset of images from the UKB dataset") before fine-tuning on BraTS. nnU-Net's
``nnUNetv2_plan_and_preprocess`` only accepts a raw dataset with ``imagesTr``, ``labelsTr`` and a
``dataset.json``, so this module copies the scans into that layout and writes foreground-mask label maps with the
geometry of the first modality. Every case is checked (all modalities present and readable, 3D, same grid, finite
voxels); bad cases are skipped with their reason or stop the import, and the report is saved beside the data.

The input folder is only ever read. The dataset is written into a hidden sibling folder
``raw_root/.Dataset{id:03d}_{name}.partial-XXXXXXXX`` and renamed into place when complete
(:func:`nnunetv2_ext.data.raw_dataset.staged_dataset_folder`), so an interrupted import never leaves a folder that
looks like a finished dataset.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunetv2_ext.data.image_checks import count_non_finite
from nnunetv2_ext.data.raw_dataset import staged_dataset_folder

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
"""File endings recognised as images (case-insensitive)."""
SPACING_RTOL = 1e-4
"""Relative tolerance when comparing voxel spacings between the modalities of a case."""
ORIGIN_ATOL_VOXELS = 1e-4
"""Absolute origin tolerance between modalities, as a fraction of the largest voxel spacing."""
DIRECTION_ATOL = 1e-4
"""Absolute tolerance on the direction cosines between modalities."""
LABELS = {"background": 0, "foreground": 1}
"""Labels written to dataset.json; the label maps are foreground masks, not annotations."""
REPORT_NAME = "import_report.json"

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class ImportReport:
    """Outcome of :func:`import_unlabeled_dataset`.

    Attributes:
        written: Case ids written to the dataset (after sanitising), in input order.
        skipped: Input case id -> why the case was left out.
        renamed: Input case id -> dataset case id, for ids changed by sanitising.
        source: The input folder.
        modalities: The modalities in channel order.
    """

    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    source: str = ""
    modalities: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """JSON-serialisable dict (the content of ``import_report.json``) with counts added."""
        return {"num_written": len(self.written), "num_skipped": len(self.skipped), **asdict(self)}


# ---------------------------------------------------------------------------------------------------------------------
# discovery


def _split_suffix(name: str) -> tuple[str, str] | None:
    """``('stem', '.nii.gz')`` for a recognised image file name, else None."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return None


def _match_modality(stem: str, modalities: Sequence[str], whole_stem: bool) -> tuple[str, str] | None:
    """Match the end of ``stem`` against the modalities, case-insensitively.

    Returns ``(modality, prefix)`` for the longest modality that ends ``stem`` after ``_`` or ``-`` (or equals it
    when ``whole_stem``), where ``prefix`` is the part before the separator; None if no modality matches.
    """
    lower = stem.lower()
    for m in sorted(modalities, key=len, reverse=True):
        ml = m.lower()
        if whole_stem and lower == ml:
            return m, ""
        if len(lower) > len(ml) + 1 and lower.endswith(ml) and lower[-len(ml) - 1] in "_-":
            return m, stem[: -len(ml) - 1]
    return None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _add(cases: dict[str, dict[str, Path]], problems: dict[str, str], case: str, modality: str, path: Path) -> None:
    files = cases.setdefault(case, {})
    if modality in files and files[modality] != path:
        problems[case] = (f"more than one file for modality {modality}: {files[modality].name} and {path.name}; "
                          "remove one or give --pattern")
    else:
        files[modality] = path


def _pattern_regex(pattern: str, modalities: Sequence[str]) -> re.Pattern:
    """Compile a ``{case}``/``{modality}`` template into a regex over ``/``-separated relative paths."""
    if "{case}" not in pattern or "{modality}" not in pattern:
        raise ValueError(f"pattern must contain both {{case}} and {{modality}}, e.g. '{{case}}/{{case}}_{{modality}}"
                         f".nii.gz' or '{{case}}_{{modality}}.nii.gz'; got {pattern!r}")
    mods = "|".join(re.escape(m) for m in sorted(modalities, key=len, reverse=True))
    out, seen = [], set()
    for token in re.split(r"(\{case\}|\{modality\})", pattern.replace(os.sep, "/")):
        if token in ("{case}", "{modality}"):
            key = token[1:-1]
            if key in seen:
                out.append(f"(?P={key})")
            else:
                out.append(r"(?P<case>[^/]+?)" if key == "case" else f"(?P<modality>(?i:{mods}))")
                seen.add(key)
        elif "{" in token or "}" in token:
            raise ValueError(f"pattern may only contain the placeholders {{case}} and {{modality}}; got {pattern!r}")
        else:
            out.append(re.escape(token))
    return re.compile("".join(out))


def _discover(images_dir: Path, modalities: Sequence[str], pattern: str | None
              ) -> tuple[dict[str, dict[str, Path]], dict[str, str]]:
    """``(case -> {modality: file}, case -> problem)``; problems are ambiguities found while matching files."""
    cases: dict[str, dict[str, Path]] = {}
    problems: dict[str, str] = {}
    canonical = {m.lower(): m for m in modalities}
    if pattern is not None:
        regex = _pattern_regex(pattern, modalities)
        depth = pattern.replace(os.sep, "/").count("/")
        for path in sorted(_walk(images_dir, depth)):
            match = regex.fullmatch(path.relative_to(images_dir).as_posix())
            if match:
                _add(cases, problems, match["case"], canonical[match["modality"].lower()], path)
        return cases, problems

    entries = sorted(p for p in images_dir.iterdir() if _visible(p))
    folders = [p for p in entries if p.is_dir() and any(_split_suffix(f.name) for f in p.iterdir() if f.is_file())]
    top_images = [p for p in entries if p.is_file() and _split_suffix(p.name)]
    if folders and top_images:
        raise ValueError(f"{images_dir} mixes case sub-folders ({folders[0].name}, ...) and image files at the top "
                         f"level ({top_images[0].name}, ...), so the layout is ambiguous; give --pattern, "
                         "e.g. '{case}/{case}_{modality}.nii.gz' or '{case}_{modality}.nii.gz'")
    for folder in folders:  # layout (a): DIR/<case>/<..._mod>.ext
        cases[folder.name] = {}
        for path in sorted(f for f in folder.iterdir() if f.is_file() and _visible(f)):
            split = _split_suffix(path.name)
            hit = split and _match_modality(split[0], modalities, whole_stem=True)
            if hit:
                _add(cases, problems, folder.name, hit[0], path)
    for path in top_images:  # layout (b): DIR/<case>_<mod>.ext
        hit = _match_modality(_split_suffix(path.name)[0], modalities, whole_stem=False)
        if hit:
            _add(cases, problems, hit[1], hit[0], path)
    return cases, problems


def _walk(root: Path, depth: int) -> Iterator[Path]:
    """Visible files exactly ``depth`` folder levels below ``root``."""
    level = [root]
    for _ in range(depth):
        level = [d for p in level for d in p.iterdir() if d.is_dir() and _visible(d)]
    for folder in level:
        yield from (f for f in folder.iterdir() if f.is_file() and _visible(f))


def _check_modalities(modalities: Sequence[str]) -> list[str]:
    modalities = [str(m) for m in modalities]
    if not modalities:
        raise ValueError("modalities must name at least one modality, e.g. ['T1', 'FLAIR']; got none")
    if len({m.lower() for m in modalities}) != len(modalities):
        raise ValueError(f"modalities must be unique (case-insensitively); got {modalities}")
    bad = [m for m in modalities if not _SAFE_ID.fullmatch(m)]
    if bad:
        raise ValueError(f"modality names may only contain letters, digits, '_' and '-'; got {bad}")
    return modalities


def find_cases(images_dir: str | Path, modalities: Sequence[str], pattern: str | None = None
               ) -> dict[str, dict[str, Path]]:
    """Find the image files of each case in a folder of unlabeled scans.

    Layouts, auto-detected when ``pattern`` is None:

    (a) one sub-folder per case: ``DIR/<case>/<file>`` where the file's stem is ``<mod>`` or ends in ``_<mod>`` or
        ``-<mod>`` (e.g. ``UKB_000_T1.nii.gz``, ``sub-01_FLAIR.nii.gz``, ``T1.nii.gz``);
    (b) flat: ``DIR/<case>_<mod>.nii.gz`` (or ``-<mod>``).

    Image files end in ``.nii.gz``, ``.nii``, ``.mha`` or ``.nrrd``; modalities match case-insensitively (the
    longest matching modality wins, so ``T1Gd`` is not taken for ``T1``); other files are ignored.

    Args:
        images_dir: Folder to scan (read only).
        modalities: Modality names, e.g. ``['T1', 'FLAIR']``.
        pattern: Explicit template relative to ``images_dir`` with ``{case}`` and ``{modality}``, e.g.
            ``'{case}/{case}_{modality}.nii.gz'`` or ``'{case}-{modality}.nii'``; overrides auto-detection.

    Returns:
        Case id (as found, not sanitised) -> {modality: file}, sorted by case id. Cases missing a modality are
        included without it so that the caller can report them.

    Raises:
        FileNotFoundError: ``images_dir`` is not a folder.
        ValueError: Invalid modalities or pattern, an ambiguous layout, or a case with two files for one modality.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist or is not a folder; give --images the "
                                "folder that holds the scans")
    cases, problems = _discover(images_dir, _check_modalities(modalities), pattern)
    if problems:
        case, reason = next(iter(problems.items()))
        raise ValueError(f"case {case!r}: {reason}")
    return dict(sorted(cases.items()))


def sanitise_case_id(case: str) -> str:
    """nnU-Net-safe case id: every character other than letters, digits, ``_`` and ``-`` becomes ``_``."""
    return _UNSAFE_CHAR.sub("_", case) or "_"


# ---------------------------------------------------------------------------------------------------------------------
# per-case checks and writing


def _geometry(img: sitk.Image) -> dict[str, tuple]:
    return {"size": tuple(img.GetSize()), "spacing": tuple(img.GetSpacing()), "origin": tuple(img.GetOrigin()),
            "direction": tuple(img.GetDirection())}


def _geometry_mismatch(ref: dict[str, tuple], other: dict[str, tuple]) -> tuple[str, tuple, tuple] | None:
    """Name the first geometry property that differs (within the module tolerances), with both values."""
    if ref["size"] != other["size"]:
        return "size", ref["size"], other["size"]
    if not np.allclose(ref["spacing"], other["spacing"], rtol=SPACING_RTOL, atol=0):
        return "spacing", ref["spacing"], other["spacing"]
    if not np.allclose(ref["origin"], other["origin"], rtol=0, atol=ORIGIN_ATOL_VOXELS * max(ref["spacing"])):
        return "origin", ref["origin"], other["origin"]
    if not np.allclose(ref["direction"], other["direction"], rtol=0, atol=DIRECTION_ATOL):
        return "direction", ref["direction"], other["direction"]
    return None


def _fmt(values: tuple) -> tuple:
    """Values rounded to 6 significant digits, so that float32 header fields print as written (0.9, not 0.89999)."""
    return tuple(float(f"{v:.6g}") if isinstance(v, float) else v for v in values)


def _read_error(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "ERROR" in ln.upper() or "unable" in ln.lower()), lines[-1] if lines else "")
    return msg or type(exc).__name__


def _case_problem(files: dict[str, Path], modalities: Sequence[str], out_images: Path, out_labels: Path,
                  case_id: str) -> str | None:
    """Check one case and write it; return why it is bad (and leave nothing written) or None on success.

    Images are read one at a time; ``.nii.gz`` inputs are byte-copied after their checks, other formats are
    rewritten as compressed NIfTI with SimpleITK.
    """
    missing = [m for m in modalities if m not in files]
    if missing:
        return (f"missing modality file(s): {', '.join(missing)} (found: "
                f"{', '.join(p.name for p in files.values()) or 'no matching file'})")
    written: list[Path] = []
    try:
        ref: dict[str, tuple] | None = None
        for i, m in enumerate(modalities):
            src = files[m]
            try:
                img = sitk.ReadImage(str(src))
            except RuntimeError as exc:
                return f"cannot read {m} file {src}: {_read_error(exc)}"
            if img.GetDimension() != 3:
                return f"{m} image {src.name} is not 3D: dimension {img.GetDimension()}, size {img.GetSize()}"
            if img.GetNumberOfComponentsPerPixel() != 1:
                return (f"{m} image {src.name} is not scalar: {img.GetNumberOfComponentsPerPixel()} components per "
                        "voxel")
            geometry = _geometry(img)
            if ref is None:
                ref = geometry
            else:
                mismatch = _geometry_mismatch(ref, geometry)
                if mismatch:
                    what, a, b = mismatch
                    return (f"geometry mismatch: {what} of {modalities[0]} is {_fmt(a)} but {what} of {m} is "
                            f"{_fmt(b)}")
            try:
                non_finite = count_non_finite(src, img)
            except Exception as exc:  # nibabel raises a variety of errors on corrupt NIfTI data
                return f"cannot read the voxels of {m} file {src} with nibabel: {type(exc).__name__}: {exc}"
            if non_finite:
                return f"{m} image {src.name} has non-finite voxels ({non_finite[0]} NaN, {non_finite[1]} inf)"
            if i == 0:
                # the label map is a foreground mask (voxels above the scan's minimum, i.e. the head or the
                # skull-stripped brain): nnU-Net's fingerprinting needs foreground voxels to compute its intensity
                # statistics and crashes on all-zero label maps; the pretext trainers ignore the labels
                voxels = sitk.GetArrayViewFromImage(img)
                label = sitk.GetImageFromArray((voxels > voxels.min()).astype(np.uint8))
                label.CopyInformation(img)
            dst = out_images / f"{case_id}_{i:04d}.nii.gz"
            written.append(dst)
            if src.name.lower().endswith(".nii.gz"):
                shutil.copyfile(src, dst)
            else:
                sitk.WriteImage(img, str(dst), useCompression=True)
            del img
        dst = out_labels / f"{case_id}.nii.gz"
        written.append(dst)
        sitk.WriteImage(label, str(dst), useCompression=True)
        written.clear()
        return None
    finally:
        for path in written:  # only non-empty on failure
            path.unlink(missing_ok=True)


def _import_case(args: tuple[str, str, dict[str, Path], list[str], Path]) -> tuple[str, str | None]:
    """Pool worker: ``(input case id, problem or None)``."""
    case, case_id, files, modalities, staging = args
    return case, _case_problem(files, modalities, staging / "imagesTr", staging / "labelsTr", case_id)


# ---------------------------------------------------------------------------------------------------------------------
# the importer


def _same_id_elsewhere(raw_root: Path, dataset_id: int, target_name: str) -> list[str]:
    if not raw_root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(p.name for p in raw_root.iterdir()
                  if p.is_dir() and p.name.startswith(prefix) and p.name != target_name)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def import_unlabeled_dataset(images_dir: str | Path, raw_root: str | Path, dataset_id: int,
                             modalities: Sequence[str], name: str = "Unlabeled", pattern: str | None = None,
                             skip_bad: bool = True, overwrite: bool = False, num_processes: int = 1,
                             progress: bool = False) -> tuple[Path, ImportReport]:
    """Turn a folder of unlabeled scans into an nnU-Net v2 raw dataset for self-supervised pretraining.

    Writes ``raw_root/Dataset{dataset_id:03d}_{name}`` with ``imagesTr/{case}_{i:04d}.nii.gz`` (channel ``i``
    follows ``modalities``), ``labelsTr/{case}.nii.gz`` (uint8 foreground mask, voxels above the first modality's
    minimum, on its grid: nnU-Net's ``plan_and_preprocess`` requires label maps, and its fingerprint needs foreground
    voxels), ``dataset.json`` (written by nnU-Net's ``generate_dataset_json``, labels ``{'background': 0,
    'foreground': 1}``) and ``import_report.json`` (:class:`ImportReport`). The paper pretrains on UK Biobank T1 and
    T2-FLAIR (sections 3.2 and 4.3).

    Each case is checked: every modality present, readable by SimpleITK, 3D and scalar, the same grid as the first
    modality (size; spacing within relative ``SPACING_RTOL``; origin within ``ORIGIN_ATOL_VOXELS`` voxels; direction
    within ``DIRECTION_ATOL``) and free of NaN/inf. ``.nii.gz`` inputs are copied byte for byte, other formats are
    converted. Cases are processed one at a time (or over a pool of ``num_processes`` workers), so memory holds
    one case per worker. The input folder is never modified.

    Args:
        images_dir: Folder of scans; see :func:`find_cases` for the layouts.
        raw_root: nnU-Net raw folder (``$nnUNet_raw``); created if missing.
        dataset_id: Dataset id, 1..999; must not be used by another dataset in ``raw_root``.
        modalities: Modality names in channel order, e.g. ``['T1', 'FLAIR']``.
        name: Dataset name (letters, digits, ``_`` and ``-``).
        pattern: Explicit file template with ``{case}`` and ``{modality}`` (see :func:`find_cases`).
        skip_bad: Skip bad cases and record why (True), or raise on the first one (False).
        overwrite: Replace an existing dataset folder (only once the new one is complete).
        num_processes: Worker processes (1: in this process).
        progress: Show a tqdm progress bar on stderr.

    Returns:
        ``(dataset folder, report)``.

    Raises:
        FileNotFoundError: ``images_dir`` is not a folder.
        FileExistsError: The dataset folder exists and ``overwrite`` is False.
        ValueError: Invalid arguments, another dataset with this id, case ids clashing after sanitising, no case
            found, a modality found in no case, a bad case with ``skip_bad=False``, or fewer than 2 valid cases.
    """
    images_dir, raw_root = Path(images_dir), Path(raw_root)
    modalities = _check_modalities(modalities)
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be in 1..999; got {dataset_id}")
    dataset_id = int(dataset_id)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"name must start with a letter or digit and consist of letters, digits, '_' and '-'; "
                         f"got {name!r}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1; got {num_processes}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder {images_dir} does not exist or is not a folder; give --images the "
                                "folder that holds the scans")
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    if _is_within(target, images_dir) or _is_within(images_dir, target):
        raise ValueError(f"the dataset folder {target} and the input folder {images_dir} overlap; the input must "
                         "never be modified: choose a raw_root outside the input and the input outside raw_root's "
                         "dataset folder")
    others = _same_id_elsewhere(raw_root, dataset_id, target.name)
    if others:
        raise ValueError(f"dataset id {dataset_id} is already used by {', '.join(others)} in {raw_root}; nnU-Net "
                         f"dataset ids must be unique: choose another id or remove that dataset")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; use --overwrite to replace it")

    cases, problems = _discover(images_dir, modalities, pattern)
    cases = dict(sorted(cases.items()))
    if not cases:
        raise ValueError(f"found no case in {images_dir} for modalities {modalities} "
                         f"({'pattern ' + repr(pattern) if pattern else 'auto-detected layout'}); expected "
                         "<case>/<case>_<modality>.nii.gz or <case>_<modality>.nii.gz: check the folder and "
                         "--modalities, or pass --pattern")
    absent = [m for m in modalities if not any(m in files for files in cases.values())]
    if absent:
        raise ValueError(f"modality {', '.join(absent)} was found in none of the {len(cases)} cases in {images_dir} "
                         f"(e.g. case {next(iter(cases))!r} has: "
                         f"{', '.join(p.name for p in next(iter(cases.values())).values()) or 'no matching file'}); "
                         "check the spelling in --modalities or pass --pattern")
    ids = {case: sanitise_case_id(case) for case in cases}
    by_id: dict[str, str] = {}
    for case, case_id in ids.items():
        if case_id in by_id:
            raise ValueError(f"cases {by_id[case_id]!r} and {case!r} both become {case_id!r} after replacing "
                             "characters other than letters, digits, '_' and '-'; rename one of them")
        by_id[case_id] = case

    report = ImportReport(source=str(images_dir), modalities=list(modalities),
                          renamed={c: i for c, i in ids.items() if c != i})
    with staged_dataset_folder(target, overwrite=overwrite) as staging:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        jobs = [(case, ids[case], files, modalities, staging) for case, files in cases.items()
                if case not in problems]
        for case in cases:
            if case in problems and not skip_bad:
                raise ValueError(f"case {case!r} is bad: {problems[case]} (run without --strict to skip bad "
                                 "cases and list them in import_report.json)")
        report.skipped.update({case: problems[case] for case in cases if case in problems})
        bar = tqdm(total=len(jobs), desc=target.name, file=sys.stderr, disable=not progress)
        pool = multiprocessing.get_context("spawn").Pool(num_processes) if num_processes > 1 else None
        try:
            results = pool.imap(_import_case, jobs) if pool else map(_import_case, jobs)
            for case, problem in results:
                bar.update()
                if problem is None:
                    report.written.append(ids[case])
                elif skip_bad:
                    report.skipped[case] = problem
                else:
                    raise ValueError(f"case {case!r} is bad: {problem} (fix or remove it, or run without "
                                     "--strict to skip bad cases)")
        finally:
            bar.close()
            if pool:
                pool.terminate()
                pool.join()
        report.skipped = {case: report.skipped[case] for case in cases if case in report.skipped}  # input order
        if len(report.written) < 2:
            reasons = "; ".join(f"{c}: {r}" for c, r in report.skipped.items()) or "none skipped"
            raise ValueError(f"need at least 2 valid cases (pretraining pairs two scans), found "
                             f"{len(report.written)} of {len(cases)} in {images_dir}; skipped: {reasons}")
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

        generate_dataset_json(
            str(staging), channel_names={i: m for i, m in enumerate(modalities)}, labels=dict(LABELS),
            num_training_cases=len(report.written), file_ending=".nii.gz", dataset_name=target.name,
            description=f"Unlabeled {'+'.join(modalities)} scans imported from {images_dir} for self-supervised "
                        "pretraining. The label maps in labelsTr are foreground masks (voxels above each scan's "
                        "minimum), "
                        "not annotations: nnU-Net's planning needs foreground voxels. Not for supervised training.",
            license="as the source images", converted_by="nnunetv2_ext.data.unlabeled")
        (staging / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=4))
    return target, report
