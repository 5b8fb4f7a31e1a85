"""What a checkpoint holds and, given a target network, what would load where: ``nnunetv2_ext weights inspect FILE``.

``inspect_weights`` reads the file exactly as training would (:func:`~nnunetv2_ext.transfer.formats.read_weights`:
the format table's detection and reader, ``weights_only`` loading, key mapping, axis permutation) and, with a
target, runs the transfer as a dry run (:func:`~nnunetv2_ext.transfer.transfer.transfer_weights` is pure: nothing is
loaded into the target).

``build_target_network`` builds the network a training would build from a preprocessed dataset, its plans and a
trainer, through nnU-Net's own ``PlansManager`` and the trainer's ``build_network_architecture``. The trainer is
found by name with ``recursive_find_trainer_class_by_name``: nnU-Net's trainers always, this package's only when
``nnUNet_extTrainer`` lists its trainer folder::

    export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Sequence, cast

from torch import nn

from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.transfer.axes import AXIS_ORDERS
from nnunetv2_ext.transfer.checkpoint import ExternalWeights
from nnunetv2_ext.transfer.formats import input_projection, read_weights, swin_prefix_of
from nnunetv2_ext.transfer.report import with_source_notes
from nnunetv2_ext.transfer.transfer import transfer_weights


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else str(n)


def describe_weights(weights: ExternalWeights) -> str:
    """Human-readable summary of what :func:`read_weights` returned (no target)."""
    state = weights.state
    n_values = sum(v.numel() for v in state.values())
    lines = [f"file: {weights.path}", f"format: {weights.format}"]
    if weights.network_class or weights.trainer_name:
        lines.append(f"network: {weights.network_class or '-'}; trainer: {weights.trainer_name or '-'}")
    lines.append(f"tensors: {len(state)} offered to the transfer ({_count(n_values)} values)"
                 + (f"; {len(weights.dropped_keys)} not offered" if weights.dropped_keys else ""))
    proj = input_projection(weights)
    if proj is None:
        lines.append("input channels: unknown (no convolution or patch embedding found)")
    else:
        shape = "x".join(str(s) for s in state[proj].shape)
        if weights.encoder_groups:
            groups = "; ".join(",".join(map(str, g)) for g in weights.encoder_groups)
            lines.append(f"input channels: {sum(len(g) for g in weights.encoder_groups)} in "
                         f"{len(weights.encoder_groups)} encoders [{groups}] (first: {proj} {shape})")
        else:
            lines.append(f"input channels: {int(state[proj].shape[1])} ({proj} {shape})")
    lines.append(f"modalities: {', '.join(weights.modality_names) if weights.modality_names else 'unknown'}")
    order = f"{weights.axis_order} {AXIS_ORDERS.get(weights.axis_order, '')}".strip()
    lines.append(f"axis order: {order}" + (f" ({len(weights.permuted_keys)} tensors permuted)"
                                           if weights.permuted_keys else ""))
    lines.append(f"encoder only: {'yes' if weights.encoder_only else 'no'}")
    if weights.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in weights.notes]
    return "\n".join(lines)


def inspect_weights(path: str | os.PathLike, format: Optional[str] = None, target: Optional[nn.Module] = None,
                    target_modalities: Optional[Sequence[str]] = None, modality_names: Optional[Sequence[str]] = None,
                    *, encoder_only: Optional[bool] = None, to_axis_order: Optional[str] = "nnunet",
                    new_modality_init: str = "kaiming") -> str:
    """Describe a checkpoint: format, tensors, input channels and modalities, notes; with ``target``, the transfer
    report of a dry run into it (loaded / adapted / new / ignored per tensor, with shapes).

    Args:
        path: the checkpoint.
        format: force a format (:data:`~nnunetv2_ext.transfer.formats.FORMATS`); None detects it.
        target: a freshly built network (e.g. from :func:`build_target_network`); left unchanged.
        target_modalities: a name per target input channel (default ``target.modality_names``).
        modality_names: names of the pretrained channels where the file does not say.
        encoder_only, to_axis_order: as :func:`read_weights`.
        new_modality_init: as :func:`transfer_weights`.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_weights` (unknown format, pickled payload refused) and
            :func:`transfer_weights` (no tensor matches the target).
    """
    prefix = swin_prefix_of(target) if target is not None else None
    weights = read_weights(path, format=format, modality_names=modality_names, encoder_only=encoder_only,
                           to_axis_order=to_axis_order, swin_prefix=prefix)
    text = describe_weights(weights)
    if target is None:
        return text + "\n"
    _, report = transfer_weights(weights, target, target_modalities=target_modalities,
                                 new_modality_init=new_modality_init)
    report = with_source_notes(report, weights)
    return f"{text}\n\ndry run into {type(target).__name__} (nothing is loaded):\n{report.summary()}"


# ----------------------------------------------------------------------------------------------------------------------
# the target a training would build


def _preprocessed_folder(dataset: str | int | os.PathLike) -> Path:
    folder = Path(dataset) if isinstance(dataset, (str, os.PathLike)) else None
    if folder is not None and folder.is_dir():
        return folder
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed.is_set():
        raise ValueError(f"dataset {dataset!r} is not a folder and nnUNet_preprocessed is not set: pass the "
                         f"preprocessed dataset folder, or export nnUNet_preprocessed=<folder>")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise ValueError(f"dataset {dataset!r} not found under nnUNet_preprocessed={nnUNet_preprocessed.get()}: "
                         f"{e}") from None
    folder = Path(nnUNet_preprocessed.get()) / name
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return folder


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with open(path) as f:
        return json.load(f)


def dataset_modalities(dataset: str | int | os.PathLike) -> List[str]:
    """Channel names of a preprocessed dataset, in channel order (its ``dataset.json``)."""
    folder = _preprocessed_folder(dataset)
    return cast(List[str], channel_names(_load_json(folder / "dataset.json", "dataset.json")))  # required=True


def build_target_network(dataset: str | int | os.PathLike, plans: str | os.PathLike, configuration: str,
                         trainer_name: str) -> nn.Module:
    """The network ``nnUNetv2_train`` would build (freshly initialised), for a dry-run transfer.

    Args:
        dataset: preprocessed dataset folder, or a dataset name / id under ``nnUNet_preprocessed``.
        plans: plans identifier (``nnUNetPlans``: ``<dataset folder>/nnUNetPlans.json``) or a plans file.
        configuration: e.g. ``3d_fullres``.
        trainer_name: trainer class; this package's trainers need ``nnUNet_extTrainer`` set (module docstring).

    Built without deep supervision: the state-dict keys are the same either way (dynamic-network-architectures
    keeps its ``seg_layers``), and MONAI backbones refuse it.

    Raises:
        ValueError: dataset, configuration or trainer not found (with what to do).
        FileNotFoundError: plans file or dataset.json missing.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_ext.discovery import export_line, is_enabled

    folder = _preprocessed_folder(dataset)
    plans_path = Path(plans) if Path(plans).suffix == ".json" else folder / f"{plans}.json"
    plans_dict = _load_json(plans_path, "plans file")
    dataset_json = _load_json(folder / "dataset.json", "dataset.json")
    pm = PlansManager(plans_dict)
    if configuration not in pm.available_configurations:
        raise ValueError(f"configuration {configuration!r} not in {plans_path} (available: "
                         f"{', '.join(pm.available_configurations)})")
    cm = pm.get_configuration(configuration)
    try:
        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        hint = "" if is_enabled() else f"; for this package's trainers: {export_line()}"
        raise ValueError(f"trainer {trainer_name!r} not found{hint}") from None
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer.build_network_architecture(pm, cm, n_in, n_out, False)
    return network


def inspect_target(path: str | os.PathLike, dataset: str | int | os.PathLike, plans: str | os.PathLike,
                   configuration: str, trainer_name: str, format: Optional[str] = None, **kwargs) -> str:
    """:func:`inspect_weights` with the target a training of ``trainer_name`` on ``dataset`` would build, and the
    dataset's channel names as target modalities."""
    target = build_target_network(dataset, plans, configuration, trainer_name)
    return inspect_weights(path, format=format, target=target, target_modalities=dataset_modalities(dataset), **kwargs)
