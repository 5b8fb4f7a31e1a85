"""Each self-supervised pretext learns (issue 16, section 1): a few hundred steps on tiny structured 2D data beat the
pretext's trivial baseline, with the trainer's own network builder, loss, optimiser, ``train_step``,
``validation_step`` and ``on_validation_epoch_end`` (which writes ``pretext_metrics.json``).

Each test instantiates the real trainer class on tiny plans (a 3-stage 2D ``MultiEncoderUNet``, 32x32 patches),
runs ``trainer.initialize()`` (network, ``configure_optimizers``, loss exactly as in ``nnUNetv2_train``) and then
nnU-Net's epoch loop by hand on in-memory batches, so the optimiser trained with is the one the trainer declares.
nnU-Net's SGD (lr 1e-2, momentum 0.99, Nesterov), which collapses Volume Fusion to "all background" on real 3D
patches, does not collapse on these tiny images (fusion-level Dice about 0.25 against 0.12 in the same budget), so
the Volume Fusion optimiser is pinned by ``test_volume_fusion_uses_the_mis_fm_optimiser`` instead of by a failing run.

The images are a few smooth blobs plus an oriented band (a canonical "up", as anatomy has, without which a rotation
could not be told), z-scored per channel like nnU-Net's preprocessing; one channel is a fixed local function of the
others, so cross-modality prediction has something to learn.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training.cross_modality import nnUNetTrainerCrossModality
from nnunetv2_ext.training.masked_image import nnUNetTrainerMaskedImage
from nnunetv2_ext.training.model_genesis import nnUNetTrainerModelGenesis
from nnunetv2_ext.training.patch_swapping import nnUNetTrainerPatchSwapping
from nnunetv2_ext.training.pretext_metrics import PRETEXT_METRICS_FILE
from nnunetv2_ext.training.swin_proxies import nnUNetTrainerSwinProxies
from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion
from tests.training.conftest import SEED, SIZE, tiny_trainer


def _images(n: int, channels: int, generator: torch.Generator, texture: bool = True) -> torch.Tensor:
    """``n`` images (n, channels, 32, 32): 3 gaussian blobs and a bright band in the upper third (jittered); channel
    c > 0 weighs the blobs differently, and with 3 channels the last is ``relu(ch0 - ch1) + 0.5 ch1`` (a local
    function of the first two). Each channel z-scored per image."""
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    centres = 4 + rand(n, 3, 2) * (SIZE - 8)
    sigmas = 2 + rand(n, 3, 1, 1) * 3
    blobs = torch.exp(-((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2)
                      / (2 * sigmas ** 2))  # (n, 3, H, W)
    band_row = 5 + rand(n, 1, 1) * 4
    band = torch.exp(-(yy - band_row) ** 2 / 8) * (0.6 + 0.4 * torch.sigmoid((xx - SIZE / 2) / 4))
    # a smooth texture of random orientation and frequency per image: the boxes of one image fused into another show
    angle, freq, phase = rand(n, 1, 1) * math.pi, 0.3 + rand(n, 1, 1) * 0.5, rand(n, 1, 1) * 2 * math.pi
    texture = (0.3 if texture else 0.0) * torch.sin(freq * (torch.cos(angle) * xx + torch.sin(angle) * yy) + phase)
    weights = 0.5 + rand(n, 2, 3)
    first_two = [(weights[:, c, :, None, None] * blobs).sum(1) + band + texture for c in range(2)]
    first_two[1] = first_two[1] - 0.5 * band
    chans = first_two[:channels]
    if channels == 3:
        chans.append(torch.relu(chans[0] - chans[1]) + 0.5 * chans[1])
    x = torch.stack(chans, 1)
    x = x + 0.02 * torch.randn(x.shape, generator=generator)
    mean, std = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    return (x - mean) / std


def _train(trainer: nnUNetTrainer, channels: int, epochs: int, iterations: int, val_batches: int = 2,
           texture: bool = True) -> dict:
    """nnU-Net's epoch loop on in-memory batches: train ``iterations`` steps per epoch, validate every epoch on the
    same ``val_batches`` batches (held-out images); returns the final ``pretext_metrics.json``."""
    generator = torch.Generator().manual_seed(SEED)
    pool = _images(64, channels, generator, texture)
    val = _images(val_batches * trainer.batch_size, channels, generator, texture).split(trainer.batch_size)

    def batch(x):
        return {"data": x, "target": torch.zeros((x.shape[0], 1, *x.shape[2:])), "keys": [""] * x.shape[0]}

    for epoch in range(epochs):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()  # lr_scheduler.step(epoch)
        picks = torch.randint(0, len(pool), (iterations, trainer.batch_size), generator=generator)
        trainer.on_train_epoch_end([trainer.train_step(batch(pool[p])) for p in picks])
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            trainer.on_validation_epoch_end([trainer.validation_step(batch(v)) for v in val])
    return json.loads((Path(trainer.output_folder) / PRETEXT_METRICS_FILE).read_text())


pytestmark = pytest.mark.usefixtures("single_thread")


def _metric(record: dict, name: str) -> dict:
    return next(m for m in record["metrics"] if m["name"] == name)


# ---------------------------------------------------------------------------------------------------------------------
# the trainers' declared optimisers


def test_volume_fusion_uses_the_mis_fm_optimiser(tmp_path, monkeypatch):
    trainer = tiny_trainer(nnUNetTrainerVolumeFusion, {"0": "T1", "1": "FLAIR"}, 2, tmp_path, monkeypatch)
    assert type(trainer.optimizer) is torch.optim.Adam
    group = trainer.optimizer.param_groups[0]
    assert (trainer.initial_lr, group["weight_decay"]) == (1e-3, 1e-5)
    # 20000 iterations / 250 per epoch = 80 epochs per halving; step(epoch) as nnU-Net (and --c) call it
    halving = nnUNetTrainerVolumeFusion.lr_halving_iterations / trainer.num_iterations_per_epoch
    assert halving == 80
    for epoch, lr in ((0, 1e-3), (79, 1e-3), (80, 5e-4), (159, 5e-4), (160, 2.5e-4), (405, 1e-3 / 32)):
        trainer.lr_scheduler.step(epoch)
        assert group["lr"] == pytest.approx(lr), epoch


@pytest.mark.parametrize("cls", [nnUNetTrainerModelGenesis, nnUNetTrainerPatchSwapping])
def test_models_genesis_and_patch_swapping_use_mis_fms_baseline_optimiser(cls, tmp_path, monkeypatch):
    """MIS-FM's Adam for its baselines (Wang et al. 2023; the authors' PyMIC configurations), as Volume Fusion's."""
    trainer = tiny_trainer(cls, {"0": "T1", "1": "FLAIR"}, 2, tmp_path, monkeypatch)
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer) is torch.optim.Adam and (group["lr"], group["weight_decay"]) == (1e-3, 1e-5)
    for epoch, lr in ((0, 1e-3), (79, 1e-3), (80, 5e-4), (160, 2.5e-4)):
        trainer.lr_scheduler.step(epoch)
        assert group["lr"] == pytest.approx(lr), epoch


