"""The hooks of nnunetv2_ext.training.pretext_base.PretextTrainerBase, on a toy restoration pretext (defined here in
the ~30 lines a restoration pretext takes) and on the package's pretext trainers: the pretext batch, the train
step, the seeded streams, the validation epoch's logging and ``pretext_metrics.json``, and no segmentation
validation. Trainers are built on tiny 2D plans as in ``nnUNetv2_train`` (``tests/training/conftest.py``), batches
are made in memory."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_ext.training.cross_modality import nnUNetTrainerCrossModality
from nnunetv2_ext.training.masked_image import nnUNetTrainerMaskedImage
from nnunetv2_ext.training.model_genesis import nnUNetTrainerModelGenesis
from nnunetv2_ext.training.patch_swapping import nnUNetTrainerPatchSwapping
from nnunetv2_ext.training.pretext_base import VALIDATION_SEED_OFFSET, PretextTrainerBase
from nnunetv2_ext.training.pretext_metrics import PRETEXT_METRICS_FILE, pretext_metric
from nnunetv2_ext.training.swin_proxies import nnUNetTrainerSwinProxies
from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion
from tests.training.conftest import SIZE, tiny_trainer

pytestmark = pytest.mark.usefixtures("single_thread")
TWO = {"0": "T1", "1": "FLAIR"}
THREE = {"0": "T1", "1": "T1Gd", "2": "FLAIR"}
BATCH = 2


class nnUNetTrainerToyDenoising(PretextTrainerBase):
    """A restoration pretext: restore the image from a noisy copy (MSE), scored against returning the noisy input."""
    pretext_name = "Toy denoising"
    initial_lr = 1e-3
    noise = 0.5

    def _build_loss(self):
        return nn.MSELoss()

    def configure_optimizers(self):
        return torch.optim.Adam(self.network.parameters(), lr=self.initial_lr), None

    def pretext_batch(self, data, generator):
        return data + self.noise * torch.randn(data.shape, generator=generator, device=data.device), data

    def validation_values(self, inputs, target, output):
        return {"mse": float(F.mse_loss(output, target)), "identity_mse": float(F.mse_loss(inputs, target))}

    def pretext_metrics(self, values):
        return [pretext_metric("restoration MSE", values["mse"].mean(), values["identity_mse"].mean(), "identity",
                               higher_is_better=False)]


def _images(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (n, channels, 32, 32), z-scored per channel."""
    x = F.avg_pool2d(torch.randn(n, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)), 5, 1, 2)
    return (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)


def _batch(x: torch.Tensor) -> dict:
    """A batch as nnU-Net's dataloader gives it (the segmentation target is replaced by the pretext's)."""
    return {"data": x, "target": torch.zeros((x.shape[0], 1, *x.shape[2:])), "keys": ["case"] * x.shape[0]}


def _validation_losses(trainer, batches) -> list:
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        return [trainer.validation_step(_batch(b))["loss"] for b in batches]


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    return tiny_trainer(nnUNetTrainerToyDenoising, TWO, BATCH, tmp_path, monkeypatch)


# ------------------------------------------------------------------------------------------- the toy restoration


def test_the_base_sets_no_oversampling_no_deep_supervision_and_a_restoration_head(toy):
    assert toy.oversample_foreground_percent == 0.0 and toy.enable_deep_supervision is False
    output = toy.network(_images(BATCH, 2))
    assert isinstance(output, torch.Tensor) and output.shape == (BATCH, 2, SIZE, SIZE)  # one output per channel


def test_train_step_trains_on_the_pretext_batch_and_reduces_its_loss(toy):
    x = _images(BATCH, 2)
    before = _validation_losses(toy, [x])
    losses = [float(toy.train_step(_batch(x))["loss"]) for _ in range(30)]
    after = _validation_losses(toy, [x])
    assert after[0] < 0.7 * before[0], (before, after)
    assert losses[-1] < losses[0]


