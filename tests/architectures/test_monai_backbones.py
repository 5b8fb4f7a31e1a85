"""Tests for nnunetv2_ext.architectures.monai_backbones (tiny MONAI networks, built the way nnU-Net builds them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_ext.architectures.monai_backbones import (
    DeepSupervisionSwitch,
    SegResNetBackbone,
    SwinUNETRBackbone,
    UNETRBackbone,
)
from nnunetv2_ext.planning.backbones import derive_backbone_plans
from nnunetv2_ext.training.backbones import supports_deep_supervision

FIXTURES = Path(__file__).resolve().parents[1] / "planning" / "fixtures"
NUM_CLASSES = 3
# tiny versions of each backbone (the options a debug trainer uses)
TINY = {
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1]},
    "segresnet": {"init_filters": 8},
    "unetr": {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
}
CLASSES = {"swin_unetr": SwinUNETRBackbone, "segresnet": SegResNetBackbone, "unetr": UNETRBackbone}




def derived_configuration(name: str, configuration: str = "3d_fullres", **options) -> dict:
    plans = json.loads((FIXTURES / "nnUNetPlans_tiny.json").read_text())
    dataset_json = json.loads((FIXTURES / "dataset_tiny.json").read_text())
    new, _ = derive_backbone_plans(plans, dataset_json, name, **{**TINY[name], **options})
    return new["configurations"][configuration]


def build(config: dict, deep_supervision: bool, num_classes: int = NUM_CLASSES, input_channels: int = 4):
    """As nnU-Net's trainer and predictor build networks."""
    torch.manual_seed(0)
    arch = config["architecture"]
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  input_channels, num_classes, allow_init=True, deep_supervision=deep_supervision)