def test_masked_image_uses_the_optimiser_of_chen_et_al(tmp_path, monkeypatch):
    trainer = tiny_trainer(nnUNetTrainerMaskedImage, {"0": "T1", "1": "FLAIR"}, 2, tmp_path, monkeypatch)
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer) is torch.optim.AdamW and (group["lr"], group["weight_decay"]) == (3e-4, 1e-5)
    for epoch in (0, 1, 500, 999):  # a constant lr
        trainer.lr_scheduler.step(epoch)
        assert group["lr"] == 3e-4, epoch


# ---------------------------------------------------------------------------------------------------------------------
# learnability


# a stated budget per pretext (nnU-Net epochs x iterations of batch 4), each well under 20 s on one CPU core
VF_EPOCHS, VF_ITERATIONS = 8, 50
SWIN_EPOCHS, SWIN_ITERATIONS = 8, 50
CM_EPOCHS, CM_ITERATIONS = 6, 50
MG_EPOCHS, MG_ITERATIONS = 8, 50
MIM_EPOCHS, MIM_ITERATIONS = 8, 50
PS_EPOCHS, PS_ITERATIONS = 14, 50  # the U-Net learns the identity first: it beats it after about 500 steps
ENTRY_KEYS = {"name", "value", "baseline", "baseline_name", "higher_is_better", "learned"}


