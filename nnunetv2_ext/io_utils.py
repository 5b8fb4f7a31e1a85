"""Small file helpers: atomic JSON writes and nnU-Net dataset folders."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_json(obj: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write JSON to a temporary file beside ``path`` and rename it into place.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=4, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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
