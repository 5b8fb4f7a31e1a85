"""Tests for nnunetv2_ext.planning.multi_encoder_plans (pure functions on a real, shrunk nnU-Net plans file)."""
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet
from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.planning.multi_encoder_plans import (
    MULTI_ENCODER_CLASS,
    adapt_topology_to_patch,
    apply_preset,
    derive_multi_encoder_plans,
    multi_encoder_architecture,
    parse_encoder_groups,
)
from nnunetv2_ext.planning.presets import PRESET_DIR

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO_PRESET = PRESET_DIR / "brats_taheri2025.json"
NAMES = ["T1", "T1Gd", "T2", "FLAIR"]
RESENC_CLASS = "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"


@pytest.fixture()
def resenc_plans(plans):
    """The fixture rewritten as nnU-Net's ResEnc planner writes it (n_blocks_per_stage instead of n_conv_per_stage)."""
    for config in plans["configurations"].values():
        arch = config["architecture"]
        arch["network_class_name"] = RESENC_CLASS
        kwargs = arch["arch_kwargs"]
        del kwargs["n_conv_per_stage"]
        kwargs["n_blocks_per_stage"] = [1, 3, 4, 6]
        kwargs["n_conv_per_stage_decoder"] = [1, 1, 1]
    return plans


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


# ------------------------------------------------------------------------------------------ derive plans


def test_fixture_is_a_plain_nnunet_plan(plans, dataset_json):
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    for config in plans["configurations"].values():
        assert config["architecture"]["network_class_name"].endswith(".PlainConvUNet")
        assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [4, 8, 16, 32]
    assert channel_names(dataset_json) == NAMES


def test_derive_keeps_everything_but_the_network(plans, dataset_json):
    new = derive_multi_encoder_plans(plans, dataset_json)
    assert _without(new, "plans_name", "configurations") == _without(plans, "plans_name", "configurations")
    assert set(new["configurations"]) == set(plans["configurations"])
    for name, config in plans["configurations"].items():
        derived = new["configurations"][name]
        # patch, spacing, normalisation, batch size, resampling, ...: untouched
        assert _without(derived, "architecture") == _without(config, "architecture")
        for key in ("patch_size", "spacing", "normalization_schemes", "batch_size"):
            assert derived[key] == config[key]
        arch = derived["architecture"]
        assert arch["network_class_name"] == MULTI_ENCODER_CLASS
        assert arch["_kw_requires_import"] == config["architecture"]["_kw_requires_import"]
        source_kwargs = config["architecture"]["arch_kwargs"]
        assert _without(arch["arch_kwargs"], "encoder_groups", "fusion", "encoder", "encoder_width",
                        "modality_names") == source_kwargs
        assert arch["arch_kwargs"]["modality_names"] == NAMES
        assert arch["arch_kwargs"]["encoder"] == "plain"
        assert arch["arch_kwargs"]["fusion"] == "concat"
        assert arch["arch_kwargs"]["encoder_groups"] is None
        assert arch["arch_kwargs"]["encoder_width"] == 1.0


def test_derive_names_the_plans(plans, dataset_json):
    assert derive_multi_encoder_plans(plans, dataset_json)["plans_name"] == "nnUNetPlans_MultiEncoder"
    plans["plans_name"] = "nnUNetResEncUNetMPlans"
    assert derive_multi_encoder_plans(plans, dataset_json)["plans_name"] == "nnUNetResEncUNetMPlans_MultiEncoder"
    assert derive_multi_encoder_plans(plans, dataset_json, plans_name="Mine")["plans_name"] == "Mine"


def test_derive_does_not_mutate_its_inputs(plans, dataset_json):
    plans_before, dataset_before = copy.deepcopy(plans), copy.deepcopy(dataset_json)
    preset = {"configurations": {"3d_fullres": {"patch_size": [16, 16, 16], "batch_size": 3}},
              "multi_encoder": {"fusion": "sum"}}
    preset_before = copy.deepcopy(preset)
    new = derive_multi_encoder_plans(plans, dataset_json, preset=preset, encoder_groups="T1,T1Gd;T2,FLAIR")
    assert plans == plans_before and dataset_json == dataset_before and preset == preset_before
    # no shared sub-objects: editing the result leaves the source alone
    new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"].append(999)
    new["configurations"]["2d"]["spacing"][0] = 99.0
    assert plans == plans_before


