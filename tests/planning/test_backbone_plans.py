"""Tests for nnunetv2_ext.planning.backbones (pure functions on a real, shrunk nnU-Net plans file).

Properties are checked for every row of the registry (``BACKBONES``), so a new backbone is tested without a row
here; the known values below are the ones users rely on (plans names on disk, presets)."""
import copy
import json
import pydoc
import re
from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_ext.planning.backbones import (
    BACKBONE_NAMES,
    BACKBONES,
    RESENC_CLASS,
    SWIN_UNETR_TAHERI2025_PRESET,
    BackboneSpec,
    backbone_architecture,
    backbone_class_name,
    default_plans_name,
    derive_backbone_plans,
    replanned_topology,
    stunet_architecture,
    unet_kwargs_architecture,
    write_backbone_plans,
)
from nnunetv2_ext.training.backbones import supports_deep_supervision
from tests.conftest import write_tiny_preprocessed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the plans names existing users' files have: a backbone's suffix never changes
SUFFIXES = {"swin_unetr": "SwinUNETR", "segresnet": "SegResNet", "unetr": "UNETR", "stunet_s": "STUNetS",
            "stunet_b": "STUNetB", "stunet_l": "STUNetL", "pctnet": "PCTNet", "transbts": "TransBTS"}
STUNET_PRESETS = {name: spec.defaults for name, spec in BACKBONES.items() if spec.builder is stunet_architecture}


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _count(config, num_classes=3):
    arch = config["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 4,
                                 num_classes, allow_init=False, deep_supervision=False)
    return sum(p.numel() for p in net.parameters())


def test_names_and_default_plans_names(plans, dataset_json):
    assert BACKBONE_NAMES == tuple(BACKBONES)
    assert set(SUFFIXES) <= set(BACKBONE_NAMES)
    assert set(STUNET_PRESETS) == {"stunet_s", "stunet_b", "stunet_l"}
    for name, suffix in SUFFIXES.items():
        assert BACKBONES[name].suffix == suffix
    suffixes = [spec.suffix for spec in BACKBONES.values()]
    assert len(set(suffixes)) == len(suffixes), suffixes  # two backbones never write the same plans file
    for name, spec in BACKBONES.items():
        # a plans name is a file name and part of nnU-Net's "<trainer>__<plans>__<configuration>" folder names
        assert re.fullmatch(r"[A-Za-z0-9]+", spec.suffix), spec.suffix
        new, _ = derive_backbone_plans(plans, dataset_json, name)
        assert new["plans_name"] == default_plans_name("nnUNetPlans", name) == f"nnUNetPlans_{spec.suffix}"
    new, _ = derive_backbone_plans(plans, dataset_json, "segresnet", plans_name="Mine")
    assert new["plans_name"] == "Mine"


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_registry_row_is_consistent(name):
    spec = BACKBONES[name]
    cls = pydoc.locate(spec.class_path)  # what nnU-Net's get_network_from_plans resolves
    assert isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls is spec.network_class()
    assert backbone_class_name(name) == spec.class_path
    assert spec.spatial_dims and set(spec.spatial_dims) <= {2, 3}
    with pytest.raises(TypeError):
        spec.defaults["new"] = 1  # presets are data, read-only
    with pytest.raises(AttributeError):
        spec.suffix = "Other"  # frozen


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_derived_plans_build_a_network_that_takes_the_patch(plans, dataset_json, name):
    """Each builder's plans, built the way nnU-Net builds them, run on an input of the derived patch (the smallest
    configuration the backbone builds: 2D where it can)."""
    new, _ = derive_backbone_plans(plans, dataset_json, name)
    dims = min(BACKBONES[name].spatial_dims)
    cname = next(c for c, conf in new["configurations"].items() if len(conf["patch_size"]) == dims)
    config = PlansManager(new).get_configuration(cname)
    arch = config.configuration["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, 4, 3, allow_init=False,
                                 deep_supervision=supports_deep_supervision(arch))
    assert isinstance(net, pydoc.locate(BACKBONES[name].class_path))
    net.decoder.deep_supervision = False  # nnU-Net's inference
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 4, *config.patch_size))
    assert tuple(out.shape) == (1, 3, *config.patch_size)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_derive_keeps_everything_else_and_copies(plans, dataset_json, name):
    before = copy.deepcopy(plans)
    new, _ = derive_backbone_plans(plans, dataset_json, name)
    assert plans == before  # the caller's dict is not touched
    assert _without(new, "plans_name", "configurations") == _without(plans, "plans_name", "configurations")
    for cname, config in plans["configurations"].items():
        derived = new["configurations"][cname]
        if len(config["patch_size"]) not in BACKBONES[name].spatial_dims:
            assert derived == config  # 3D-only networks leave 2D configurations as planned
            continue
        # spacing, normalisation, data identifier (the preprocessed data is reused), resampling, batch size: as planned
        assert _without(derived, "architecture", "patch_size") == _without(config, "architecture", "patch_size")
        assert len(derived["patch_size"]) == len(config["patch_size"])
        assert all(n >= o for n, o in zip(derived["patch_size"], config["patch_size"]))
        assert derived["architecture"]["network_class_name"] == backbone_class_name(name)
        json.dumps(derived)  # JSON-serialisable


