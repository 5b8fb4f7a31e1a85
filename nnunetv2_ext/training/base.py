"""What every trainer of this package shares: hyper-parameters as class attributes, nnU-Net's optimiser built from
them, atomic checkpoints, the short schedule of the ``_debug`` variants and the CPU-sized ``_quickstart`` one."""
from __future__ import annotations

import os

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ext.training import pretrained
from nnunetv2_ext.training.pretext_metrics import checkpoint_pretext_check

OVERWRITE_ENV = "NNUNETV2_EXT_OVERWRITE"
# nnUNetTrainer.__init__ assigns these as instance attributes; a subclass sets them as class attributes instead
HYPERPARAMETERS = ("initial_lr", "weight_decay", "num_epochs", "num_iterations_per_epoch",
                   "num_val_iterations_per_epoch", "save_every", "oversample_foreground_percent",
                   "enable_deep_supervision")


class ExtTrainerBase(nnUNetTrainer):
    """Base of this package's trainers.

    - Hyper-parameters are class attributes (one-line variants, nnU-Net style): any of ``HYPERPARAMETERS`` defined
      on a subclass overrides nnUNetTrainer's default; so do ``momentum`` and ``poly_exponent``, which
      ``configure_optimizers`` (nnU-Net's SGD with Nesterov momentum and polynomial lr decay) reads.
    - Checkpoints are written to ``<name>.partial`` and renamed into place, so a crash or a full disk during the
      write never destroys the previous checkpoint (nnU-Net writes in place). Only rank 0 writes, as in nnU-Net.
    - Starting a run in a fold folder that already holds a checkpoint is refused unless continuing it (``--c``).
    - ``-pretrained_weights`` goes through ``nnunetv2_ext.transfer`` (encoders mapped by modality name, first
      convolutions adapted to new channel counts, segmentation heads fresh) and the report is printed and saved as
      ``transfer_report.json`` / ``.txt`` in the fold's output folder.
    """
    momentum = 0.99                # SGD momentum (nnU-Net's)
    poly_exponent = 0.9            # exponent of the polynomial lr decay (nnU-Net's)
    # new input channels: He init (Cox et al. 2024, BrainSegFounder, sec. 2.4.1), or "mean" of the pretrained ones
    new_modality_init = "kaiming"
    pretrained_format = None       # -pretrained_weights format: None detects it (nnunetv2_ext.transfer.formats)
    # what -pretrained_weights transfers (nnunetv2_ext.transfer.fresh_keys_for_scope): "all" (encoders and decoder,
    # the segmentation heads fresh) or "encoder"; the decoder's last stages or its normalisation can be kept fresh
    transfer_scope = "all"
    transfer_fresh_decoder_stages = 0
    transfer_reset_decoder_norm = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name in HYPERPARAMETERS:
            value = getattr(type(self), name, None)
            if value is not None:
                setattr(self, name, value)
        self.transfer_report = None
        self.resumed = False  # set when --c / --val loads a checkpoint of this run
        pretrained.install_hook()

    def initialize(self):
        if not self.was_initialized:
            super().initialize()
            pretrained.register(self.network, self)

    def configure_optimizers(self):
        """nnU-Net's optimiser and schedule (nnUNetTrainer.configure_optimizers) with ``momentum`` and
        ``poly_exponent`` read from the class: SGD with Nesterov momentum, polynomial decay over ``num_epochs``."""
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=self.momentum, nesterov=True)
        lr_scheduler = PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=self.poly_exponent)
        return optimizer, lr_scheduler

    def _plain_network(self) -> torch.nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return getattr(net, "_orig_mod", net)

    def load_pretrained_weights(self, fname: str):
        """Transfer ``fname`` into the network (any checkpoint of this package or nnU-Net) and save the report."""
        from nnunetv2_ext.dataset_json import channel_names
        from nnunetv2_ext.transfer import transfer_weights
        from nnunetv2_ext.transfer.formats import read_weights, swin_prefix_of
        from nnunetv2_ext.transfer.report import with_source_notes

        self._refuse_to_overwrite()  # before the report is written: a refused run leaves its fold folder as it was
        if not self.was_initialized:
            self.initialize()
        network = self._plain_network()
        # any known format (this package's / nnU-Net's, nnssl, MONAI Swin UNETR, BrainSegFounder), detected; set
        # pretrained_format to force one
        source = read_weights(fname, format=self.pretrained_format, swin_prefix=swin_prefix_of(network))
        state, report = transfer_weights(source, network, target_modalities=channel_names(self.dataset_json),
                                         new_modality_init=self.new_modality_init, scope=self.transfer_scope,
                                         fresh_decoder_stages=self.transfer_fresh_decoder_stages,
                                         reset_decoder_norm=self.transfer_reset_decoder_norm)
        report = with_source_notes(report, source)
        network.load_state_dict(state)
        self.transfer_report = report
        self.print_to_log_file(f"Pretrained weights from {fname}:\n{report.summary()}", add_timestamp=False)
        learned = checkpoint_pretext_check(fname)  # was the pretext learned? (pretext runs of this package)
        if learned is not None:
            self.print_to_log_file(learned)
        if self.local_rank == 0:
            report.save(self.output_folder)
        return report

    def save_checkpoint(self, filename: str) -> None:
        partial = filename + ".partial"
        try:
            super().save_checkpoint(partial)
        except BaseException:
            if self.local_rank == 0 and os.path.isfile(partial):
                os.remove(partial)  # the previous checkpoint is untouched
            raise
        if self.local_rank == 0 and os.path.isfile(partial):
            os.replace(partial, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.resumed = True

    def _refuse_to_overwrite(self) -> None:
        existing = [c for c in ("checkpoint_final.pth", "checkpoint_latest.pth")
                    if os.path.isfile(os.path.join(self.output_folder, c))]
        if existing and not self.resumed and os.environ.get(OVERWRITE_ENV) != "1":
            raise RuntimeError(f"{self.output_folder} already holds {', '.join(existing)}: pass --c to continue "
                               f"that run, delete the folder, or set {OVERWRITE_ENV}=1 to train over it")

    def on_train_start(self):
        """Refuse to train over a finished or interrupted run unless continuing it (--c), so that results are never
        silently overwritten (nnU-Net itself starts over). ``NNUNETV2_EXT_OVERWRITE=1`` allows it explicitly."""
        self._refuse_to_overwrite()
        super().on_train_start()


class NoMirroringMixin(nnUNetTrainer):
    """No mirroring augmentation and no test-time mirroring (as nnU-Net's nnUNetTrainerNoMirroring)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class SizedPlansMixin(nnUNetTrainer):
    """The planned configuration resized by ``nnunetv2_ext.planning.multi_encoder_plans.sized_configuration`` before
    nnU-Net builds anything from it: patch ``patch_size`` (topology re-derived as nnU-Net's planner would), widths
    ``base_features * 2**stage``, at most ``max_stages`` stages; ``None`` (the default) keeps the plans' value. The
    resized plans are what the model folder's ``plans.json`` holds, so ``nnUNetv2_predict`` rebuilds the same
    network. For U-Net plans (``features_per_stage``, ``n_stages``): the multi-encoder's and nnU-Net's own."""
    patch_size = None
    base_features = None
    max_stages = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if (self.patch_size, self.base_features, self.max_stages) != (None, None, None):
            import copy

            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            from nnunetv2_ext.planning.multi_encoder_plans import sized_configuration

            resolved = PlansManager(plans).get_configuration(configuration).configuration
            plans = copy.deepcopy(plans)
            plans["configurations"][configuration] = sized_configuration(
                resolved, self.patch_size, self.base_features, self.max_stages)
        super().__init__(plans, configuration, fold, dataset_json, device)


class DebugScheduleMixin(SizedPlansMixin, NoMirroringMixin):
    """The ``_debug`` variants' schedule: 3 epochs of 4 iterations, 2 validation iterations, a checkpoint every
    epoch, no mirroring (augmentation or test time): smoke tests, dry runs and CPU examples. Put it first:
    ``class nnUNetTrainerX_debug(DebugScheduleMixin, nnUNetTrainerX)``."""
    num_epochs = 3
    num_iterations_per_epoch = 4
    num_val_iterations_per_epoch = 2
    save_every = 1


class NarrowDebugScheduleMixin(DebugScheduleMixin):
    """The ``_debug`` schedule at widths 8, 16, 32, ... (the plans' patch and stages): the multi-encoder family's
    debug variants, whose four full-width encoders would make every smoke test 5x slower on a CPU."""
    base_features = 8


class QuickstartScheduleMixin(SizedPlansMixin, NoMirroringMixin):
    """A CPU-sized schedule and network, for the README's quickstart on a 2-core CPU: ``num_epochs`` x
    ``num_iterations_per_epoch`` steps at patch ``patch_size`` and widths ``base_features * 2**stage``
    (``SizedPlansMixin``). No mirroring (augmentation or test time). Put it first:
    ``class nnUNetTrainerX_quickstart(QuickstartScheduleMixin, nnUNetTrainerX)``. 500 steps at patch 32^3 and
    widths 8..64 on the quickstart's 16 example cases: the Dice this reaches is measured by
    ``benchmarks/quickstart_check.py`` (records in ``benchmarks/quickstart.json``, quoted in the README)."""
    num_epochs = 20
    num_iterations_per_epoch = 25
    num_val_iterations_per_epoch = 2
    save_every = 5
    patch_size = (32, 32, 32)
    base_features = 8
