"""Tests for nnunetv2_ext.data.splits: MONAI folds -> nnU-Net splits, few-shot folds."""
import json
import math

import pytest

from nnunetv2_ext.data.splits import (
    FEW_SHOT_INDEX,
    append_few_shot_splits,
    case_id_from_path,
    few_shot_splits,
    splits_from_monai_folds,
    write_monai_splits,
)

CASES = [f"BraTS2021_{i:05d}" for i in range(10)]


def _monai_folds(cases, n_folds=3, suffix="_seg"):
    return {"training": [{"image": [f"TrainingData/{c}/{c}_{m}.nii.gz" for m in ("flair", "t1ce", "t1", "t2")],
                          "label": f"TrainingData/{c}/{c}{suffix}.nii.gz", "fold": i % n_folds}
                         for i, c in enumerate(cases)]}


def _base_split(n_train=50, n_val=12):
    return {"train": [f"case_{i:03d}" for i in range(n_train)], "val": [f"val_{i:03d}" for i in range(n_val)]}


@pytest.mark.parametrize("path, case", [
    ("TrainingData/BraTS2021_01146/BraTS2021_01146_seg.nii.gz", "BraTS2021_01146"),
    ("x/BraTS2021_00000-seg.nii", "BraTS2021_00000"),
    ("labels/case_7.mha", "case_7"),
])
def test_case_id_from_path(path, case):
    assert case_id_from_path(path) == case


def test_monai_folds_known_mapping():
    splits = splits_from_monai_folds(_monai_folds(CASES), list(reversed(CASES)))
    assert len(splits) == 3
    for k, split in enumerate(splits):
        expected_val = [c for i, c in enumerate(CASES) if i % 3 == k]
        assert sorted(split["val"]) == expected_val
        assert sorted(split["train"]) == sorted(set(CASES) - set(expected_val))
        assert split["val"] == [c for c in reversed(CASES) if c in expected_val]  # order of case_ids
    assert splits_from_monai_folds(_monai_folds(CASES, suffix="-seg"), CASES) == splits_from_monai_folds(
        _monai_folds(CASES), CASES)


def test_monai_folds_unmatched_raise():
    with pytest.raises(ValueError, match=r"not in the dataset: BraTS2021_00009.*Hint"):
        splits_from_monai_folds(_monai_folds(CASES), CASES[:-1])
    with pytest.raises(ValueError, match="in no fold: extra_case"):
        splits_from_monai_folds(_monai_folds(CASES), CASES + ["extra_case"])
    many = [f"other_{i}" for i in range(25)]
    with pytest.raises(ValueError, match=r"\(25 in all\)"):
        splits_from_monai_folds(_monai_folds(CASES), CASES + many)
    gapped = _monai_folds(CASES)
    for e in gapped["training"]:
        e["fold"] += 1
    with pytest.raises(ValueError, match="0..K-1"):
        splits_from_monai_folds(gapped, CASES)
    with pytest.raises(ValueError, match="training"):
        splits_from_monai_folds({"validation": []}, CASES)


def test_few_shot_sizes_and_subsets():
    base = _base_split()
    fractions = [0.05, 0.1, 0.2, 0.4, 1.0]
    out = few_shot_splits(base, fractions, repeats=5, seed=12345)
    assert len(out) == len(fractions) * 5
    for split, info in out:
        assert info["n_train"] == max(1, math.floor(info["fraction"] * 50 + 0.5)) == len(split["train"])
        assert len(set(split["train"])) == len(split["train"])
        assert set(split["train"]) <= set(base["train"])
        assert not set(split["train"]) & set(split["val"])
        assert split["val"] == base["val"]
        assert info["seed"] == 12345
    assert [(i["fraction"], i["repeat"]) for _, i in out[:6]] == [(0.05, r) for r in range(5)] + [(0.1, 0)]
    assert few_shot_splits(base, [0.01], 1, 0)[0][1]["n_train"] == 1  # never empty
    assert few_shot_splits(_base_split(10), [0.25], 1, 0)[0][1]["n_train"] == 3  # 2.5 rounds half up


def test_few_shot_reproducible_order_independent_and_repeats_differ():
    base = _base_split()
    a = few_shot_splits(base, [0.1, 0.4], repeats=3, seed=7)
    assert a == few_shot_splits(base, [0.1, 0.4], repeats=3, seed=7)
    b = few_shot_splits({"train": list(reversed(base["train"])), "val": base["val"]}, [0.4, 0.1], 3, 7)
    key = lambda item: (item[1]["fraction"], item[1]["repeat"])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    trains = [tuple(s["train"]) for s, i in a if i["fraction"] == 0.4]
    assert len(set(trains)) == 3
    assert few_shot_splits(base, [0.4], 1, 8)[0][0] != few_shot_splits(base, [0.4], 1, 7)[0][0]


@pytest.mark.parametrize("fractions, repeats", [([0.0], 1), ([1.5], 1), ([-0.1], 1), ([], 1), ([0.5], 0)])
def test_few_shot_bad_arguments(fractions, repeats):
    with pytest.raises(ValueError):
        few_shot_splits(_base_split(), fractions, repeats, 0)


def _write_splits(folder, n_folds=2):
    path = folder / "splits_final.json"
    cases = [f"c{i:02d}" for i in range(20)]
    splits = [{"train": [c for j, c in enumerate(cases) if j % n_folds != k],
               "val": [c for j, c in enumerate(cases) if j % n_folds == k]} for k in range(n_folds)]
    path.write_text(json.dumps(splits))
    return path, splits


