"""PCT-Net and TransBTS through plans: derived configuration, built by nnU-Net's get_network_from_plans, deep
supervision outputs at the scales nnU-Net's trainer derives from the plans' strides."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_ext.planning.backbones import backbone_architecture

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NARROW = {"pctnet": {"features_per_stage": [4, 4, 8, 8, 16], "num_heads": [1, 1, 1], "window_size": 2},
          "transbts": {"features_per_stage": [4, 8, 8, 16], "embedding_dim": 16, "num_layers": 1, "num_heads": 2,
                       "mlp_dim": 32}}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name,n_strides", [("pctnet", 5), ("transbts", 4)])
def test_derived_configuration_builds_and_matches_nnunet_deep_supervision(name, n_strides):
    config = json.loads((FIXTURES / "nnUNetPlans_tiny.json").read_text())["configurations"]["3d_fullres"]
    derived, notes = backbone_architecture(name, config, **NARROW[name])
    kwargs = derived["architecture"]["arch_kwargs"]
    assert len(kwargs["strides"]) == n_strides and kwargs["strides"][0] == [1, 1, 1]
    product = np.prod(np.array(kwargs["strides"]), axis=0)
    assert all(p % m == 0 for p, m in zip(derived["patch_size"], product))
    assert kwargs["patch_size"] == derived["patch_size"]
    assert all(d >= c for d, c in zip(derived["patch_size"], config["patch_size"]))  # rounded up, never cut
    net = get_network_from_plans(derived["architecture"]["network_class_name"], kwargs, [], 4, 3,
                                 deep_supervision=True)
    out = net(torch.randn(1, 4, *derived["patch_size"]))
    # nnUNetTrainer._get_deep_supervision_scales: 1 / cumprod(strides), all but the last
    scales = (1 / np.cumprod(np.array(kwargs["strides"]), axis=0))[:-1]
    assert [tuple(o.shape[2:]) for o in out] == [tuple(int(p * s) for p, s in zip(derived["patch_size"], sc))
                                                 for sc in scales]


def test_custom_backbones_are_3d_only():
    config = json.loads((FIXTURES / "nnUNetPlans_tiny.json").read_text())["configurations"]["2d"]
    with pytest.raises(ValueError, match="3D only"):
        backbone_architecture("pctnet", config)