def tiny_input(config: dict, batch: int = 1, channels: int = 4) -> torch.Tensor:
    return torch.randn(batch, channels, *config["patch_size"], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
@pytest.mark.parametrize("name", list(TINY))
def test_builds_from_derived_plans_without_deep_supervision(name, configuration):
    config = derived_configuration(name, configuration)
    net = build(config, deep_supervision=False)
    assert isinstance(net, CLASSES[name])
    assert not net.decoder.deep_supervision
    x = tiny_input(config)
    for mode in (net.train, net.eval):
        mode()
        with torch.no_grad():
            out = net(x)
        assert isinstance(out, torch.Tensor)
        assert out.shape == (1, NUM_CLASSES, *config["patch_size"])


@pytest.mark.parametrize("name", ["swin_unetr", "unetr"])
def test_transformers_refuse_deep_supervision(name):
    config = derived_configuration(name, "2d")
    with pytest.raises(ValueError, match="has no deep supervision.*nnUNetTrainerBackbone"):
        build(config, deep_supervision=True)
    net = build(config, deep_supervision=False)
    net.decoder.deep_supervision = True  # what nnU-Net does after its final validation: ignored
    assert net.decoder.deep_supervision is False
    assert isinstance(net(tiny_input(config)), torch.Tensor)
    assert not supports_deep_supervision(config["architecture"])


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_segresnet_deep_supervision_outputs(configuration):
    config = derived_configuration("segresnet", configuration)
    assert supports_deep_supervision(config["architecture"])
    net = build(config, deep_supervision=True)
    patch = config["patch_size"]
    expected = [(2, NUM_CLASSES, *[p // 2 ** level for p in patch]) for level in range(3)]  # highest resolution first
    x = tiny_input(config, batch=2)
    net.train()
    assert [tuple(o.shape) for o in net(x)] == expected
    # nnU-Net's validation step runs in eval mode and still wants every output; the layers stay in eval mode
    net.eval()
    with torch.no_grad():
        outputs = net(x)
        assert [tuple(o.shape) for o in outputs] == expected
        assert not any(m.training for m in net.modules())
        net.decoder.deep_supervision = False  # nnU-Net's final validation and inference
        single = net(x)
    assert isinstance(single, torch.Tensor) and torch.allclose(single, outputs[0])


def test_segresnet_checkpoint_keys_do_not_depend_on_deep_supervision():
    config = derived_configuration("segresnet", "2d")
    with_ds, without = build(config, True), build(config, False)
    assert {k: v.shape for k, v in with_ds.state_dict().items()} == \
        {k: v.shape for k, v in without.state_dict().items()}
    without.load_state_dict(with_ds.state_dict())


def test_segresnet_without_deep_supervision_is_monais_segresnet():
    config = derived_configuration("segresnet", "2d", deep_supervision=False)
    assert not supports_deep_supervision(config["architecture"])
    net = build(config, deep_supervision=False)
    assert type(net.net).__name__ == "SegResNet"
    with pytest.raises(ValueError, match="has no deep supervision"):
        build(config, deep_supervision=True)


@pytest.mark.parametrize("name", list(TINY))
def test_gradients_reach_every_parameter(name):
    config = derived_configuration(name, "3d_fullres")
    net = build(config, deep_supervision=supports_deep_supervision(config["architecture"]))
    net.train()
    out = net(tiny_input(config, batch=2))
    outputs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outputs).backward()
    missing = [k for k, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{name}: no gradient for {missing}"


@pytest.mark.parametrize("cls, patch, kwargs, expected", [
    (SwinUNETRBackbone, [32, 40, 40], {}, [32, 64, 64]),
    (SwinUNETRBackbone, [96, 96, 96], {}, [96, 96, 96]),
    (SwinUNETRBackbone, [100, 20, 33], {}, [128, 32, 64]),
    (SwinUNETRBackbone, [20, 30, 24], {}, [32, 64, 32]),    # 32^3 would leave a one-voxel bottleneck
    (SwinUNETRBackbone, [40, 30], {"patch_size": 4}, [2048, 1024]),  # token patch 4: multiples of 4 ** 5
    (SegResNetBackbone, [32, 40, 36], {}, [32, 40, 40]),    # 4 levels: multiples of 8
    (SegResNetBackbone, [30, 41], {"blocks_down": [1, 2, 2]}, [32, 44]),
    (UNETRBackbone, [32, 40, 40], {}, [32, 48, 48]),
    (UNETRBackbone, [128, 160, 112], {}, [128, 160, 112]),
])
def test_valid_patch_size(cls, patch, kwargs, expected):
    assert cls.valid_patch_size(patch, **kwargs) == expected
    assert cls.valid_patch_size(expected, **kwargs) == expected


def test_argument_errors():
    with pytest.raises(ValueError, match="feature_size must be divisible by 12"):
        SwinUNETRBackbone(4, 3, feature_size=16)
    with pytest.raises(ValueError, match="no img_size"):
        SwinUNETRBackbone(4, 3, feature_size=12, img_size=[64, 64, 64])
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        SwinUNETRBackbone(4, 3, feature_size=12, spatial_dims=1)
    with pytest.raises(ValueError, match="multiples of 16"):
        UNETRBackbone(4, 3, img_size=[32, 40, 40])
    with pytest.raises(ValueError, match="strides .* do not describe this SegResNet"):
        SegResNetBackbone(4, 3, init_filters=8, dsdepth=3, strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]])
    with pytest.raises(ValueError, match="dsdepth must be between 1 and"):
        SegResNetBackbone(4, 3, init_filters=8, dsdepth=4)
    with pytest.raises(ValueError, match="resolution"):
        SegResNetBackbone(4, 3, init_filters=8, resolution=[1, 1, 3])
    config = derived_configuration("unetr", "2d")
    net = build(config, deep_supervision=False)
    with pytest.raises(ValueError, match=r"UNETR was built for inputs of size \[48, 32\]"):
        net(torch.zeros(1, 4, 32, 32))


def test_deep_supervision_switch():
    switch = DeepSupervisionSwitch(supported=True)
    assert switch.deep_supervision is False
    switch.deep_supervision = True
    assert switch.deep_supervision is True
    assert DeepSupervisionSwitch(supported=False, enabled=True).deep_supervision is False


@pytest.mark.parametrize("name", list(TINY))
def test_weight_transfer_between_backbones(name):
    """A pretext network (5 outputs, as Volume Fusion's) into the segmentation network (3 outputs): everything but the
    output convolutions is loaded, through this package's weight transfer."""
    from nnunetv2_ext.transfer import transfer_weights

    config = derived_configuration(name, "2d")
    source, target = build(config, False, num_classes=5), build(config, False)
    state, report = transfer_weights(source.state_dict(), target)
    target.load_state_dict(state)
    new = [e.target_key for e in report.entries if e.action == "new"]
    assert new and all(source.state_dict()[k].shape[0] == 5 for k in new), new
    assert report.counts()["loaded"] == len(target.state_dict()) - len(new)
    loaded = [e.target_key for e in report.entries if e.action == "loaded"]
    assert all(torch.equal(target.state_dict()[k], source.state_dict()[k]) for k in loaded)


def test_monai_is_imported_lazily():
    """nnU-Net's trainer search imports the trainer modules; MONAI is only imported when a network is built."""
    code = ("import sys; import nnunetv2_ext.training.backbones, nnunetv2_ext.planning.backbones, "
            "nnunetv2_ext.architectures.monai_backbones as m; assert 'monai' not in sys.modules, 'monai imported'; "
            "m.SegResNetBackbone(1, 2, init_filters=8); assert 'monai' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize("regions", [True, False])
def test_squared_soft_dice_loss_known_answer(regions):
    """nnUNetTrainerSwinUNETR's loss is Taheri Otaghsara et al. 2025's (Multi-encoder nnU-Net) eq. in sec. 4.2.1,
    1 - 2/J sum_j sum_i G Y / (sum_i G^2 + sum_i Y^2), per sample, on nnU-Net's targets (boolean region masks, or
    label maps one-hot encoded here)."""
    from nnunetv2_ext.training.backbones import SquaredSoftDiceLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g)
    if regions:
        target = torch.rand(2, 3, 6, 5, 4, generator=g) > 0.5
        y, onehot = torch.sigmoid(logits), target.float()
    else:
        target = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g).float()
        y = torch.softmax(logits, 1)[:, 1:]  # without background
        onehot = torch.cat([(target == c).float() for c in (1, 2)], 1)
    axes = (2, 3, 4)
    expected = 1 - 2 * ((onehot * y).sum(axes) / (onehot.square().sum(axes) + y.square().sum(axes))).mean()
    loss = SquaredSoftDiceLoss(regions, include_background=regions, smooth_nr=0.0, smooth_dr=1e-6)
    assert torch.allclose(loss(logits, target), expected, atol=1e-5)