def test_volume_fusion_learns(tmp_path, monkeypatch):
    trainer = tiny_trainer(nnUNetTrainerVolumeFusion, {"0": "T1", "1": "FLAIR"}, 4, tmp_path, monkeypatch)
    record = _train(trainer, channels=2, epochs=VF_EPOCHS, iterations=VF_ITERATIONS)
    assert record["trainer"] == "nnUNetTrainerVolumeFusion" and record["epoch"] == VF_EPOCHS - 1
    assert [h["epoch"] for h in record["history"]] == list(range(VF_EPOCHS))
    assert all(set(m) == ENTRY_KEYS for h in record["history"] for m in h["metrics"])
    dice = _metric(record, "fusion-level Dice")
    # measured: 0.27 against 0.12 for the best constant predictor
    assert dice["learned"] and dice["value"] > dice["baseline"] + 0.1, dice
    # the metric is nnU-Net's pseudo-Dice (mean over the K levels), as progress.png shows it
    assert trainer.logger.get_value("mean_fg_dice", step=trainer.current_epoch) == pytest.approx(dice["value"])
    log = Path(trainer.log_file).read_text()
    assert f"pretext metric: fusion-level Dice {dice['value']:.4f} (constant predictor {dice['baseline']:.4f}): " \
           f"learned" in log


def test_swin_proxies_learn(tmp_path, monkeypatch):
    trainer = tiny_trainer(nnUNetTrainerSwinProxies, {"0": "T1", "1": "FLAIR"}, 4, tmp_path, monkeypatch)
    record = _train(trainer, channels=2, epochs=SWIN_EPOCHS, iterations=SWIN_ITERATIONS)
    rotation, l1 = _metric(record, "rotation accuracy"), _metric(record, "reconstruction L1")
    # measured: 1.0 after 400 steps (0.8 after 250)
    assert rotation["baseline"] == 0.25 and rotation["learned"] and rotation["value"] >= 0.75, rotation
    assert trainer.logger.get_value("mean_fg_dice", step=trainer.current_epoch) == pytest.approx(rotation["value"])
    # the reconstruction must also copy every unmasked voxel to beat the identity (which is exact there): in this
    # budget its L1 falls from 1.04 to 0.38 against the identity's 0.16 (0.24 from another initialisation; it crosses
    # the identity after ~700 steps on untextured images), so only its descent is checked here
    first = _metric(record["history"][0], "reconstruction L1")
    assert not l1["higher_is_better"] and l1["baseline"] == pytest.approx(first["baseline"])
    assert l1["value"] < 0.5 * first["value"], (first, l1)


def test_cross_modality_learns(tmp_path, monkeypatch):
    trainer = tiny_trainer(nnUNetTrainerCrossModality, {"0": "T1", "1": "T1Gd", "2": "FLAIR"}, 4, tmp_path, monkeypatch)
    record = _train(trainer, channels=3, epochs=CM_EPOCHS, iterations=CM_ITERATIONS)
    value = _metric(record, "PSNR (dB)")
    # measured: 22.9 dB against 13.2 dB for each target's own mean intensity
    assert value["learned"] and value["value"] > value["baseline"] + 3, value