def test_derived_plans_are_json_and_nnunet_readable(plans, dataset_json):
    new = derive_multi_encoder_plans(plans, dataset_json, encoder_groups=[["T1", "T1Gd"], ["T2", "FLAIR"]])
    assert json.loads(json.dumps(new)) == new
    cm = PlansManager(new).get_configuration("3d_fullres")
    assert cm.network_arch_class_name == MULTI_ENCODER_CLASS
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 4, 3, deep_supervision=True)
    assert isinstance(net, MultiEncoderUNet)
    assert net.encoder_groups == [[0, 1], [2, 3]] and net.modality_names == NAMES


@pytest.mark.parametrize("options, expected", [
    (dict(fusion="sum"), dict(fusion="sum")),
    (dict(encoder="residual"), dict(encoder="residual")),
    (dict(encoder_width=0.5), dict(encoder_width=0.5)),
    (dict(encoder_groups="T1,T1Gd;T2,FLAIR"), dict(encoder_groups=[[0, 1], [2, 3]])),
    (dict(encoder_groups="0,2;1,3"), dict(encoder_groups=[[0, 2], [1, 3]])),
    (dict(fusion=None, encoder=None), dict(fusion="concat", encoder="plain")),  # None means "default" (CLI)
])
def test_derive_options(plans, dataset_json, options, expected):
    new = derive_multi_encoder_plans(plans, dataset_json, **options)
    for config in new["configurations"].values():
        kwargs = config["architecture"]["arch_kwargs"]
        for key, value in expected.items():
            assert kwargs[key] == value


def test_preset_options_apply_and_command_line_options_win(plans, dataset_json):
    preset = {"multi_encoder": {"fusion": "sum", "encoder_groups": "T1,T2;T1Gd,FLAIR"}}
    new = derive_multi_encoder_plans(plans, dataset_json, preset=preset, fusion="mean")
    kwargs = new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["fusion"] == "mean"
    assert kwargs["encoder_groups"] == [[0, 2], [1, 3]]


def test_residual_source_gives_residual_encoders(resenc_plans, dataset_json):
    new = derive_multi_encoder_plans(resenc_plans, dataset_json)
    for config in new["configurations"].values():
        kwargs = config["architecture"]["arch_kwargs"]
        assert kwargs["encoder"] == "residual"
        assert kwargs["n_conv_per_stage"] == [1, 3, 4, 6]
        assert "n_blocks_per_stage" not in kwargs
    cm = PlansManager(new).get_configuration("3d_fullres")
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 4, 3, deep_supervision=True)
    assert [len(stage.blocks) for stage in net.encoder.encoders[0].stages] == [1, 3, 4, 6]


def test_residual_source_with_plain_encoder_uses_two_convs_per_stage(resenc_plans, dataset_json):
    new = derive_multi_encoder_plans(resenc_plans, dataset_json, encoder="plain")
    kwargs = new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["encoder"] == "plain" and kwargs["n_conv_per_stage"] == [2, 2, 2, 2]