class WidePlainUNet(PlainConvUNet):
    """PlainConvUNet's constructor plus a JSON-serialisable extra; added by the registry row of the test below."""

    def __init__(self, *args, features_per_stage, width: int = 1, **kwargs):
        super().__init__(*args, features_per_stage=[f * width for f in features_per_stage], **kwargs)


def test_one_registry_row_adds_a_backbone_with_the_unet_constructor(plans, dataset_json, monkeypatch):
    monkeypatch.setitem(BACKBONES, "wide_plain", BackboneSpec(
        f"{__name__}.WidePlainUNet", "WidePlain", unet_kwargs_architecture, requested_patch=replanned_topology,
        defaults={"width": 2}))
    new, notes = derive_backbone_plans(plans, dataset_json, "wide_plain")
    assert new["plans_name"] == "nnUNetPlans_WidePlain"
    for cname, config in plans["configurations"].items():
        arch, source = new["configurations"][cname]["architecture"], config["architecture"]
        assert arch["network_class_name"] == f"{__name__}.WidePlainUNet"
        assert arch["arch_kwargs"] == {**source["arch_kwargs"], "width": 2}
        assert arch["_kw_requires_import"] == source["_kw_requires_import"]
        assert new["configurations"][cname]["patch_size"] == config["patch_size"]
    assert "3d_fullres: WidePlain: the plans' U-Net arguments (4 stages); patch [32, 40, 32] kept" in notes
    assert _count(new["configurations"]["2d"]) > _count(plans["configurations"]["2d"])  # built by nnU-Net: wider
    again, _ = derive_backbone_plans(new, dataset_json, "wide_plain", plans_name=new["plans_name"])
    assert again == new
    replanned, _ = backbone_architecture("wide_plain", plans["configurations"]["3d_fullres"], patch_size=[64] * 3)
    assert replanned["architecture"]["arch_kwargs"]["n_stages"] == 5
    assert _count(replanned) > 0
    with pytest.raises(ValueError, match="WidePlain takes its topology .* derive from nnU-Net's own plans"):
        backbone_architecture("wide_plain", backbone_architecture("swin_unetr", plans["configurations"]["2d"])[0])


