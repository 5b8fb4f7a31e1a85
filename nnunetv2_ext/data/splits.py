"""Cross-validation and few-shot splits in nnU-Net's ``splits_final.json`` format.

``splits_final.json`` (in ``$nnUNet_preprocessed/DatasetXXX``) is a list of ``{'train': [...], 'val': [...]}``
dicts; ``nnUNetv2_train DATASET CONFIG FOLD`` trains on entry ``FOLD``. This module

- converts the MONAI/SwinUNETR BraTS 2021 folds (``brats21_folds.json``) so that nnU-Net models are validated
  on the same five folds as the transformer baselines (:func:`splits_from_monai_folds`,
  :func:`write_monai_splits`);
- appends few-shot folds: random subsets of one fold's training cases with its validation cases unchanged, as
  in BrainSegFounder's limited-data experiment (Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models
  for Neuroimage Segmentation", section 2.4.3 and Fig. 5: 5 %-40 % of the training
  data, 5 random subsets per level) (:func:`few_shot_splits`, :func:`append_few_shot_splits`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnunetv2_ext.io_utils import atomic_write_json, atomic_write_text, load_json

#: Name of the index written beside ``splits_final.json`` describing the appended few-shot folds.
FEW_SHOT_INDEX = "few_shot_index.json"
#: Suffixes removed from a label file name (after its extension) to obtain the case id.
LABEL_SUFFIXES: tuple[str, ...] = ("_seg", "-seg")
#: Few-shot fractions are turned into integers (parts per million) to seed the subset generator.
_FRACTION_RESOLUTION = 1_000_000

_MONAI_HINT = ("case ids are the label file names without extension and without a trailing '_seg'/'-seg' "
               "(e.g. 'BraTS2021_01146_seg.nii.gz' -> 'BraTS2021_01146'); the nnU-Net dataset must have been "
               "converted with the same case names and hold every case of the folds file")


def case_id_from_path(path: str) -> str:
    """Case id of a label path: its base name without extension (``.nii.gz`` counts as one) and suffix ``_seg``."""
    name = os.path.basename(str(path).replace("\\", "/"))
    name = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]
    for suffix in LABEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _preview(items: Sequence[str], limit: int = 10) -> str:
    items = sorted(items)
    return ", ".join(items[:limit]) + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def splits_from_monai_folds(folds_json: dict, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """nnU-Net splits from a MONAI folds file (``{"training": [{"image": [...], "label": path, "fold": k}]}``).

    Each entry's case id is :func:`case_id_from_path` of its ``label``. Split ``k`` validates on the cases of
    fold ``k`` and trains on all others; the lists keep the order of ``case_ids``.

    Args:
        folds_json: the parsed folds file (e.g. SwinUNETR's ``brats21_folds.json``).
        case_ids: the case ids of the nnU-Net dataset (e.g. the keys of ``dataset.json``'s training set).

    Raises:
        ValueError: the file has no ``training`` list, an entry lacks ``label``/``fold``, folds are not
            numbered 0..K-1, a case appears twice, or the folds and ``case_ids`` disagree (up to 10 listed).
    """
    entries = folds_json.get("training") if isinstance(folds_json, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("the folds file must hold a non-empty 'training' list of {'image', 'label', 'fold'} "
                         "entries (MONAI's brats21_folds.json format)")
    fold_of: dict[str, int] = {}
    duplicates = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "label" not in entry or "fold" not in entry:
            raise ValueError(f"entry {i} of 'training' needs 'label' and 'fold' keys, got {entry!r}")
        case = case_id_from_path(entry["label"])
        if case in fold_of:
            duplicates.append(case)
        fold_of[case] = int(entry["fold"])
    if duplicates:
        raise ValueError(f"{len(duplicates)} case id(s) appear more than once in the folds file: "
                         f"{_preview(duplicates)}; {_MONAI_HINT}")
    folds = sorted(set(fold_of.values()))
    if folds != list(range(len(folds))):
        raise ValueError(f"folds must be numbered 0..K-1 so that fold k becomes split k, found {folds}")

    wanted = list(dict.fromkeys(case_ids))
    unknown = sorted(set(fold_of) - set(wanted))
    unassigned = sorted(set(wanted) - set(fold_of))
    if unknown or unassigned:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} case(s) of the folds file are not in the dataset: {_preview(unknown)}")
        if unassigned:
            parts.append(f"{len(unassigned)} dataset case(s) are in no fold: {_preview(unassigned)}")
        raise ValueError("; ".join(parts) + f". Hint: {_MONAI_HINT}")

    return [{"train": [c for c in wanted if fold_of[c] != k], "val": [c for c in wanted if fold_of[c] == k]}
            for k in folds]


def _subset_seed(seed: int, fraction: float, repeat: int) -> int:
    sequence = np.random.SeedSequence([seed, int(round(fraction * _FRACTION_RESOLUTION)), repeat])
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def few_shot_splits(base_split: dict, fractions: Sequence[float], repeats: int,
                    seed: int) -> list[tuple[dict[str, list[str]], dict[str, Any]]]:
    """Random subsets of a split's training cases (Cox et al. 2024, section 2.4.3: 5 random subsets per data level).

    For every fraction (in the order given) and repeat ``r`` in ``range(repeats)``, ``train`` is a subset of
    ``base_split['train']`` of size ``max(1, round_half_up(fraction * n))`` drawn without replacement by
    ``numpy.random.default_rng`` seeded with a child seed derived from ``(seed, fraction, repeat)``; the draw
    is taken from the sorted case list, so a subset depends only on these three numbers and the set of
    training cases, not on the order of ``fractions`` or of the list. ``val`` is ``base_split['val']``.

    Returns:
        ``[(split, info)]`` with ``info = {'fraction', 'repeat', 'n_train', 'seed', 'subset_seed'}``
        (``subset_seed`` is the derived seed of that subset).

    Raises:
        ValueError: a fraction outside (0, 1], ``repeats < 1``, a negative seed, or a base split without
            training cases.
    """
    if not isinstance(base_split, dict) or "train" not in base_split or "val" not in base_split:
        raise ValueError("base_split must be a {'train': [...], 'val': [...]} dict (an entry of splits_final.json)")
    bad = [f for f in fractions if not 0 < float(f) <= 1]
    if bad or not len(fractions):
        raise ValueError(f"fractions must be a non-empty list of values in (0, 1], got {list(fractions)} "
                         f"(write 5 % as 0.05)")
    if int(repeats) < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    pool = sorted(base_split["train"])
    if not pool:
        raise ValueError("base_split['train'] is empty: there is nothing to subsample")
    n = len(pool)
    out = []
    for fraction in fractions:
        fraction = float(fraction)
        size = max(1, int(np.floor(fraction * n + 0.5)))
        for repeat in range(int(repeats)):
            subset_seed = _subset_seed(int(seed), fraction, repeat)
            chosen = np.sort(np.random.default_rng(subset_seed).choice(n, size=size, replace=False))
            split = {"train": [pool[i] for i in chosen], "val": list(base_split["val"])}
            info = {"fraction": fraction, "repeat": repeat, "n_train": size, "seed": int(seed),
                    "subset_seed": subset_seed}
            out.append((split, info))
    return out


def _load_splits(splits_file: Path) -> list[dict]:
    if not splits_file.is_file():
        raise FileNotFoundError(
            f"{splits_file} does not exist: nnU-Net writes splits_final.json when a training starts (run "
            f"nnUNetv2_plan_and_preprocess and one nnUNetv2_train, e.g. fold 0), or write the MONAI folds with "
            f"`nnunetv2_ext splits monai`")
    splits = load_json(splits_file)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise ValueError(f"{splits_file} is not an nnU-Net splits file (a list of {{'train', 'val'}} dicts)")
    return splits


def append_few_shot_splits(splits_file: str | os.PathLike, fractions: Sequence[float], repeats: int, seed: int,
                           base_fold: int = 0, overwrite: bool = False) -> list[dict[str, Any]]:
    """Append few-shot folds (:func:`few_shot_splits` of fold ``base_fold``) to ``splits_final.json``.

    The new folds follow the existing ones, so ``nnUNetv2_train ... FOLD`` can train them. The splits file is
    replaced atomically; the first time, the original is kept as ``splits_final.json.bak``. An index
    ``few_shot_index.json`` beside it lists ``{'fold', 'fraction', 'repeat', 'n_train', 'base_fold', 'seed'}``
    per new fold; it is written before the splits so that an interrupted run is refused, not duplicated.

    Args:
        splits_file: path of ``splits_final.json``.
        fractions: fractions of the base fold's training cases, each in (0, 1].
        repeats: random subsets per fraction.
        seed: base seed.
        base_fold: the original fold whose training cases are subsampled and whose validation cases are kept.
        overwrite: if an index exists, drop the folds it lists (everything from its first fold on) and append
            anew; the original folds before it are kept.

    Returns:
        The index.

    Raises:
        FileNotFoundError: ``splits_file`` does not exist.
        FileExistsError: few-shot folds were already appended and ``overwrite`` is False.
        ValueError: ``base_fold`` is not an original fold, or the splits file no longer matches the index.
    """
    splits_file = Path(splits_file)
    splits = _load_splits(splits_file)
    index_file = splits_file.parent / FEW_SHOT_INDEX
    n_original = len(splits)
    if index_file.exists():
        if not overwrite:
            raise FileExistsError(f"few-shot folds were already appended to {splits_file} (see {index_file}); "
                                  f"use --overwrite to rebuild them")
        old_index = load_json(index_file)
        folds = [int(e["fold"]) for e in old_index]
        n_original = min(folds) if folds else len(splits)
        if n_original > len(splits):
            raise ValueError(f"{index_file} says the few-shot folds start at fold {n_original} but {splits_file} "
                             f"has only {len(splits)} folds; restore {splits_file.name}.bak and delete the index")
    if not 0 <= int(base_fold) < n_original:
        raise ValueError(f"base_fold must be one of the {n_original} original folds (0..{n_original - 1}), "
                         f"got {base_fold}")
    base_fold = int(base_fold)

    new_splits = [dict(s) for s in splits[:n_original]]
    index = []
    for split, info in few_shot_splits(splits[base_fold], fractions, repeats, seed):
        index.append({"fold": len(new_splits), "fraction": info["fraction"], "repeat": info["repeat"],
                      "n_train": info["n_train"], "base_fold": base_fold, "seed": info["seed"]})
        new_splits.append(split)

    backup = splits_file.with_name(splits_file.name + ".bak")
    if not backup.exists():
        shutil.copy2(splits_file, backup)
    atomic_write_json(index, index_file, overwrite=True)
    atomic_write_json(new_splits, splits_file, overwrite=True)
    return index


def write_monai_splits(splits_file: str | os.PathLike, folds_json_path: str | os.PathLike,
                       case_ids: Sequence[str], overwrite: bool = False) -> list[dict[str, list[str]]]:
    """Write ``splits_final.json`` from a MONAI folds file (see :func:`splits_from_monai_folds`).

    Overwriting also removes a ``few_shot_index.json`` beside it, which described the replaced file.

    Raises:
        FileNotFoundError: the folds file does not exist.
        FileExistsError: ``splits_file`` exists and ``overwrite`` is False.
        ValueError: see :func:`splits_from_monai_folds`.
    """
    splits_file = Path(splits_file)
    try:
        folds_json = load_json(folds_json_path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{folds_json_path} is not valid JSON: {e}") from e
    splits = splits_from_monai_folds(folds_json, case_ids)
    if splits_file.exists() and not overwrite:
        raise FileExistsError(f"{splits_file} already exists; use --overwrite to replace it")
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(splits, splits_file, overwrite=True)
    stale_index = splits_file.parent / FEW_SHOT_INDEX
    if stale_index.exists():
        stale_index.unlink()
    return splits


def dataset_case_ids(dataset: str | int) -> list[str]:
    """Case ids of a raw nnU-Net dataset (``labelsTr`` file names without the file ending), sorted."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_raw.is_set():
        raise RuntimeError("nnUNet_raw is not set: export it as for nnU-Net's own commands")
    folder = Path(nnUNet_raw.get()) / maybe_convert_to_dataset_name(dataset)
    ending = json.loads((folder / "dataset.json").read_text())["file_ending"]
    return sorted(p.name[:-len(ending)] for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending))


def write_default_splits(splits_file: str | os.PathLike, case_ids: Sequence[str], overwrite: bool = False
                         ) -> list[dict[str, list[str]]]:
    """nnU-Net's own 5-fold split (``generate_crossval_split`` with nnUNetTrainer.do_split's seed 12345), written
    before training so that few-shot folds can be appended to it."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits_file = Path(splits_file)
    if splits_file.exists() and not overwrite:
        raise FileExistsError(f"{splits_file} already exists; pass --overwrite to replace it")
    splits = generate_crossval_split(sorted(case_ids), seed=12345, n_splits=5)
    splits_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(splits, splits_file, overwrite=True)
    return splits


#: Name of the test-case list ``write_case_list_splits`` writes beside ``splits_final.json``.
TEST_CASES_FILE = "test_cases.txt"


def read_case_list(path: str | os.PathLike) -> list[str]:
    """The case ids of a case-list file, in file order.

    Format: one case a line; blank lines and lines starting with ``#`` are skipped; a line may be a path (its base
    name counts), and an extension (``.nii.gz``, ``.npy``, ...) and a trailing ``_seg`` / ``-seg`` are dropped, so the
    lists published with RFNet / mmFormer's code (``Brats18_...`` ids, or ``HGG/Brats18_...`` paths) read as they are.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a case listed twice, or no case.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"case list {path} does not exist")
    cases = [case_id_from_path(line.strip()) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    twice = sorted({c for c in cases if cases.count(c) > 1})
    if twice:
        raise ValueError(f"case list {path} lists cases more than once: {_preview(twice)}")
    if not cases:
        raise ValueError(f"case list {path} lists no case (one case id a line)")
    return cases


def case_list_splits(lists: dict[str, Sequence[str]], case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """nnU-Net's fold 0 from a fixed train / val (/ test) protocol: ``[{'train': train, 'val': val}]``.

    Args:
        lists: ``{'--train': ids, '--val': ids, '--test': ids}`` (keys name the flags in the errors; ``--test`` may
            be missing).
        case_ids: the dataset's cases.

    Raises:
        ValueError: a list names a case the dataset lacks (the flag is named), or a case is in two lists.
    """
    known = set(case_ids)
    for flag, ids in lists.items():
        unknown = [c for c in ids if c not in known]
        if unknown:
            raise ValueError(f"{flag} lists {len(unknown)} case(s) that the dataset does not hold: {_preview(unknown)}"
                             f"; the dataset's cases look like {_preview(list(case_ids), 3)}")
    flags = list(lists)
    for i, a in enumerate(flags):
        for b in flags[i + 1:]:
            both = set(lists[a]) & set(lists[b])
            if both:
                raise ValueError(f"{len(both)} case(s) are in both {a} and {b}: {_preview(list(both))}")
    return [{"train": list(lists["--train"]), "val": list(lists["--val"])}]


def write_case_list_splits(preprocessed_dataset: str | os.PathLike, train: str | os.PathLike,
                           val: str | os.PathLike, test: str | os.PathLike | None, case_ids: Sequence[str],
                           overwrite: bool = False) -> dict[str, Any]:
    """Write ``splits_final.json`` (fold 0: the train list, validated on the val list) and ``test_cases.txt`` (the
    test list, for ``nnunetv2_ext benchmark missing-modality --cases``) into ``preprocessed_dataset``: the fixed
    protocol of RFNet / mmFormer (BraTS 2018: 199 / 29 / 57 cases), from the user's case-list files
    (:func:`read_case_list`). Nothing is written unless every list is valid.

    Returns:
        ``{'splits': path, 'test_cases': path or None, 'n_train', 'n_val', 'n_test', 'n_unused'}``.

    Raises:
        FileExistsError: ``splits_final.json`` exists and ``overwrite`` is False.
        FileNotFoundError / ValueError: see :func:`read_case_list` and :func:`case_list_splits`.
    """
    folder = Path(preprocessed_dataset)
    lists = {"--train": read_case_list(train), "--val": read_case_list(val)}
    if test is not None:
        lists["--test"] = read_case_list(test)
    splits = case_list_splits(lists, case_ids)
    splits_file, test_file = folder / "splits_final.json", folder / TEST_CASES_FILE
    if splits_file.exists() and not overwrite:
        raise FileExistsError(f"{splits_file} already exists; pass --overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    if test is not None:
        atomic_write_text("".join(f"{case}\n" for case in lists["--test"]), test_file, overwrite=True)
    atomic_write_json(splits, splits_file, overwrite=True)
    stale_index = folder / FEW_SHOT_INDEX
    if stale_index.exists():
        stale_index.unlink()
    used = {c for ids in lists.values() for c in ids}
    return {"splits": splits_file, "test_cases": test_file if test is not None else None,
            "n_train": len(lists["--train"]), "n_val": len(lists["--val"]), "n_test": len(lists.get("--test", [])),
            "n_unused": len(set(case_ids) - used)}

