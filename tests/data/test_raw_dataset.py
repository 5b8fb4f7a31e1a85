"""Tests for nnunetv2_ext.data.raw_dataset: the one staged writer of dataset folders (permissions, failure, refusal).

``umask`` and ``assert_plain_mkdir_mode`` are also used by the per-command permission tests of test_brats.py,
test_restrict.py, test_synthetic.py, test_unlabeled.py and tests/proxy/test_anatomy.py.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from nnunetv2_ext.data import raw_dataset
from nnunetv2_ext.data.raw_dataset import staged_dataset_folder


@contextlib.contextmanager
def umask(mask: int) -> Iterator[int]:
    """Run the block under ``mask`` (process-wide) and restore the previous umask afterwards."""
    old = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(old)


def assert_plain_mkdir_mode(folder: Path, mask: int) -> None:
    """``folder`` has the mode that a plain ``os.mkdir`` beside it gets under umask ``mask`` (setgid bit
    included), which is ``0o777 & ~mask`` in its permission bits, and everything in it is readable by the group."""
    probe = folder.parent / f".probe-{folder.name}"
    with umask(mask):
        os.mkdir(probe)
    try:
        plain = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.rmdir()
    mode = stat.S_IMODE(folder.stat().st_mode)
    assert mode == plain, f"{folder}: {oct(mode)}, a plain mkdir gives {oct(plain)}"
    assert mode & 0o777 == 0o777 & ~mask, f"{folder}: {oct(mode)} under umask {oct(mask)}"
    for p in folder.rglob("*"):
        need = stat.S_IRGRP | (stat.S_IXGRP if p.is_dir() else 0)
        assert p.stat().st_mode & need == need, f"{p} is not readable by the group: {oct(p.stat().st_mode)}"


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def existing(tmp_path) -> Path:
    final = tmp_path / "raw" / "Dataset001_X"
    (final / "imagesTr").mkdir(parents=True)
    (final / "imagesTr" / "a_0000.nii.gz").write_text("old image")
    (final / "dataset.json").write_text("old json")
    return final


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=oct)
def test_mode_is_that_of_a_plain_mkdir(tmp_path, mask):
    final = tmp_path / "raw" / "Dataset001_X"
    with umask(mask):
        with staged_dataset_folder(final) as staging:
            assert staging.parent == final.parent and staging.name.startswith(".Dataset001_X.partial-")
            assert not final.exists()
            assert_plain_mkdir_mode(staging, mask)
            (staging / "imagesTr").mkdir()
            (staging / "dataset.json").write_text("{}")
        assert_plain_mkdir_mode(final, mask)
        assert_plain_mkdir_mode(final.parent, mask)  # the missing raw root is created as by mkdir -p
    assert _contents(final) == {"dataset.json": "{}"} and (final / "imagesTr").is_dir()
    assert _hidden(final.parent) == []


def test_setgid_parent_is_inherited_like_mkdir(tmp_path):
    """On a group-shared raw folder (chmod g+s) the dataset keeps the group, as a plain mkdir would."""
    raw = tmp_path / "raw"
    raw.mkdir()
    raw.chmod(0o2775)
    with umask(0o002), staged_dataset_folder(raw / "Dataset001_X") as staging:
        pass
    assert_plain_mkdir_mode(raw / "Dataset001_X", 0o002)
    assert (raw / "Dataset001_X").stat().st_gid == raw.stat().st_gid
    assert not staging.exists()


def test_failure_leaves_nothing(tmp_path):
    final = tmp_path / "raw" / "Dataset001_X"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dataset_folder(final) as staging:
            (staging / "imagesTr").mkdir()
            (staging / "imagesTr" / "half.nii.gz").write_text("x")
            raise RuntimeError("boom")
    assert not final.exists() and list(final.parent.iterdir()) == []


def test_failure_keeps_an_existing_destination(existing):
    before = _contents(existing)
    with pytest.raises(KeyboardInterrupt):
        with staged_dataset_folder(existing, overwrite=True) as staging:
            (staging / "dataset.json").write_text("new json")
            raise KeyboardInterrupt
    assert _contents(existing) == before and _hidden(existing.parent) == []


def test_failed_rename_puts_the_existing_destination_back(existing, monkeypatch):
    before = _contents(existing)
    real_replace = os.replace

    def replace(src, dst):
        if ".partial-" in Path(src).name:
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(raw_dataset.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        with staged_dataset_folder(existing, overwrite=True) as staging:
            (staging / "dataset.json").write_text("new json")
    monkeypatch.undo()
    assert _contents(existing) == before and _hidden(existing.parent) == []


def test_refusal_without_overwrite(existing):
    before = _contents(existing)
    with pytest.raises(FileExistsError, match=r"Dataset001_X already exists; use --overwrite"):
        with staged_dataset_folder(existing):
            pytest.fail("the block must not run")
    assert _contents(existing) == before and _hidden(existing.parent) == []


def test_destination_appearing_meanwhile_is_refused(tmp_path):
    final = tmp_path / "Dataset001_X"
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_dataset_folder(final) as staging:
            (staging / "dataset.json").write_text("mine")
            final.mkdir()
            (final / "dataset.json").write_text("theirs")
    assert _contents(final) == {"dataset.json": "theirs"} and _hidden(tmp_path) == []


def test_overwrite_replaces_the_whole_folder(existing):
    with umask(0o002), staged_dataset_folder(existing, overwrite=True) as staging:
        (staging / "dataset.json").write_text("new json")
    assert _contents(existing) == {"dataset.json": "new json"} and _hidden(existing.parent) == []
    assert_plain_mkdir_mode(existing, 0o002)


def test_merge_into_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with staged_dataset_folder(out, merge=True) as staging:  # an empty folder needs no overwrite
        (staging / "a.nii.gz").write_text("a1")
    (out / "keep.txt").write_text("k")
    with pytest.raises(FileExistsError, match=r"out is not empty; use --overwrite to write"):
        with staged_dataset_folder(out, merge=True):
            pass
    with staged_dataset_folder(out, overwrite=True, merge=True) as staging:
        (staging / "a.nii.gz").write_text("a2")
        (staging / "b.nii.gz").write_text("b")
    assert _contents(out) == {"a.nii.gz": "a2", "b.nii.gz": "b", "keep.txt": "k"} and _hidden(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        with staged_dataset_folder(tmp_path / "file", overwrite=True, merge=True):
            pass
    with umask(0o002), staged_dataset_folder(tmp_path / "new", merge=True) as staging:  # missing: renamed whole
        (staging / "a.nii.gz").write_text("a")
    assert_plain_mkdir_mode(tmp_path / "new", 0o002)
    assert _hidden(tmp_path) == []


def test_atomic_json_and_text_files_get_the_plain_open_mode(tmp_path):
    """JSON files (plans, splits, manifests, reports) are readable by the group like the folders above."""
    import json

    from nnunetv2_ext.io_utils import atomic_write_json, atomic_write_text

    for mask in (0o022, 0o002):
        with umask(mask):
            probe = tmp_path / f"probe_{mask:o}"
            probe.write_text("x")
            written = atomic_write_json({"a": 1}, tmp_path / f"file_{mask:o}.json")
            text = atomic_write_text("t", tmp_path / f"file_{mask:o}.txt")
        expected = probe.stat().st_mode & 0o777
        assert written.stat().st_mode & 0o777 == expected == 0o666 & ~mask
        assert text.stat().st_mode & 0o777 == expected
        assert json.loads(written.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*.partial"))
