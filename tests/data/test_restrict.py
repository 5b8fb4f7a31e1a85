"""Tests for nnunetv2_ext.data.restrict (modality restriction of a raw dataset) on a tiny synthetic dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nnunetv2_ext.data.restrict import restrict_dataset
from nnunetv2_ext.data.synthetic import make_brats_like_dataset
from tests.data.test_raw_dataset import assert_plain_mkdir_mode, umask

SPLITS = [{"train": ["SynBraTS_000"], "val": ["SynBraTS_001"]}, {"train": ["SynBraTS_001"], "val": ["SynBraTS_000"]}]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Dataset004_Src: 2 training + 1 test case, channels T1, T1Gd, T2, FLAIR, with a splits_final.json."""
    root = tmp_path_factory.mktemp("nnunet")
    folder = make_brats_like_dataset(root / "raw", dataset_id=4, name="Src", n_train=2, n_test=1, shape=(24, 24, 24))
    (root / "pre" / folder.name).mkdir(parents=True)
    (root / "pre" / folder.name / "splits_final.json").write_text(json.dumps(SPLITS))
    return folder


@pytest.fixture
def roots(source, tmp_path) -> tuple[Path, Path]:
    """A private copy of raw and preprocessed roots, so that tests may add datasets."""
    shutil.copytree(source.parent, tmp_path / "raw")
    shutil.copytree(source.parent.parent / "pre", tmp_path / "pre")
    return tmp_path / "raw", tmp_path / "pre"


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_subset_in_given_order(roots):
    raw, pre = roots
    src = raw / "Dataset004_Src"
    new = restrict_dataset(raw, 4, ["FLAIR", "T1"], 104, preprocessed_root=pre)
    assert new == raw / "Dataset104_Src_FLAIR-T1"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset004_Src", "Dataset104_Src_FLAIR-T1"]
    for split, cases in (("Tr", ["SynBraTS_000", "SynBraTS_001"]), ("Ts", ["SynBraTS_002"])):
        assert sorted(p.name for p in (new / f"images{split}").iterdir()) == \
            [f"{c}_{i:04d}.nii.gz" for c in cases for i in range(2)]
        for c in cases:  # new channel 0 is old FLAIR (3), new 1 is old T1 (0), byte for byte
            assert (new / f"images{split}" / f"{c}_0000.nii.gz").read_bytes() == \
                (src / f"images{split}" / f"{c}_0003.nii.gz").read_bytes()
            assert (new / f"images{split}" / f"{c}_0001.nii.gz").read_bytes() == \
                (src / f"images{split}" / f"{c}_0000.nii.gz").read_bytes()
        assert _listing(new / f"labels{split}") == _listing(src / f"labels{split}")
        for name in _listing(src / f"labels{split}"):
            assert (new / f"labels{split}" / name).read_bytes() == (src / f"labels{split}" / name).read_bytes()
    old_json = json.loads((src / "dataset.json").read_text())
    new_json = json.loads((new / "dataset.json").read_text())
    assert new_json["channel_names"] == {"0": "FLAIR", "1": "T1"}
    assert new_json["restricted_from"] == "Dataset004_Src"
    assert {k: v for k, v in new_json.items() if k not in ("channel_names", "restricted_from")} == \
        {k: v for k, v in old_json.items() if k != "channel_names"}
    assert json.loads((pre / new.name / "splits_final.json").read_text()) == SPLITS


def test_repeated_channel(roots):
    """One modality fed to two input channels, as BrainSegFounder (sec. 2.4.4) adapts a two-channel model: only when
    asked for (a repeated name is otherwise refused before anything is written)."""
    raw, _ = roots
    before = sorted(p.name for p in raw.iterdir())
    with pytest.raises(ValueError, match=r"--channels T1,T1 names \['T1'\] more than once.*--allow-repeated-channels"):
        restrict_dataset(raw, "Dataset004_Src", ["T1", "T1"], 105, new_name="T1twice")
    assert sorted(p.name for p in raw.iterdir()) == before
    new = restrict_dataset(raw, "Dataset004_Src", ["T1", "T1"], 105, new_name="T1twice", allow_repeated=True)
    assert new.name == "Dataset105_T1twice"
    for c in ("SynBraTS_000", "SynBraTS_001"):
        assert (new / "imagesTr" / f"{c}_0000.nii.gz").read_bytes() == \
            (new / "imagesTr" / f"{c}_0001.nii.gz").read_bytes()
    assert json.loads((new / "dataset.json").read_text())["channel_names"] == {"0": "T1", "1": "T1"}


def test_bad_channels(roots):
    raw, _ = roots
    with pytest.raises(ValueError, match=r"unknown channel\(s\) \['T1ce'\].*\['T1', 'T1Gd', 'T2', 'FLAIR'\]"):
        restrict_dataset(raw, 4, ["T1ce"], 106)
    with pytest.raises(ValueError, match="at least one channel"):
        restrict_dataset(raw, 4, [], 106)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset004_Src"]  # nothing left behind


def test_existing_target_id_clash_and_missing_source(roots):
    raw, pre = roots
    new = restrict_dataset(raw, 4, ["T2"], 107, preprocessed_root=pre)
    with pytest.raises(FileExistsError, match="Dataset107_Src_T2.*--overwrite"):
        restrict_dataset(raw, 4, ["T2"], 107)
    (new / "stale.txt").write_text("x")
    assert restrict_dataset(raw, 4, ["T2"], 107, preprocessed_root=pre, overwrite=True) == new
    assert not (new / "stale.txt").exists()
    with pytest.raises(ValueError, match="Dataset004_Src.*id 4"):
        restrict_dataset(raw, 4, ["T2"], 4)
    with pytest.raises(FileNotFoundError, match="no raw dataset 9.*Dataset004_Src"):
        restrict_dataset(raw, 9, ["T2"], 108)
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


def test_splits_only_when_present(roots):
    raw, pre = roots
    (pre / "Dataset004_Src" / "splits_final.json").unlink()
    restrict_dataset(raw, 4, ["T1Gd"], 109, preprocessed_root=pre)
    assert not (pre / "Dataset109_Src_T1Gd").exists()


def test_new_dataset_has_the_mode_of_a_plain_mkdir(roots):
    """Readable by the group sharing the raw folder, not 0o700 as tempfile.mkdtemp makes it (issue 17)."""
    raw, _ = roots
    with umask(0o002):
        new = restrict_dataset(raw, 4, ["T1"], 110)
    assert_plain_mkdir_mode(new, 0o002)