@pytest.mark.parametrize("cls, epochs, iterations, metric, baseline_name, ratio", [
    # measured: MSE 0.68 against 1.00 for each image's own mean (the identity: 2.76, out-painting noise)
    (nnUNetTrainerModelGenesis, MG_EPOCHS, MG_ITERATIONS, "restoration MSE", "target mean", 0.8),
    # measured: masked L1 0.65 against 0.80 for the zero fill (identity)
    (nnUNetTrainerMaskedImage, MIM_EPOCHS, MIM_ITERATIONS, "masked L1", "identity", 0.9),
    # measured: MSE 0.066 against 0.114 for the identity
    (nnUNetTrainerPatchSwapping, PS_EPOCHS, PS_ITERATIONS, "restoration MSE", "identity", 0.8),
], ids=["model_genesis", "masked_image", "patch_swapping"])
def test_restoration_pretexts_learn(cls, epochs, iterations, metric, baseline_name, ratio, tmp_path, monkeypatch):
    trainer = tiny_trainer(cls, {"0": "T1", "1": "FLAIR"}, 4, tmp_path, monkeypatch)
    record = _train(trainer, channels=2, epochs=epochs, iterations=iterations)
    assert record["trainer"] == cls.__name__ and [h["epoch"] for h in record["history"]] == list(range(epochs))
    value = _metric(record, metric)
    assert value["baseline_name"] == baseline_name and not value["higher_is_better"]
    assert value["learned"] and value["value"] < ratio * value["baseline"], value
    # nnU-Net's "pseudo dice" (progress.png, the "best" checkpoint): the share of the baseline's error removed
    assert trainer.logger.get_value("mean_fg_dice", step=trainer.current_epoch) == pytest.approx(
        1 - value["value"] / value["baseline"])


def test_resumed_run_keeps_the_history_before_its_epoch(tmp_path, monkeypatch):
    from nnunetv2_ext.training.pretext_metrics import pretext_metric, report_pretext_metrics

    trainer = tiny_trainer(nnUNetTrainerCrossModality, {"0": "T1", "1": "T1Gd", "2": "FLAIR"}, 2, tmp_path, monkeypatch)
    path = Path(trainer.output_folder) / PRETEXT_METRICS_FILE
    for epoch in range(3):
        trainer.current_epoch = epoch
        report_pretext_metrics(trainer, [pretext_metric("PSNR (dB)", 10 + epoch, 11, "mean", True)])
    trainer.current_epoch = 2  # --c from a checkpoint of epoch 2: epoch 2 is run again
    report_pretext_metrics(trainer, [pretext_metric("PSNR (dB)", 20, 11, "mean", True)])
    record = json.loads(path.read_text())
    assert [(h["epoch"], h["metrics"][0]["value"]) for h in record["history"]] == [(0, 10), (1, 11), (2, 20)]
    assert [h["metrics"][0]["learned"] for h in record["history"]] == [False, False, True]  # 11 vs 11: not better
    trainer.current_epoch = 0  # a new run in the same folder (NNUNETV2_EXT_OVERWRITE=1) starts a new history
    report_pretext_metrics(trainer, [pretext_metric("PSNR (dB)", 5, 11, "mean", True)])
    assert len(json.loads(path.read_text())["history"]) == 1


def test_a_checkpoint_is_checked_for_a_learned_pretext(tmp_path):
    import json

    from nnunetv2_ext.training.pretext_metrics import checkpoint_pretext_check, pretext_metric

    checkpoint = tmp_path / "checkpoint_final.pth"
    assert checkpoint_pretext_check(checkpoint) is None  # not a pretext run
    metrics = [pretext_metric("rotation accuracy", 0.6, 0.25, "chance", True),
               pretext_metric("reconstruction L1", 0.3, 0.1, "identity", False)]
    (tmp_path / "pretext_metrics.json").write_text(json.dumps({"trainer": "T", "epoch": 9, "metrics": metrics}))
    text = checkpoint_pretext_check(checkpoint)
    assert text.startswith("T at epoch 9: pretext metrics: rotation accuracy 0.6000 (chance 0.2500): learned")
    assert "WARNING: this checkpoint's pretext did not beat its trivial baseline on reconstruction L1" in text


