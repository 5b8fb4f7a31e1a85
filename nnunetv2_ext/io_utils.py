"""Small file helpers: atomic JSON writes and nnU-Net dataset folders."""
from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_text(text: str, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place, so a crash never leaves half a
    file. The file gets the mode a plain ``open(path, "w")`` gives under the caller's umask (``tempfile.mkstemp``
    would make it 0o600, unreadable by the group sharing an nnU-Net folder).

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_json(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """:func:`atomic_write_text` of ``obj`` as indented JSON.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    return atomic_write_text(json.dumps(obj, indent=4, sort_keys=False), path, overwrite)


def json_safe(obj: Any) -> Any:
    """``obj`` with what strict JSON cannot hold replaced: NaN and +/-inf become None (null), numpy scalars Python
    numbers, tuples lists and mapping keys strings; containers are copied, never changed in place."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path) as f:
        return json.load(f)


def preprocessed_dataset_folder(dataset: str | int) -> Path:
    """``$nnUNet_preprocessed/DatasetXXX_Name`` for a dataset id or name.

    Raises:
        RuntimeError: ``nnUNet_preprocessed`` is not set or the dataset is unknown (nnU-Net's own message).
    """
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise RuntimeError("nnUNet_preprocessed is not set: export it as for nnU-Net's own commands")
    return Path(nnUNet_preprocessed.get()) / maybe_convert_to_dataset_name(dataset)


def dataset_json_path(dataset: str | int) -> Path:
    """The ``dataset.json`` of a dataset id or name: the preprocessed one (what training used) if it exists, else the
    raw one, so a converted dataset that is not preprocessed yet is found as by nnU-Net's own name lookup.

    Raises:
        RuntimeError: neither ``nnUNet_preprocessed`` nor ``nnUNet_raw`` is set, or the dataset is unknown
            (nnU-Net's own message).
        FileNotFoundError: no dataset.json in either folder (both paths named).
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    roots = [root.get() for root in (nnUNet_preprocessed, nnUNet_raw) if root.is_set()]
    if not roots:
        raise RuntimeError("neither nnUNet_preprocessed nor nnUNet_raw is set: export them as for nnU-Net's own "
                           "commands, or give --dataset-json")
    name = maybe_convert_to_dataset_name(dataset)
    candidates = [Path(root) / name / "dataset.json" for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no dataset.json for {name}: looked for {', '.join(map(str, candidates))}; give "
                            f"--dataset-json")