def test_patch_rounding_and_notes(plans, dataset_json):
    new, notes = derive_backbone_plans(plans, dataset_json, "swin_unetr")
    assert new["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 32]
    assert new["configurations"]["2d"]["patch_size"] == [64, 32]
    assert any(n.startswith("3d_fullres: patch [32, 40, 32] -> [32, 64, 32] for SwinUNETR (multiples of 32")
               for n in notes), notes
    new, notes = derive_backbone_plans(plans, dataset_json, "unetr")
    config = new["configurations"]["3d_fullres"]
    assert config["patch_size"] == [32, 48, 32] == config["architecture"]["arch_kwargs"]["img_size"]
    assert "3d_fullres: patch [32, 40, 32] -> [32, 48, 32] for UNETR (multiples of 16)" in notes
    # SegResNet's default 4 levels need multiples of 8: the planned patch already is
    new, notes = derive_backbone_plans(plans, dataset_json, "segresnet")
    assert new["configurations"]["3d_fullres"]["patch_size"] == [32, 40, 32]
    assert not any("->" in n for n in notes)
    new, notes = derive_backbone_plans(plans, dataset_json, "segresnet", blocks_down=[1, 1, 1, 1, 1, 1])
    assert new["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 32]
    assert "3d_fullres: patch [32, 40, 32] -> [32, 64, 32] for SegResNet (multiples of 32)" in notes


def test_monai_arch_kwargs(plans, dataset_json):
    swin, _ = derive_backbone_plans(plans, dataset_json, "swin_unetr", feature_size=24)
    arch = swin["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"] == {"feature_size": 24, "spatial_dims": 3}
    assert arch["_kw_requires_import"] == []
    assert swin["configurations"]["2d"]["architecture"]["arch_kwargs"]["spatial_dims"] == 2
    seg, _ = derive_backbone_plans(plans, dataset_json, "segresnet")
    kwargs = seg["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert kwargs["dsdepth"] == 3 and kwargs["init_filters"] == 32
    # nnU-Net reads its deep supervision scales from arch_kwargs['strides']
    assert PlansManager(seg).get_configuration("3d_fullres").pool_op_kernel_sizes == \
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    plain, _ = derive_backbone_plans(plans, dataset_json, "segresnet", deep_supervision=False)
    assert {"dsdepth", "strides"}.isdisjoint(plain["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"])


def test_derive_is_idempotent_and_keeps_existing_backbone_kwargs(plans, dataset_json):
    for name in BACKBONE_NAMES:
        once, _ = derive_backbone_plans(plans, dataset_json, name)
        twice, notes = derive_backbone_plans(once, dataset_json, name, plans_name=once["plans_name"])
        assert twice == once, name
        assert not any("->" in n for n in notes)
    swin, _ = derive_backbone_plans(plans, dataset_json, "swin_unetr", feature_size=24)
    again, _ = derive_backbone_plans(swin, dataset_json, "swin_unetr", depths=[1, 1, 1, 1])
    assert again["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["feature_size"] == 24


def test_stunet_presets(plans, dataset_json):
    counts = {}
    for name, preset in STUNET_PRESETS.items():
        new, notes = derive_backbone_plans(plans, dataset_json, name)
        config, source = new["configurations"]["3d_fullres"], plans["configurations"]["3d_fullres"]
        arch, src = config["architecture"], source["architecture"]
        assert arch["network_class_name"] == RESENC_CLASS
        assert arch["_kw_requires_import"] == ["conv_op", "norm_op", "dropout_op", "nonlin"]
        kwargs = arch["arch_kwargs"]
        for key in ("n_stages", "strides", "kernel_sizes", "conv_op", "norm_op", "nonlin"):
            assert kwargs[key] == src["arch_kwargs"][key]
        assert kwargs["features_per_stage"] == preset["widths"][:4]
        assert kwargs["n_blocks_per_stage"] == [preset["blocks"]] * 4
        assert kwargs["n_conv_per_stage_decoder"] == [2 * preset["blocks"]] * 3
        assert config["patch_size"] == source["patch_size"]
        assert any("STU-Net's 6 stages, the plans' 4" in n for n in notes)
        counts[name] = _count(new["configurations"]["2d"])  # 2D: the same widths, fewer weights to allocate
    assert counts["stunet_s"] < counts["stunet_b"] < counts["stunet_l"], counts


def test_stunet_widths_repeat_beyond_six_stages(plans):
    config = copy.deepcopy(plans["configurations"]["2d"])
    kwargs = config["architecture"]["arch_kwargs"]
    kwargs.update(n_stages=8, strides=[[1, 1]] + [[2, 2]] * 7, kernel_sizes=[[3, 3]] * 8)
    new, _ = backbone_architecture("stunet_b", config)
    assert new["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512, 512]


def test_stunet_patch_request_replans_the_topology(plans):
    new, notes = backbone_architecture("stunet_s", plans["configurations"]["3d_fullres"], patch_size=[64, 64, 64])
    kwargs = new["architecture"]["arch_kwargs"]
    assert new["patch_size"] == [64, 64, 64]
    assert kwargs["n_stages"] == len(kwargs["strides"]) == len(kwargs["features_per_stage"]) == 5
    assert kwargs["features_per_stage"] == [16, 32, 64, 128, 256]
    assert "patch [32, 40, 32] -> [64, 64, 64] (requested)" in notes


def test_taheri2025_swin_unetr_preset(plans, dataset_json):
    new, notes = derive_backbone_plans(plans, dataset_json, "swin_unetr", preset=SWIN_UNETR_TAHERI2025_PRESET)
    config = new["configurations"]["3d_fullres"]
    assert config["patch_size"] == [96, 96, 96] and config["batch_size"] == 4
    assert config["architecture"]["arch_kwargs"]["feature_size"] == 48
    assert "3d_fullres: patch [32, 40, 32] -> [96, 96, 96] (requested)" in notes
    assert new["configurations"]["2d"]["batch_size"] == plans["configurations"]["2d"]["batch_size"]
    # an explicit option wins over the preset's
    new, _ = derive_backbone_plans(plans, dataset_json, "swin_unetr", preset=SWIN_UNETR_TAHERI2025_PRESET,
                                   feature_size=24)
    assert new["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["feature_size"] == 24


def test_repo_swin_unetr_preset_is_the_constant():
    """The shipped swin_unetr_taheri2025 preset is SWIN_UNETR_TAHERI2025_PRESET as data (the command line reads it)."""
    from nnunetv2_ext.planning.presets import resolve_preset

    path = resolve_preset("swin_unetr_taheri2025")
    assert json.loads(path.read_text()) == SWIN_UNETR_TAHERI2025_PRESET


def test_configurations_without_architecture_are_left_alone(plans, dataset_json):
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "2d"}
    new, notes = derive_backbone_plans(plans, dataset_json, "swin_unetr")
    assert new["configurations"]["3d_cascade_fullres"] == plans["configurations"]["3d_cascade_fullres"]
    assert "3d_cascade_fullres: inherits its network from 3d_fullres" in notes
    resolved = PlansManager(new).get_configuration("3d_cascade_fullres")
    assert resolved.network_arch_class_name == backbone_class_name("swin_unetr")


def test_errors(plans, dataset_json):
    with pytest.raises(ValueError, match="unknown backbone 'swinunetr'; available: swin_unetr, segresnet, unetr, "
                                         "stunet_s, stunet_b, stunet_l"):
        derive_backbone_plans(plans, dataset_json, "swinunetr")
    config = plans["configurations"]["3d_fullres"]
    with pytest.raises(ValueError, match="JSON-serialisable"):
        backbone_architecture("swin_unetr", config, norm_layer=object())
    with pytest.raises(ValueError, match="takes no options"):
        backbone_architecture("stunet_s", config, feature_size=12)
    with pytest.raises(ValueError, match="no deep supervision option"):
        backbone_architecture("unetr", config, deep_supervision=True)
    swin, _ = backbone_architecture("swin_unetr", config)
    with pytest.raises(ValueError, match="derive from nnU-Net's own plans"):
        backbone_architecture("stunet_b", swin)
    with pytest.raises(ValueError, match="no 'architecture'"):
        backbone_architecture("segresnet", {"inherits_from": "3d_fullres"})
    with pytest.raises(ValueError, match="preset changes configuration '3d_lowres'"):
        derive_backbone_plans(plans, dataset_json, "unetr",
                              preset={"configurations": {"3d_lowres": {"patch_size": [32, 32, 32]}}})
    with pytest.raises(ValueError, match=r"preset keys \['spacing'\]"):
        derive_backbone_plans(plans, dataset_json, "unetr", preset={"configurations": {"3d_fullres": {"spacing": 1}}})


@pytest.fixture()
def preprocessed(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    return write_tiny_preprocessed(tmp_path / "Dataset992_Tiny")


def test_write_backbone_plans(preprocessed, tmp_path):
    path, notes = write_backbone_plans(992, "unetr")
    assert Path(path) == preprocessed / "nnUNetPlans_UNETR.json"
    written = json.loads(Path(path).read_text())
    assert written["plans_name"] == "nnUNetPlans_UNETR"
    assert written["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["img_size"] == [32, 48, 32]
    assert any("-> [32, 48, 32]" in n for n in notes)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_backbone_plans(992, "unetr")
    write_backbone_plans(992, "unetr", overwrite=True, feature_size=8)
    assert json.loads(Path(path).read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"][
        "feature_size"] == 8
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps(SWIN_UNETR_TAHERI2025_PRESET))
    path, _ = write_backbone_plans(992, "swin_unetr", plans_name="nnUNetPlans_SwinSeed", preset_file=str(preset))
    assert json.loads(Path(path).read_text())["configurations"]["3d_fullres"]["batch_size"] == 4
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_and_preprocess -d 992"):
        write_backbone_plans(992, "unetr", source_plans="nnUNetResEncUNetMPlans")
