"""The CPU-sized quickstart schedule: the trainer builds its network from resized plans, and those plans are the
ones nnU-Net saves in the model folder (so nnUNetv2_predict rebuilds the same network)."""
import json
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training.base import QuickstartScheduleMixin
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder_quickstart

PLANS = Path(__file__).resolve().parents[1] / "planning" / "fixtures" / "nnUNetPlans_tiny.json"


class _RecordsPlans(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        self.plans = plans


class _Quick(QuickstartScheduleMixin, _RecordsPlans):
    patch_size = (16, 16, 16)
    base_features = 4


def test_quickstart_plans_have_the_class_patch_and_widths():
    source = json.loads(PLANS.read_text())
    before = json.dumps(source, sort_keys=True)
    trainer = _Quick(source, "3d_fullres", 0, {}, torch.device("cpu"))
    config = trainer.plans["configurations"]["3d_fullres"]
    kwargs = config["architecture"]["arch_kwargs"]
    assert config["patch_size"] == [16, 16, 16]
    assert kwargs["features_per_stage"] == [4 * 2 ** i for i in range(kwargs["n_stages"])]
    assert len(kwargs["strides"]) == kwargs["n_stages"] and all(s <= 2 for st in kwargs["strides"] for s in st)
    assert json.dumps(source, sort_keys=True) == before  # the caller's plans are not edited in place
    # other configurations are left as planned
    assert trainer.plans["configurations"]["2d"] == source["configurations"]["2d"]


def test_quickstart_trainer_is_the_multi_encoder_at_cpu_size():
    cls = nnUNetTrainerMultiEncoder_quickstart
    assert cls.patch_size == (32, 32, 32) and cls.base_features == 8
    assert cls.num_epochs * cls.num_iterations_per_epoch <= 500  # a CPU-sized schedule