# ---------------------------------------------------------------------------------------------------------------------
# learnability of the pure-function restoration pretexts without their trainers: Models Genesis, masked image
# modelling and patch swapping. A 2-layer convolutional net (3x3, 32 features, LeakyReLU) with a residual connection
# whose last convolution starts at zero, so that training starts from the identity, is trained with Adam (lr 3e-3) for
# RESTORE_STEPS steps of batch 8 on the 2-channel images above; its restoration metric on 16 held-out images,
# corrupted with a fixed seed, must fall below the pretext's trivial baseline. About 1 s each on one CPU core.

RESTORE_STEPS, RESTORE_BATCH = 150, 8


def _restoration_net(channels: int) -> torch.nn.Module:
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(channels, 32, 3, padding=1), torch.nn.LeakyReLU(),
                                            torch.nn.Conv2d(32, channels, 3, padding=1))
            torch.nn.init.zeros_(self.body[-1].weight)
            torch.nn.init.zeros_(self.body[-1].bias)

        def forward(self, x):
            return x + self.body(x)

    return Residual()


def _train_restoration(corrupt, loss, channels: int = 2):
    """Train :func:`_restoration_net` on ``corrupt(images, generator) -> (inputs, targets, mask)`` with
    ``loss(prediction, targets, mask)``; returns the held-out ``(prediction, inputs, targets, mask)``."""
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    pool = _images(64, channels, generator)
    val_inputs, val_targets, val_mask = corrupt(_images(16, channels, generator), torch.Generator().manual_seed(1))
    net = _restoration_net(channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(RESTORE_STEPS):
        inputs, targets, mask = corrupt(pool[torch.randint(0, len(pool), (RESTORE_BATCH,), generator=generator)],
                                        generator)
        optimiser.zero_grad()
        loss(net(inputs), targets, mask).backward()
        optimiser.step()
    with torch.no_grad():
        return net(val_inputs), val_inputs, val_targets, val_mask


def test_models_genesis_learns():
    from nnunetv2_ext.pretext.model_genesis import ModelsGenesisConfig, identity_mse, models_genesis, restoration_mse

    cfg = ModelsGenesisConfig()
    prediction, inputs, targets, _ = _train_restoration(lambda x, g: models_genesis(x, cfg, g),
                                                        lambda p, t, m: restoration_mse(p, t))
    value, baseline = float(restoration_mse(prediction, targets)), float(identity_mse(inputs, targets))
    # measured: MSE 0.98 against 4.78 for the identity (the out-painting noise is the bulk of it)
    assert value < 0.5 * baseline, (value, baseline)


def test_masked_image_modelling_learns():
    from nnunetv2_ext.pretext.masked_image import MaskedImageConfig, mask_patches, masked_l1, trivial_baseline

    cfg = MaskedImageConfig(patch_size=(4, 4, 4))  # 64 patches on the 32 x 32 images, 48 of them masked
    prediction, inputs, targets, mask = _train_restoration(lambda x, g: mask_patches(x, cfg, g), masked_l1)
    value = float(masked_l1(prediction, targets, mask))
    baseline, name = trivial_baseline(inputs, targets, mask)
    # measured: masked L1 0.61 against 0.79 for the stronger of identity (zero fill) and visible mean
    assert value < 0.9 * float(baseline), (value, float(baseline), name)


def test_patch_swapping_learns():
    from nnunetv2_ext.pretext.patch_swapping import PatchSwappingConfig, identity_mse, restoration_mse, swap_patches

    cfg = PatchSwappingConfig()  # 4 x 4 patches on the 32 x 32 images, 1 .. 3 swaps
    prediction, inputs, targets, _ = _train_restoration(lambda x, g: swap_patches(x, cfg, g),
                                                        lambda p, t, m: restoration_mse(p, t))
    value, baseline = float(restoration_mse(prediction, targets)), float(identity_mse(inputs, targets))
    # measured: MSE 0.062 against 0.135 for the identity
    assert value < 0.75 * baseline, (value, baseline)
