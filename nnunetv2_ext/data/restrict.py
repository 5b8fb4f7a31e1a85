"""Modality restriction: derive an nnU-Net raw dataset that keeps only some of the input channels.

BrainSegFounder (Cox et al., 2024, section 2.4.4 "Modality Restriction and Flexibility in Training and
Inference") ablates the number of MRI modalities by training and fine-tuning on BraTS with a single modality
instead of all four, and adapts a two-channel pretrained network to one modality by feeding the same image
to both input channels. :func:`restrict_dataset` builds such datasets from an existing raw dataset:
``channels=["T1"]`` keeps one channel, ``channels=["T1", "T1"]`` repeats it, and any order renumbers them.

The new dataset is written through :func:`nnunetv2_ext.data.raw_dataset.staged_dataset_folder` (a hidden
``.DatasetXXX_Name.partial-*`` sibling renamed into place only when complete); an existing folder is replaced
only with ``overwrite``, and a second dataset with the same id is refused
(:func:`~nnunetv2_ext.data.raw_dataset.raw_dataset_target`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from nnunetv2_ext.data.raw_dataset import raw_dataset_target, staged_dataset_folder
from nnunetv2_ext.dataset_json import channel_names

_DATASET_RE = re.compile(r"Dataset(\d{3})_(.+)")


def find_raw_dataset(raw_root: str | os.PathLike, dataset: int | str) -> Path:
    """Folder of a raw dataset under ``raw_root`` given its id (``4``, ``"004"``) or full name.

    Raises:
        FileNotFoundError: No such dataset (the message lists the datasets found).
        ValueError: Several folders carry the id.
    """
    raw_root = Path(raw_root)
    found = sorted(p.name for p in raw_root.glob("Dataset*_*") if p.is_dir() and _DATASET_RE.fullmatch(p.name))
    if isinstance(dataset, int) or (isinstance(dataset, str) and dataset.isdigit()):
        matches = [n for n in found if int(_DATASET_RE.fullmatch(n).group(1)) == int(dataset)]
        if len(matches) > 1:
            raise ValueError(f"{raw_root} holds several datasets with id {int(dataset)}: {matches}")
    else:
        matches = [n for n in found if n == dataset]
    if not matches:
        raise FileNotFoundError(f"no raw dataset {dataset!r} in {raw_root}; found {found}")
    return raw_root / matches[0]


def _case_files(folder: Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """``{case: {channel index: file}}`` for the ``{case}_{XXXX}{file_ending}`` files of an images folder."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending))
    cases: dict[str, dict[int, Path]] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.fullmatch(p.name)
        if m and p.is_file():
            cases.setdefault(m.group(1), {})[int(m.group(2))] = p
    return cases


def _copy_images(src: Path, dst: Path, source_channels: list[int], file_ending: str, progress: bool) -> None:
    dst.mkdir()
    cases = _case_files(src, file_ending)
    for case, files in tqdm(cases.items(), total=len(cases), desc=f"restrict {src.parent.name}/{src.name}",
                            unit="case", file=sys.stderr, disable=not progress):
        for new, old in enumerate(source_channels):
            if old not in files:
                raise FileNotFoundError(f"{src / f'{case}_{old:04d}{file_ending}'} is missing; every case of "
                                        f"{src} needs channel {old}")
            shutil.copyfile(files[old], dst / f"{case}_{new:04d}{file_ending}")


