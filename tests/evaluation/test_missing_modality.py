"""Tests for nnunetv2_ext.evaluation.missing_modality: subset enumeration and order, the table rows, the heat-map
data and the model header (no trained model needed; end to end in tests/e2e/test_missing_modalities_e2e.py)."""
from __future__ import annotations

import json
import math

import pytest

from nnunetv2_ext.evaluation.missing_modality import (
    PAPER_ORDER,
    ModelInfo,
    canonical_names,
    describe_model,
    heatmap_data,
    ordered_subsets,
    subset_key,
    table_rows,
)

BRATS = ["T1", "T1Gd", "T2", "FLAIR"]  # this package's channel order (nnU-Net's Dataset137)


def test_fifteen_subsets_in_the_papers_order():
    subsets = ordered_subsets(BRATS)
    assert len(subsets) == 15 == len(set(subsets))
    # RFNet / mmFormer: t2, t1c, t1, flair, t1c+t2, t1c+t1, flair+t1, t1+t2, flair+t2, flair+t1c, flair+t1c+t1,
    # flair+t1+t2, flair+t1c+t2, t1c+t1+t2, all; names within a subset in channel order
    assert subsets == [("T2",), ("T1Gd",), ("T1",), ("FLAIR",),
                       ("T1Gd", "T2"), ("T1", "T1Gd"), ("T1", "FLAIR"), ("T1", "T2"), ("T2", "FLAIR"),
                       ("T1Gd", "FLAIR"),
                       ("T1", "T1Gd", "FLAIR"), ("T1", "T2", "FLAIR"), ("T1Gd", "T2", "FLAIR"), ("T1", "T1Gd", "T2"),
                       ("T1", "T1Gd", "T2", "FLAIR")]
    assert [len(s) for s in subsets] == [1] * 4 + [2] * 6 + [3] * 4 + [4]


@pytest.mark.parametrize("names", [["flair", "t1ce", "t1", "t2"], ["t1n", "t1c", "t2w", "t2f"],
                                   ["T1", "T1-Gd", "T2", "T2-FLAIR"]])
def test_other_namings_of_the_four_modalities_give_the_same_order(names):
    canon = canonical_names(names)
    assert sorted(canon) == ["FLAIR", "T1", "T1Gd", "T2"]
    mapped = [frozenset(canon[names.index(n)] for n in s) for s in ordered_subsets(names)]
    assert mapped == list(PAPER_ORDER)


def test_other_channel_sets_by_size_then_channel_order():
    assert ordered_subsets(["CT", "PET", "MR"]) == [("CT",), ("PET",), ("MR",), ("CT", "PET"), ("CT", "MR"),
                                                    ("PET", "MR"), ("CT", "PET", "MR")]
    assert canonical_names(["T1", "T2", "FLAIR"]) is None
    assert len(ordered_subsets(["A", "B", "C", "D", "E"])) == 31


def test_subset_errors_and_keys():
    with pytest.raises(ValueError, match="distinct"):
        ordered_subsets(["T1", "T1"])
    with pytest.raises(ValueError, match="no channels"):
        ordered_subsets([])
    assert subset_key(("T1", "T1Gd")) == "T1+T1Gd"
    assert subset_key(("T2 FLAIR", "a/b")) == "T2_FLAIR+a_b"


def _summaries(subsets):
    # a known answer: Dice of region r for subset s = (len(s) + r) / 10, HD95 = 10 / len(s)
    return {subset_key(s): {"mean": {g: {"dice": (len(s) + i) / 10, "hd95_mm": 10 / len(s)}
                                     for i, g in enumerate(("WT", "TC", "ET"))}, "n_cases": 3} for s in subsets}


def test_table_rows_average_and_heatmap_data():
    subsets = ordered_subsets(BRATS)
    rows = table_rows(subsets, _summaries(subsets), BRATS)
    assert len(rows) == 16 and rows[-1]["subset"] == "average (15 subsets)"
    assert rows[0]["subset"] == "T2" and rows[0]["present"] == {"T1": False, "T1Gd": False, "T2": True,
                                                                "FLAIR": False}
    assert rows[0]["WT_dice"] == pytest.approx(0.1) and rows[0]["mean_dice"] == pytest.approx(0.2)
    sizes = [len(s) for s in subsets]
    assert rows[-1]["WT_dice"] == pytest.approx(sum(sizes) / 15 / 10)
    assert rows[-1]["ET_hd95_mm"] == pytest.approx(sum(10 / n for n in sizes) / 15)
    heat = heatmap_data(rows)
    assert len(heat["rows"]) == 15 and heat["columns"] == ["WT", "TC", "ET", "mean"]
    assert heat["dice_percent"][-1] == pytest.approx([40, 50, 60, 50])


def _model_folder(tmp_path, trainer, network):
    folder = tmp_path / f"{trainer}__P__3d_fullres"
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"architecture": {"network_class_name": network}}}}))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": dict(enumerate(BRATS)),
                                                     "file_ending": ".nii.gz"}))
    return folder


@pytest.mark.parametrize("trainer, network, multi, dropout, words", [
    ("nnUNetTrainerMultiEncoderModalityDropout", "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet", True,
     0.5, ["masked out of the fusion", "trained with modality dropout (p = 0.5"]),
    ("nnUNetTrainerMultiEncoder", "nnunetv2_ext.architectures.multi_encoder.MultiEncoderUNet", True, 0.0,
     ["masked out of the fusion", "WITHOUT modality dropout"]),
    ("nnUNetTrainer", "dynamic_network_architectures.architectures.unet.PlainConvUNet", False, 0.0,
     ["zero-filled", "WITHOUT modality dropout"]),
    ("nnUNetTrainerVanillaChannelDropout", "dynamic_network_architectures.architectures.unet.PlainConvUNet", False,
     0.5, ["zero-filled", "trained with modality dropout (p = 0.5"]),
])
def test_model_header_flags_no_dropout_and_zero_fill(tmp_path, trainer, network, multi, dropout, words):
    info = describe_model(_model_folder(tmp_path, trainer, network))
    assert (info.multi_encoder, info.dropout_p, info.names) == (multi, dropout, tuple(BRATS))
    for w in words:
        assert w in info.note


def test_describe_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="trained model folder"):
        describe_model(tmp_path)
    bad = _model_folder(tmp_path, "x", "y")
    renamed = bad.rename(tmp_path / "not_a_model_folder")
    with pytest.raises(ValueError, match="TRAINER__PLANS__CONFIGURATION"):
        describe_model(renamed)


def test_note_is_a_property_of_the_info():
    info = ModelInfo("f", "t", "p", "c", ("T1",), False, 0.0)
    assert "zero-filled" in info.note and not math.isnan(info.dropout_p)