def test_train_step_is_nnunets_on_the_pretext_batch(toy, monkeypatch):
    """The base hands nnU-Net's train_step the pretext's input and target, drawn from the seeded training stream."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    seen = []
    monkeypatch.setattr(nnUNetTrainer, "train_step", lambda self, batch: seen.append(batch) or {"loss": 0.0})
    x = _images(BATCH, 2)
    toy.train_step(_batch(x))
    (batch,) = seen
    noise = toy.noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(toy.pretext_seed))
    assert torch.equal(batch["target"], x) and torch.allclose(batch["data"], x + noise)
    assert batch["keys"] == ["case"] * BATCH  # the rest of the batch is kept


def test_streams_are_seeded_per_rank_and_validation_batches_repeat_every_epoch(toy):
    x = _images(BATCH, 2)
    first = toy.pretext_train_batch(_batch(x))["data"]
    assert not torch.equal(first, toy.pretext_train_batch(_batch(x))["data"])  # the stream moves on
    toy.seed_training_stream()
    assert torch.equal(first, toy.pretext_train_batch(_batch(x))["data"])  # same seed, same draws
    toy.local_rank = 1
    toy.seed_training_stream()
    assert not torch.equal(first, toy.pretext_train_batch(_batch(x))["data"])  # another DDP worker, another stream

    def epoch():
        toy.on_validation_epoch_start()
        return [toy.pretext_validation_batch(_batch(x))["data"] for _ in range(2)]

    one, two = epoch(), epoch()
    assert all(torch.equal(a, b) for a, b in zip(one, two)) and not torch.equal(one[0], one[1])
    seed = toy.pretext_seed + VALIDATION_SEED_OFFSET + 1
    assert torch.allclose(one[1], x + toy.noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))


def test_validation_epoch_end_logs_and_writes_pretext_metrics_json(toy):
    batches = [_images(BATCH, 2, seed=s) for s in (1, 2)]
    for epoch in range(2):
        toy.current_epoch = epoch
        with torch.no_grad():
            toy.on_validation_epoch_start()
            outputs = [toy.validation_step(_batch(b)) for b in batches]
            toy.on_validation_epoch_end(outputs)
    record = json.loads((Path(toy.output_folder) / PRETEXT_METRICS_FILE).read_text())
    assert record["trainer"] == "nnUNetTrainerToyDenoising" and record["epoch"] == 1
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    (metric,) = record["metrics"]
    mse = sum(o["mse"] for o in outputs) / 2
    identity = sum(o["identity_mse"] for o in outputs) / 2
    assert metric["name"] == "restoration MSE" and metric["value"] == pytest.approx(mse)
    assert metric["baseline"] == pytest.approx(identity) == pytest.approx(toy.noise ** 2, rel=0.1)
    assert metric["learned"] == (mse < identity)
    # nnU-Net's slots: the validation loss, and as "pseudo dice" the share of the baseline's error removed
    assert toy.logger.get_value("val_losses", step=1) == pytest.approx(sum(o["loss"] for o in outputs) / 2)
    assert toy.logger.get_value("mean_fg_dice", step=1) == pytest.approx(1 - mse / identity)
    assert toy.logger.get_value("dice_per_class_or_region", step=1) == [pytest.approx(1 - mse / identity)]
    assert "pretext metric: restoration MSE" in Path(toy.log_file).read_text()


def test_perform_actual_validation_writes_no_segmentation(toy):
    before = sorted(p.name for p in Path(toy.output_folder).iterdir())
    toy.perform_actual_validation(save_probabilities=True)
    assert sorted(p.name for p in Path(toy.output_folder).iterdir()) == before  # no validation/ folder, no summary
    assert not (Path(toy.output_folder) / "validation").exists()
    last = Path(toy.log_file).read_text().strip().splitlines()[-1]
    assert last.endswith("Toy denoising pretraining: no segmentation validation (the pretext has no labels); see the "
                         "pretext metrics in the log and pretext_metrics.json")


def test_a_pretext_without_its_hooks_says_which_to_define(tmp_path, monkeypatch):
    class nnUNetTrainerNoHooks(PretextTrainerBase):
        def _build_loss(self):
            return nn.MSELoss()

    trainer = tiny_trainer(nnUNetTrainerNoHooks, TWO, BATCH, tmp_path, monkeypatch)
    with pytest.raises(NotImplementedError, match=r"nnUNetTrainerNoHooks must define pretext_batch\(data, generator"):
        trainer.train_step(_batch(_images(BATCH, 2)))
    with pytest.raises(NotImplementedError, match=r"must define pretext_metrics\(values\)"):
        trainer.pretext_metrics({})


def test_default_pseudo_dice_of_a_score_and_of_an_error(toy):
    score = pretext_metric("accuracy", 0.6, 0.25, "chance", higher_is_better=True)
    error = pretext_metric("L1", 0.3, 0.4, "identity", higher_is_better=False)
    assert toy.pseudo_dice({}, [score, error]) == [0.6]
    assert toy.pseudo_dice({}, [error, score]) == [pytest.approx(0.25)]


# ----------------------------------------------------------------------------------------- the package's pretexts

# pretext -> (trainer, channel names, the metrics of its pretext_metrics.json)
PRETEXTS = {
    "volume_fusion": (nnUNetTrainerVolumeFusion, TWO, ["fusion-level Dice"]),
    "swin_proxies": (nnUNetTrainerSwinProxies, TWO,
                     ["rotation accuracy", "reconstruction L1", "inpainting L1 (masked boxes)"]),
    "cross_modality": (nnUNetTrainerCrossModality, THREE, ["PSNR (dB)"]),
    "model_genesis": (nnUNetTrainerModelGenesis, TWO, ["restoration MSE"]),
    "masked_image": (nnUNetTrainerMaskedImage, TWO, ["masked L1"]),
    "patch_swapping": (nnUNetTrainerPatchSwapping, TWO, ["restoration MSE"]),
}
RESTORATIONS = ("model_genesis", "masked_image", "patch_swapping")  # one output per input channel, any network


def _pretext_trainer(name: str, tmp_path, monkeypatch):
    cls, names, _ = PRETEXTS[name]
    return tiny_trainer(cls, names, BATCH, tmp_path, monkeypatch), len(names)


def test_volume_fusion_batch_is_fused_images_and_a_label_per_deep_supervision_scale(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("volume_fusion", tmp_path, monkeypatch)
    assert trainer.enable_deep_supervision and trainer.oversample_foreground_percent == 0.0
    x = _images(BATCH, channels)
    inputs, target = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert inputs.shape == x.shape and not torch.equal(inputs, x)
    # nnU-Net's deep-supervision scales of the 3-stage network: full and half resolution
    assert [tuple(t.shape) for t in target] == [(BATCH, 1, 32, 32), (BATCH, 1, 16, 16)]
    k = trainer.vf_config.k
    assert target[0].dtype == torch.long and 0 <= int(target[0].min()) and int(target[0].max()) <= k
    assert [o.shape[1:] for o in trainer.network(inputs)] == [(k + 1, 32, 32), (k + 1, 16, 16)]


def test_swin_proxies_batch_is_two_views_per_sample(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("swin_proxies", tmp_path, monkeypatch)
    x = _images(BATCH, channels)
    inputs, (image, rotation, mask) = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert inputs.shape == image.shape == (2 * BATCH, channels, SIZE, SIZE)
    assert rotation.shape == (2 * BATCH,) and mask.shape == (2 * BATCH, 1, SIZE, SIZE) and mask.any()
    assert torch.equal(inputs[~mask.expand_as(inputs)], image[~mask.expand_as(image)])  # unmasked voxels kept
    output = trainer.network(inputs)
    assert output.reconstruction.shape == image.shape and output.rotation_logits.shape == (2 * BATCH, 4)


def test_cross_modality_batch_predicts_the_target_modality_from_the_others(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("cross_modality", tmp_path, monkeypatch)
    x = _images(BATCH, channels)
    inputs, target = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(target, x[:, 2:3]) and torch.equal(inputs[:, :2], x[:, :2]) and not inputs[:, 2].any()
    assert trainer.network(inputs).shape == (BATCH, 1, SIZE, SIZE)


def test_models_genesis_batch_is_the_corrupted_images_and_the_originals(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("model_genesis", tmp_path, monkeypatch)
    x = _images(BATCH, channels)
    inputs, target = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(target, x) and inputs.shape == x.shape and not torch.equal(inputs, x)
    # the corruption runs in each channel's own intensity range
    assert torch.all(inputs.amin((2, 3)) >= x.amin((2, 3)) - 1e-5)
    assert torch.all(inputs.amax((2, 3)) <= x.amax((2, 3)) + 1e-5)
    assert trainer.network(inputs).shape == x.shape


def test_masked_image_batch_masks_patches_of_the_scaled_size_in_every_channel(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("masked_image", tmp_path, monkeypatch)
    # Chen et al.'s 16-voxel patches at 96^3, scaled to the plans' patch
    assert trainer.mim_config_for((SIZE, SIZE)).patch_size[-2:] == (5, 5)
    assert trainer.mim_config_for((64, 128, 128)).patch_size == (11, 21, 21)
    x = _images(BATCH, channels)
    inputs, (target, mask) = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(target, x) and mask.shape == (BATCH, 1, SIZE, SIZE) and mask.dtype == torch.bool
    full = mask.expand_as(x)
    assert torch.equal(inputs[~full], x[~full]) and not inputs[full].any()  # the masked voxels zero, the rest kept
    # 7 x 7 patches of 5 x 5 (the last row and column partial), round(0.75 * 49) = 37 of them masked per sample
    patches = mask[:, 0, ::5, ::5]
    assert patches.shape[1:] == (7, 7) and patches.sum((1, 2)).tolist() == [37] * BATCH
    output = trainer.network(inputs)
    assert output.shape == x.shape and float(trainer.loss(output.detach(), [target, mask])) > 0


def test_patch_swapping_batch_permutes_each_sample_and_keeps_its_intensities(tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer("patch_swapping", tmp_path, monkeypatch)
    x = _images(BATCH, channels)
    inputs, target = trainer.pretext_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(target, x) and inputs.shape == x.shape and not torch.equal(inputs, x)
    assert torch.equal(inputs.flatten(2).sort(2).values, x.flatten(2).sort(2).values)
    moved = (inputs != x).any(1)  # the same patches in both channels
    assert torch.equal((inputs[:, 0] != x[:, 0]), moved) and torch.equal((inputs[:, 1] != x[:, 1]), moved)
    assert trainer.network(inputs).shape == x.shape


@pytest.mark.parametrize("name", RESTORATIONS)
def test_restoration_pretexts_fit_a_3d_plain_conv_unet(name, tmp_path, monkeypatch):
    """Beside the multi-encoder of the tiny plans: 3D images and nnU-Net's PlainConvUNet with
    ``pretext_output_channels`` outputs, the loss of the pretext batch reaching every parameter it uses (without deep
    supervision the lower-resolution segmentation layers are unused)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    trainer, channels = _pretext_trainer(name, tmp_path, monkeypatch)
    network = PlainConvUNet(channels, 3, (8, 16, 32), nn.Conv3d, 3, (1, 2, 2), (1, 1, 1),
                            trainer.pretext_output_channels(channels), (1, 1), conv_bias=True,
                            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                            nonlin=nn.LeakyReLU, deep_supervision=False)  # nnU-Net's 3d_fullres plans, 3 stages
    x = F.avg_pool3d(torch.randn(BATCH, channels, 16, 32, 32, generator=torch.Generator().manual_seed(0)), 3, 1, 1)
    inputs, target = trainer.pretext_batch(x, torch.Generator().manual_seed(1))
    assert inputs.shape == x.shape and not torch.equal(inputs, x)
    loss = trainer.loss(network(inputs), target)
    loss.backward()
    last = f"decoder.seg_layers.{len(network.decoder.seg_layers) - 1}."
    used = {n: p for n, p in network.named_parameters() if not n.startswith("decoder.seg_layers.") or
            n.startswith(last)}
    assert torch.isfinite(loss) and len(used) > 10 and all(p.grad is not None for p in used.values())


