"""Writing an nnU-Net raw dataset folder: staged in a hidden sibling and renamed into place when complete.

Every command of this package that writes a dataset folder goes through :func:`staged_dataset_folder`:
``brats convert`` and ``brats to-brats-labels`` (:mod:`nnunetv2_ext.data.brats`), ``dataset restrict``
(:mod:`~nnunetv2_ext.data.restrict`), ``unlabeled-dataset`` (:mod:`~nnunetv2_ext.data.unlabeled`),
``example-data`` (:mod:`~nnunetv2_ext.data.synthetic`) and ``proxy make`` (:mod:`nnunetv2_ext.proxy.anatomy`).
So, for all of them,

* an interrupted or failed run leaves neither a folder that looks like a finished dataset nor a changed
  existing one: the data is written into ``.{name}.partial-XXXXXXXX`` beside the destination and renamed
  when complete; an existing dataset is moved aside (``.{name}.old-XXXXXXXX``) and deleted only once the new
  one is in place, and moved back if the rename fails;
* the folder has the permissions a plain ``mkdir`` gives under the caller's umask (``rwxr-xr-x`` for umask
  022, ``rwxrwxr-x`` for 002) and inherits the parent's set-group-id bit and default ACL, so that the group
  sharing an ``nnUNet_raw`` folder on a cluster can read it. The staging folder is made with ``os.mkdir``
  under a random name rather than with ``tempfile.mkdtemp``, which makes private (0o700) folders; this needs
  no reading of the umask, which would mean changing it process-wide for a moment (``os.umask``), a race with
  other threads that create files.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Iterator

STAGING_TAG = "partial"
"""Staging folders are named ``.{destination name}.partial-XXXXXXXX``."""
REPLACED_TAG = "old"
"""An existing destination waits for deletion inside ``.{destination name}.old-XXXXXXXX``."""
_NAME_ATTEMPTS = 100
"""Random names tried before giving up (each collision means a folder of that name exists already)."""

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def raw_dataset_target(raw_root: str | os.PathLike, dataset_id: int, name: str, overwrite: bool) -> Path:
    """Check the id, name, overwrite and unique-id rules and return ``raw_root/Dataset{id:03d}_{name}``.

    Raises:
        ValueError: ``dataset_id`` is outside 1..999, ``name`` has characters other than letters, digits,
            ``_`` and ``-``, or ``raw_root`` holds another dataset with the same id (nnU-Net resolves ids to
            names by folder prefix and would refuse to pick one).
        FileExistsError: The dataset folder exists and ``overwrite`` is False.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, numbers.Integral) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be an integer in 1..999; got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"dataset name must consist of letters, digits, '_' and '-'; got {name!r}")
    raw_root = Path(raw_root)
    target = raw_root / f"Dataset{int(dataset_id):03d}_{name}"
    if raw_root.is_dir():
        clashes = sorted(p.name for p in raw_root.glob(f"Dataset{int(dataset_id):03d}_*")
                         if p.is_dir() and p.name != target.name)
        if clashes:
            raise ValueError(f"{raw_root} already holds dataset(s) {clashes} with id {dataset_id}; "
                             f"choose another --dataset-id for {target.name}")
    _check_destination(target, overwrite, merge=False)
    return target


@contextlib.contextmanager
def staged_dataset_folder(final_path: str | os.PathLike, overwrite: bool = False,
                          merge: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final_path`` to write into; put it in place when the block succeeds.

    The folder is ``.{final name}.partial-XXXXXXXX`` in the parent of ``final_path`` (created if missing),
    made by ``os.mkdir`` and so with the mode a plain ``mkdir`` gives under the caller's umask. When the block
    ends without error it is renamed to ``final_path``; an existing ``final_path`` (allowed only with
    ``overwrite``) is first moved aside into a hidden sibling, moved back if the rename fails, and deleted
    once the new folder is in place. When the block raises, the staging folder is deleted and ``final_path``
    is left as it was.

    The existence rule is checked on entry and again just before the rename, since the destination may
    appear while the data is being written.

    Args:
        final_path: Where the folder goes, e.g. ``$nnUNet_raw/Dataset004_BraTS``.
        overwrite: Replace an existing ``final_path`` (with ``merge``: write into a non-empty one).
        merge: Keep an existing ``final_path`` folder and move the staged entries into it, replacing those of
            the same name (a folder of loose files, such as predictions). Each entry is renamed atomically,
            but not all of them together. An empty existing folder is merged into even without ``overwrite``.

    Yields:
        The staging folder.

    Raises:
        FileExistsError: ``final_path`` exists and ``overwrite`` is False (with ``merge``: is a non-empty
            folder, or is not a folder at all), on entry or before the rename.
    """
    final = Path(final_path)
    _check_destination(final, overwrite, merge)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _hidden_sibling(final, STAGING_TAG)
    try:
        yield staging
        _check_destination(final, overwrite, merge)
        if merge and final.is_dir():
            for entry in sorted(staging.iterdir()):
                os.replace(entry, final / entry.name)
            staging.rmdir()
        else:
            _install(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_destination(final: Path, overwrite: bool, merge: bool) -> None:
    if not (final.exists() or final.is_symlink()):
        return
    if merge and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder; remove it or choose another output folder")
    if merge and not overwrite and any(final.iterdir()):
        raise FileExistsError(f"{final} is not empty; use --overwrite to write into it")
    if not merge and not overwrite:
        raise FileExistsError(f"{final} already exists; use --overwrite to replace it")


def _hidden_sibling(final: Path, tag: str) -> Path:
    """Create and return ``.{final.name}.{tag}-XXXXXXXX`` beside ``final`` with a plain ``os.mkdir``."""
    for _ in range(_NAME_ATTEMPTS):
        folder = final.parent / f".{final.name}.{tag}-{secrets.token_hex(4)}"
        try:
            os.mkdir(folder)  # mode 0o777 & ~umask, the parent's setgid bit and default ACL: as any mkdir
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"could not create a hidden folder .{final.name}.{tag}-* in {final.parent}: "
                          f"{_NAME_ATTEMPTS} random names were taken; remove the stale hidden folders there")


def _install(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and deleted afterwards."""
    if not (final.exists() or final.is_symlink()):
        os.replace(staging, final)
        return
    aside = _hidden_sibling(final, REPLACED_TAG)
    os.replace(final, aside / final.name)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(aside / final.name, final)
        aside.rmdir()
        raise
    try:
        shutil.rmtree(aside)
    except OSError as exc:  # the new dataset is in place: failing now would report a success as an error
        warnings.warn(f"{final} was replaced, but the old version in {aside} could not be deleted ({exc}); "
                      f"delete it by hand", RuntimeWarning, stacklevel=4)