def restrict_dataset(raw_root: str | os.PathLike, dataset: int | str, channels: Sequence[str],
                     new_dataset_id: int, new_name: str | None = None,
                     preprocessed_root: str | os.PathLike | None = None, overwrite: bool = False,
                     allow_repeated: bool = False, progress: bool = False) -> Path:
    """Write a raw dataset that keeps only ``channels`` of an existing one (BrainSegFounder section 2.4.4).

    The new dataset ``Dataset{new_dataset_id:03d}_{new_name}`` holds, for every case of ``imagesTr`` (and
    ``imagesTs`` if present), the requested channels renumbered ``_0000, _0001, ...`` in the order given;
    files are copied byte for byte. ``labelsTr`` (and ``labelsTs`` if present) are copied unchanged. Its
    ``dataset.json`` is the old one with the new ``channel_names`` and ``"restricted_from": <old name>``. A
    repeated channel (``["T1", "T1"]``) is refused unless ``allow_repeated``: two channels of one name make
    the multi-encoder's by-name weight transfer ambiguous, and a typo is the likelier cause; with it, one
    modality feeds both inputs of a two-channel network. If
    ``preprocessed_root/<old dataset>/splits_final.json`` exists it is copied to
    ``preprocessed_root/<new dataset>/`` so that the cross-validation folds stay the same.

    Args:
        raw_root: nnU-Net raw folder holding the source dataset; the new one is written beside it.
        dataset: Id or full folder name of the source dataset.
        channels: Channel names from the source ``dataset.json`` ``channel_names``, in the new order.
        new_dataset_id: Id of the new dataset, 1..999, not used by another dataset in ``raw_root``.
        new_name: Name of the new dataset; default ``<old name>_<channels joined by '-'>``.
        preprocessed_root: nnU-Net preprocessed folder to carry ``splits_final.json`` over in, or None.
        overwrite: Replace an existing new dataset folder (and its ``splits_final.json``).
        allow_repeated: Accept a channel named twice (``--allow-repeated-channels``).
        progress: A tqdm bar over the cases on stderr.

    Returns:
        Path of the new raw dataset folder.

    Raises:
        ValueError: ``channels`` is empty, names a channel twice (without ``allow_repeated``) or one the
            source lacks (the message lists the available ones), the source ``dataset.json`` lists its files
            explicitly (``"dataset"`` key), or the id/name rules of :func:`raw_dataset_target` are broken.
        FileNotFoundError: The source dataset, its ``dataset.json`` or one of its image files is missing.
        FileExistsError: The new dataset (or its ``splits_final.json``) exists and ``overwrite`` is False.
    """
    source = find_raw_dataset(raw_root, dataset)
    dj_path = source / "dataset.json"
    if not dj_path.is_file():
        raise FileNotFoundError(f"{dj_path} does not exist")
    dataset_json = json.loads(dj_path.read_text())
    if "dataset" in dataset_json:
        raise ValueError(f"{dj_path} lists its files explicitly (a 'dataset' key); restrict_dataset supports "
                         f"only the imagesTr/labelsTr layout")
    if isinstance(channels, str):
        channels = [channels]
    channels = list(channels)
    if not channels:
        raise ValueError("channels must name at least one channel")
    by_name = {n: i for i, n in enumerate(channel_names(dataset_json))}
    unknown = [c for c in channels if c not in by_name]
    if unknown:
        raise ValueError(f"unknown channel(s) {unknown} for {source.name}; available: {list(by_name)}")
    repeated = sorted({c for c in channels if channels.count(c) > 1})
    if repeated and not allow_repeated:
        raise ValueError(f"--channels {','.join(channels)} names {repeated} more than once: expected each channel "
                         f"once (available: {list(by_name)}); use --allow-repeated-channels to feed one modality to "
                         f"several inputs")
    source_channels = [by_name[c] for c in channels]

    old_name = _DATASET_RE.fullmatch(source.name).group(2)
    name = new_name if new_name is not None else f"{old_name}_{'-'.join(channels)}"
    target = raw_dataset_target(raw_root, new_dataset_id, name, overwrite)
    if target == source:
        raise ValueError(f"the new dataset would replace its source {source}; choose another id or name")

    splits_src = splits_dst = None
    if preprocessed_root is not None:
        splits_src = Path(preprocessed_root) / source.name / "splits_final.json"
        splits_dst = Path(preprocessed_root) / target.name / "splits_final.json"
        if not splits_src.is_file():
            splits_src = None
        elif splits_dst.exists() and not overwrite:
            raise FileExistsError(f"{splits_dst} already exists; use --overwrite to replace it")

    file_ending = dataset_json.get("file_ending", ".nii.gz")
    with staged_dataset_folder(target, overwrite=overwrite) as staging:
        for split in ("Tr", "Ts"):
            if (source / f"images{split}").is_dir():
                _copy_images(source / f"images{split}", staging / f"images{split}", source_channels, file_ending,
                             progress)
            if (source / f"labels{split}").is_dir():
                shutil.copytree(source / f"labels{split}", staging / f"labels{split}", copy_function=shutil.copyfile)
        new_json = dict(dataset_json)
        new_json["channel_names"] = {str(i): c for i, c in enumerate(channels)}
        new_json["restricted_from"] = source.name
        (staging / "dataset.json").write_text(json.dumps(new_json, indent=4, sort_keys=False))
        if splits_src is not None:
            splits_dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = splits_dst.with_name(f".{splits_dst.name}.partial")
            shutil.copyfile(splits_src, tmp)
            os.replace(tmp, splits_dst)
    return target
