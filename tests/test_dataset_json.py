"""Tests for nnunetv2_ext.dataset_json: the one reader of dataset.json channel names (known answers)."""
import pytest

from nnunetv2_ext.dataset_json import channel_names


@pytest.mark.parametrize("dataset_json, expected", [
    ({"channel_names": {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}}, ["T1", "T1Gd", "T2", "FLAIR"]),  # v2
    ({"modality": {"0": "CT", "1": "PET"}}, ["CT", "PET"]),                                                 # v1
    ({"channel_names": {"10": "X", "2": "T2", "0": "T1"}}, ["T1", "T2", "X"]),     # numeric order, not string order
    ({"channel_names": {1: "T2", 0: "T1"}}, ["T1", "T2"]),                         # int keys (an in-memory dict)
    ({"channel_names": {"0": "T1"}, "modality": {"0": "CT"}}, ["T1"]),             # v2 wins over v1
    ({"channel_names": {"0": 7}}, ["7"]),                                          # names as strings
])
def test_names_in_channel_order(dataset_json, expected):
    assert channel_names(dataset_json) == expected
    assert channel_names(dataset_json, required=False) == expected


@pytest.mark.parametrize("dataset_json", [
    {"labels": {"background": 0}}, {"channel_names": {}}, {"channel_names": None}, {"channel_names": ["T1"]}, None, [],
])
def test_missing_names_raise_or_give_none(dataset_json):
    with pytest.raises(ValueError, match="dataset.json has no 'channel_names'"):
        channel_names(dataset_json)
    assert channel_names(dataset_json, required=False) is None


@pytest.mark.parametrize("names", [{"T1": "0"}, {"0": "T1", "one": "T2"}, {"0.5": "T1"}])
def test_malformed_keys_raise_or_give_none(names):
    with pytest.raises(ValueError, match="must map channel indices to names"):
        channel_names({"channel_names": names})
    assert channel_names({"channel_names": names}, required=False) is None


def test_the_callers_dict_is_left_alone():
    dataset_json = {"channel_names": {"1": "T2", "0": "T1"}}
    channel_names(dataset_json)
    assert list(dataset_json["channel_names"]) == ["1", "0"]