@pytest.mark.parametrize("name", list(PRETEXTS))
def test_train_steps_reduce_the_loss_of_a_fixed_batch(name, tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer(name, tmp_path, monkeypatch)
    x = _images(BATCH, channels)
    before = _validation_losses(trainer, [x])
    trainer.network.train()
    for _ in range(15):
        trainer.train_step(_batch(x))
    after = _validation_losses(trainer, [x])
    assert after[0] < before[0], (before, after)


@pytest.mark.parametrize("name", list(PRETEXTS))
def test_validation_epoch_writes_the_pretexts_metrics(name, tmp_path, monkeypatch):
    trainer, channels = _pretext_trainer(name, tmp_path, monkeypatch)
    batches = [_images(BATCH, channels, seed=s) for s in (1, 2)]
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        trainer.on_validation_epoch_end([trainer.validation_step(_batch(b)) for b in batches])
    record = json.loads((Path(trainer.output_folder) / PRETEXT_METRICS_FILE).read_text())
    assert record["trainer"] == type(trainer).__name__ and [m["name"] for m in record["metrics"]] == PRETEXTS[name][2]
    assert all(m["value"] == m["value"] and m["baseline"] == m["baseline"] for m in record["metrics"])  # not NaN
    dice = trainer.logger.get_value("dice_per_class_or_region", step=0)
    assert len(dice) == (trainer.vf_config.k if name == "volume_fusion" else 1)
    trainer.perform_actual_validation()
    assert sorted(p.name for p in Path(trainer.output_folder).iterdir() if not p.name.startswith("training_log")) == \
        [PRETEXT_METRICS_FILE]