def test_rederiving_multi_encoder_plans_replaces_the_extras(plans, dataset_json):
    first = derive_multi_encoder_plans(plans, dataset_json, fusion="sum", encoder_groups="0,1;2,3")
    second = derive_multi_encoder_plans(first, dataset_json, plans_name="again")
    kwargs = second["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["fusion"] == "concat" and kwargs["encoder_groups"] is None and kwargs["encoder"] == "plain"
    assert second["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == MULTI_ENCODER_CLASS


def test_unsupported_source_network_raises(plans, dataset_json):
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = "my.nets.SwinUNETR"
    with pytest.raises(ValueError, match="cannot derive a multi-encoder from my.nets.SwinUNETR"):
        derive_multi_encoder_plans(plans, dataset_json)


def test_single_modality_dataset_raises(plans, dataset_json):
    dataset_json["channel_names"] = {"0": "CT"}
    with pytest.raises(ValueError, match="at least 2 modalities"):
        derive_multi_encoder_plans(plans, dataset_json)


@pytest.mark.parametrize("options, message", [
    (dict(fusion="max"), "fusion must be one of"),
    (dict(encoder="swin"), "encoder must be one of"),
])
def test_bad_options_raise(plans, dataset_json, options, message):
    with pytest.raises(ValueError, match=message):
        derive_multi_encoder_plans(plans, dataset_json, **options)


def test_architecture_name_count_mismatch_raises(plans):
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    with pytest.raises(ValueError, match="3 modality names"):
        multi_encoder_architecture(arch, 4, ["T1", "T2", "FLAIR"])


# -------------------------------------------------------------------------------------- encoder groups spec


@pytest.mark.parametrize("spec, expected", [
    (None, None),
    ("T1,T1Gd;T2,FLAIR", [[0, 1], [2, 3]]),
    (" T1 , T1Gd ; T2,FLAIR ", [[0, 1], [2, 3]]),
    ("FLAIR;T1,T2;T1Gd", [[3], [0, 2], [1]]),
    ("0,1;2,3", [[0, 1], [2, 3]]),
    ("0,2;1,3", [[0, 2], [1, 3]]),
    ([[0, 1], [2, 3]], [[0, 1], [2, 3]]),
    ([["T2", "T1"], ["T1Gd", 3]], [[2, 0], [1, 3]]),
])
def test_parse_encoder_groups(spec, expected):
    assert parse_encoder_groups(spec, NAMES) == expected


def test_parse_unknown_modality_lists_the_channels():
    with pytest.raises(ValueError, match=re.escape("'T1ce'")) as info:
        parse_encoder_groups("T1,T1ce;T2,FLAIR", NAMES)
    assert str(NAMES) in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("T1,T1Gd;T2", "['3 (FLAIR)'] are in no group"),
    ("T1,T1Gd;T1Gd,T2,FLAIR", "['1 (T1Gd)'] appear in more than one group"),
    ("0,1;2,3,7", "channels [7] do not exist"),
    ("T1,T1Gd,T2,FLAIR", "at least 2 encoders"),
])
def test_parse_invalid_groups_raise(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_encoder_groups(spec, NAMES)


# ------------------------------------------------------------------------------------------------ presets


def _product_of_strides(strides):
    return np.prod(np.array(strides), axis=0)


@pytest.mark.parametrize("configuration, patch", [
    ("3d_fullres", [64, 64, 48]),
    ("3d_fullres", [96, 112, 80]),
    ("3d_fullres", [16, 16, 16]),
    ("3d_fullres", [32, 40, 32]),
    ("2d", [64, 48]),
])
def test_preset_patch_rederives_topology(plans, dataset_json, configuration, patch):
    derived = derive_multi_encoder_plans(plans, dataset_json)
    before = copy.deepcopy(derived)
    new = apply_preset(derived, {"configurations": {configuration: {"patch_size": patch}}})
    assert derived == before
    config = new["configurations"][configuration]
    kwargs = config["architecture"]["arch_kwargs"]
    n_stages = kwargs["n_stages"]
    assert config["patch_size"] == patch
    assert n_stages == len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == len(kwargs["features_per_stage"]) \
        == len(kwargs["n_conv_per_stage"]) == len(kwargs["n_conv_per_stage_decoder"]) + 1
    assert np.all(np.array(patch) % _product_of_strides(kwargs["strides"]) == 0)
    # the same topology nnU-Net's planner gives that patch
    _, strides, kernels, _, _ = get_pool_and_conv_props(config["spacing"], patch, 4, 999999)
    assert kwargs["strides"] == [list(s) for s in strides]
    assert kwargs["kernel_sizes"] == [list(k) for k in kernels]
    assert kwargs["features_per_stage"] == [min(320, 4 * 2 ** i) for i in range(n_stages)]  # nnU-Net caps 3D at 320
    # everything else is as it was
    old = derived["configurations"][configuration]
    assert _without(config, "patch_size", "architecture") == _without(old, "patch_size", "architecture")
    assert _without(kwargs, "n_stages", "strides", "kernel_sizes", "features_per_stage", "n_conv_per_stage",
                    "n_conv_per_stage_decoder") == _without(old["architecture"]["arch_kwargs"], "n_stages", "strides",
                                                            "kernel_sizes", "features_per_stage", "n_conv_per_stage",
                                                            "n_conv_per_stage_decoder")
    others = [c for c in new["configurations"] if c != configuration]
    assert all(new["configurations"][c] == derived["configurations"][c] for c in others)


def test_preset_network_runs_on_its_patch(plans, dataset_json):
    preset = {"configurations": {"3d_fullres": {"patch_size": [16, 16, 16], "batch_size": 1}}}
    new = derive_multi_encoder_plans(plans, dataset_json, preset=preset)
    cm = PlansManager(new).get_configuration("3d_fullres")
    assert cm.batch_size == 1 and list(cm.patch_size) == [16, 16, 16]
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 4, 3, deep_supervision=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = net(torch.randn(1, 4, 16, 16, 16))
    finally:
        torch.set_num_threads(threads)
    assert len(out) == cm.network_arch_init_kwargs["n_stages"] - 1 == 2
    assert tuple(out[0].shape) == (1, 3, 16, 16, 16)


def test_preset_residual_extends_blocks_per_stage(resenc_plans, dataset_json):
    new = derive_multi_encoder_plans(resenc_plans, dataset_json,
                                     preset={"configurations": {"3d_fullres": {"patch_size": [64, 64, 48]}}})
    kwargs = new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["n_stages"] == 5
    assert kwargs["n_conv_per_stage"] == [1, 3, 4, 6, 6]
    assert kwargs["n_conv_per_stage_decoder"] == [1, 1, 1, 1]


def test_preset_batch_size_only(plans):
    new = apply_preset(plans, {"configurations": {"2d": {"batch_size": "12"}}})
    assert new["configurations"]["2d"]["batch_size"] == 12
    assert new["configurations"]["2d"]["architecture"] == plans["configurations"]["2d"]["architecture"]
    assert plans["configurations"]["2d"]["batch_size"] == 6


@pytest.mark.parametrize("patch, nearest", [([30, 34, 32], [32, 40, 32]), ([31, 40, 32], [32, 40, 32]),
                                            ([50, 50, 50], [56, 56, 56])])
def test_preset_patch_the_planner_would_change_raises(plans, patch, nearest):
    with pytest.raises(ValueError, match=re.escape(f"the nearest valid patch is {nearest}")):
        apply_preset(plans, {"configurations": {"3d_fullres": {"patch_size": patch}}})


def test_preset_patch_with_wrong_axes_raises(plans):
    with pytest.raises(ValueError, match="has 2 axes"):
        adapt_topology_to_patch(plans["configurations"]["3d_fullres"], [32, 32])


def test_preset_unknown_configuration_raises(plans):
    with pytest.raises(ValueError, match=re.escape("'3d_lowres'")) as info:
        apply_preset(plans, {"configurations": {"3d_lowres": {"batch_size": 2}}})
    assert "['2d', '3d_fullres']" in str(info.value)


def test_preset_unknown_key_raises(plans):
    with pytest.raises(ValueError, match=re.escape("['spacing']")):
        apply_preset(plans, {"configurations": {"3d_fullres": {"spacing": [2, 2, 2]}}})


def test_repo_preset_applies(plans, dataset_json):
    assert REPO_PRESET.is_file(), f"{REPO_PRESET} is missing (renamed? update REPO_PRESET and the docs)"
    preset = json.loads(REPO_PRESET.read_text())
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    new = derive_multi_encoder_plans(plans, dataset_json, preset=preset)
    config = new["configurations"]["3d_fullres"]
    assert tuple(config["patch_size"]) == (96, 112, 80)
    assert config["batch_size"] == 2
    kwargs = config["architecture"]["arch_kwargs"]
    assert kwargs["fusion"] == "concat"
    assert np.all(np.array([96, 112, 80]) % _product_of_strides(kwargs["strides"]) == 0)
    assert kwargs["n_stages"] == len(kwargs["strides"])
    assert new["configurations"]["2d"] == derive_multi_encoder_plans(plans, dataset_json)["configurations"]["2d"]


def test_preset_on_nnunet_resenc_plans(resenc_plans):
    new = apply_preset(resenc_plans, {"configurations": {"3d_fullres": {"patch_size": [64, 64, 48]}}})
    kwargs = new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["n_stages"] == 5 and kwargs["n_blocks_per_stage"] == [1, 3, 4, 6, 6]