def test_append_few_shot_keeps_originals_and_indexes(tmp_path):
    path, original = _write_splits(tmp_path)
    index = append_few_shot_splits(path, [0.1, 0.5], repeats=2, seed=3, base_fold=1)
    written = json.loads(path.read_text())
    assert written[:2] == original and len(written) == 2 + 4
    assert json.loads((tmp_path / "splits_final.json.bak").read_text()) == original
    assert json.loads((tmp_path / FEW_SHOT_INDEX).read_text()) == index
    assert [e["fold"] for e in index] == [2, 3, 4, 5]
    assert [(e["fraction"], e["repeat"], e["n_train"]) for e in index] == [(0.1, 0, 1), (0.1, 1, 1),
                                                                           (0.5, 0, 5), (0.5, 1, 5)]
    assert all(e["base_fold"] == 1 and e["seed"] == 3 for e in index)
    expected = few_shot_splits(original[1], [0.1, 0.5], 2, 3)
    assert written[2:] == [s for s, _ in expected]

    with pytest.raises(FileExistsError, match="overwrite"):
        append_few_shot_splits(path, [0.1, 0.5], repeats=2, seed=3, base_fold=1)
    assert json.loads(path.read_text()) == written

    rebuilt = append_few_shot_splits(path, [0.1, 0.5], repeats=2, seed=3, base_fold=1, overwrite=True)
    assert rebuilt == index and json.loads(path.read_text()) == written
    other = append_few_shot_splits(path, [0.2], repeats=1, seed=3, base_fold=0, overwrite=True)
    assert [e["fold"] for e in other] == [2]
    assert json.loads(path.read_text())[:2] == original and len(json.loads(path.read_text())) == 3
    assert json.loads((tmp_path / "splits_final.json.bak").read_text()) == original


def test_append_few_shot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess"):
        append_few_shot_splits(tmp_path / "splits_final.json", [0.1], 1, 0)
    path, _ = _write_splits(tmp_path)
    with pytest.raises(ValueError, match="base_fold"):
        append_few_shot_splits(path, [0.1], 1, 0, base_fold=2)


def test_write_monai_splits(tmp_path):
    folds = tmp_path / "brats21_folds.json"
    folds.write_text(json.dumps(_monai_folds(CASES, n_folds=5)))
    out = tmp_path / "pre" / "splits_final.json"
    splits = write_monai_splits(out, folds, CASES)
    assert json.loads(out.read_text()) == splits and len(splits) == 5
    with pytest.raises(FileExistsError):
        write_monai_splits(out, folds, CASES)
    append_few_shot_splits(out, [0.5], 1, 0)
    assert write_monai_splits(out, folds, CASES, overwrite=True) == splits
    assert json.loads(out.read_text()) == splits and not (out.parent / FEW_SHOT_INDEX).exists()


# ------------------------------------------------------------------------------------------ fixed case lists

def _lists(tmp_path, train, val, test):
    files = {}
    for name, cases in (("train", train), ("val", val), ("test", test)):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("".join(f"{c}\n" for c in cases))
    return files


def test_case_lists_write_fold_0_and_the_test_list(tmp_path):
    from nnunetv2_ext.data.splits import TEST_CASES_FILE, read_case_list, write_case_list_splits

    files = _lists(tmp_path, CASES[:6], CASES[6:8], CASES[8:])
    files["train"].write_text("# RFNet train list\n\n" + "".join(f"HGG/{c}.nii.gz\n" for c in CASES[:6]))
    assert read_case_list(files["train"]) == CASES[:6]  # comments, blank lines, paths and extensions
    folder = tmp_path / "pre"
    written = write_case_list_splits(folder, files["train"], files["val"], files["test"], CASES)
    assert json.loads((folder / "splits_final.json").read_text()) == [{"train": CASES[:6], "val": CASES[6:8]}]
    assert (folder / TEST_CASES_FILE).read_text().split() == CASES[8:]
    assert (written["n_train"], written["n_val"], written["n_test"], written["n_unused"]) == (6, 2, 2, 0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_case_list_splits(folder, files["train"], files["val"], None, CASES)
    written = write_case_list_splits(folder, files["train"], files["val"], None, CASES[:9] + ["extra"],
                                     overwrite=True)
    assert written["test_cases"] is None and written["n_unused"] == 2


@pytest.mark.parametrize("train, val, test, message", [
    (CASES[:6] + ["Brats18_unknown"], CASES[6:8], CASES[8:], r"--train lists 1 case\(s\) that the dataset does not "
                                                             r"hold: Brats18_unknown"),
    (CASES[:6], CASES[6:8], ["nope_1", "nope_2"], r"--test lists 2 case\(s\)"),
    (CASES[:6], CASES[5:8], CASES[8:], r"1 case\(s\) are in both --train and --val: BraTS2021_00005"),
    (CASES[:6] + CASES[:1], CASES[6:8], CASES[8:], "more than once: BraTS2021_00000"),
    ([], CASES[6:8], CASES[8:], "lists no case"),
])
def test_case_lists_bad_inputs_write_nothing(tmp_path, train, val, test, message):
    from nnunetv2_ext.data.splits import write_case_list_splits

    files = _lists(tmp_path, train, val, test)
    folder = tmp_path / "pre"
    with pytest.raises(ValueError, match=message):
        write_case_list_splits(folder, files["train"], files["val"], files["test"], CASES)
    assert not folder.exists()


def test_case_lists_missing_file(tmp_path):
    from nnunetv2_ext.data.splits import read_case_list

    with pytest.raises(FileNotFoundError, match="case list .*missing.txt does not exist"):
        read_case_list(tmp_path / "missing.txt")
