"""Which pretraining checkpoint a fine-tuning run of a dataset takes when ``-pretrained_weights`` is not given.

``nnUNetv2_train DATASET CONFIG FOLD -tr nnUNetTrainerMultiEncoderSSL -p PLANS`` looks, in this order, for

1. ``-pretrained_weights FILE`` (nnU-Net's flag: always wins, handled before this module is asked);
2. a checkpoint recorded for (dataset, plans, configuration) with ``nnunetv2_ext weights use DATASET FILE -p PLANS
   -c CONFIG``, kept in ``$nnUNet_results/<Dataset>/nnunetv2_ext_pretraining.json`` (nnU-Net's plans stay nnU-Net's);
3. by convention, the ``checkpoint_final.pth`` of a pretext-trainer run of that same dataset, plans and configuration:
   ``$nnUNet_results/<Dataset>/<Trainer>__<PLANS>__<CONFIG>/fold_<f>/checkpoint_final.pth``, i.e. stage 2 of the
   two-stage pretraining (Taheri Otaghsara et al. 2025 sec. 4.3). A trainer is a pretext trainer if this package
   exports a trainer of that name (``nnunetv2_ext.training.exported_trainers``) that subclasses
   ``PretextTrainerBase``; folders of other or unknown trainers are never taken.

Exactly one candidate is taken; none or several is a refusal that says what to run or how to choose. The lookup
only reads the file system and is deterministic (sorted), so every DDP rank takes the same file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Set, Union

from nnunetv2_ext.io_utils import atomic_write_json

RECORD_FILE = "nnunetv2_ext_pretraining.json"
CHECKPOINT = "checkpoint_final.pth"
RECORD_COMMAND = "nnunetv2_ext weights use"
PathLike = Union[str, os.PathLike]


class FoundCheckpoint(NamedTuple):
    path: Path
    found_by: str  # "by record" or "by convention"
    detail: str    # where the record is, or which run it is

    def describe(self) -> str:
        return f"Pretrained weights found {self.found_by}: {self.path} ({self.detail})"


def _key(plans_name: str, configuration: str) -> str:
    return f"{plans_name}__{configuration}"  # nnU-Net's own <plans>__<configuration> naming


def record_file(results_dir: PathLike, dataset_name: str) -> Path:
    return Path(results_dir) / dataset_name / RECORD_FILE


def pretext_trainer_names() -> Set[str]:
    """Names of the pretext trainers of this package: the trainers its training modules export (the names nnU-Net
    resolves through the discovery shim) that subclass ``PretextTrainerBase``, with their ``_debug``, proxy-schedule
    and backbone variants. Classes of other packages are left out, so the answer does not depend on what else a
    process happened to import. The trainer modules are imported on the first call, not with this module."""
    from nnunetv2_ext.training import exported_trainers
    from nnunetv2_ext.training.pretext_base import PretextTrainerBase

    return {name for name, cls in exported_trainers().items() if issubclass(cls, PretextTrainerBase)}


def is_pretext_trainer(trainer_name: str) -> bool:
    """Whether ``trainer_name`` names one of this package's pretext trainers (``pretext_trainer_names``)."""
    return trainer_name in pretext_trainer_names()


def find_pretraining_checkpoints(results_dir: PathLike, dataset_name: str, plans_name: str,
                                 configuration: str) -> List[Path]:
    """``checkpoint_final.pth`` of every pretext-trainer run of ``dataset_name`` with these plans and configuration
    (any fold), sorted. Convention only: the record of ``nnunetv2_ext weights use`` is not consulted."""
    dataset_folder = Path(results_dir) / dataset_name
    if not dataset_folder.is_dir():
        return []
    suffix = f"__{_key(plans_name, configuration)}"
    pretext = pretext_trainer_names()
    found = []
    for run in sorted(dataset_folder.iterdir()):
        if run.is_dir() and run.name.endswith(suffix) and run.name[:-len(suffix)] in pretext:
            found += [f for f in sorted(run.glob(f"fold_*/{CHECKPOINT}")) if f.is_file()]
    return found


def _read_records(path: Path) -> Dict[str, str]:
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): fix or delete it, then record the checkpoint again with "
                         f"`{RECORD_COMMAND}`") from None
    if not isinstance(records, dict) or not all(isinstance(v, str) for v in records.values()):
        raise ValueError(f"{path} should map '<plans>__<configuration>' to a checkpoint path, it holds {records!r}: "
                         f"fix or delete it, then record the checkpoint again with `{RECORD_COMMAND}`")
    return records


def recorded_checkpoint(results_dir: PathLike, dataset_name: str, plans_name: str,
                        configuration: str) -> Optional[Path]:
    """The checkpoint recorded for (dataset, plans, configuration), or None if none is.

    Raises:
        FileNotFoundError: a checkpoint is recorded but is no longer a file.
    """
    path = record_file(results_dir, dataset_name)
    recorded = _read_records(path).get(_key(plans_name, configuration))
    if recorded is None:
        return None
    if not Path(recorded).is_file():
        raise FileNotFoundError(
            f"{path} records {recorded} as the pretrained weights of {dataset_name} (plans {plans_name}, "
            f"configuration {configuration}), but that file does not exist: record another one with "
            f"`{RECORD_COMMAND} {dataset_name} FILE -p {plans_name} -c {configuration} --overwrite`, or pass "
            f"-pretrained_weights FILE to nnUNetv2_train")
    return Path(recorded)


def record_pretraining_checkpoint(results_dir: PathLike, dataset_name: str, plans_name: str, configuration: str,
                                  checkpoint: PathLike, overwrite: bool = False) -> Path:
    """Record ``checkpoint`` as the pretrained weights of (dataset, plans, configuration); return the record file.

    Raises:
        FileNotFoundError: ``checkpoint`` is not a readable file.
        FileExistsError: another checkpoint is recorded for that key and ``overwrite`` is False.
    """
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file() or not os.access(checkpoint, os.R_OK):
        raise FileNotFoundError(f"{checkpoint} is not a readable file: give the checkpoint_final.pth of a "
                                f"pretraining run (or any weights file -pretrained_weights accepts)")
    path = record_file(results_dir, dataset_name)
    records = _read_records(path)
    key = _key(plans_name, configuration)
    previous = records.get(key)
    if previous is not None and previous != str(checkpoint) and not overwrite:
        raise FileExistsError(f"{path} already records {previous} for {dataset_name} (plans {plans_name}, "
                              f"configuration {configuration}); pass --overwrite to record {checkpoint} instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json({**records, key: str(checkpoint)}, path, overwrite=True)


def resolve_pretraining_checkpoint(results_dir: PathLike, dataset_name: str, plans_name: str, configuration: str,
                                   fine_tune_command: str) -> FoundCheckpoint:
    """The one checkpoint to fine-tune from: the recorded one, else the only pretext run found by convention.

    Args:
        fine_tune_command: the ``nnUNetv2_train`` command being run, repeated in the refusals.

    Raises:
        FileNotFoundError: nothing recorded and no pretext run found (the message gives the commands to run), or
            the recorded file is gone.
        ValueError: nothing recorded and several pretext runs found (the message lists them and how to choose).
    """
    recorded = recorded_checkpoint(results_dir, dataset_name, plans_name, configuration)
    if recorded is not None:
        return FoundCheckpoint(recorded, "by record", f"recorded in {record_file(results_dir, dataset_name)}")
    found = find_pretraining_checkpoints(results_dir, dataset_name, plans_name, configuration)
    where = f"{dataset_name} with plans {plans_name}, configuration {configuration}"
    if len(found) == 1:
        run = found[0].parent
        return FoundCheckpoint(found[0], "by convention",
                               f"the only pretext-trainer run of {where}: {run.parent.name}, {run.name}")
    if not found:
        raise FileNotFoundError(
            f"No pretrained weights for {where}: no -pretrained_weights given, nothing recorded in "
            f"{record_file(results_dir, dataset_name)} and no pretext-trainer run in "
            f"{Path(results_dir) / dataset_name}. Either pretrain on this dataset's images, then run this command "
            f"again:\n"
            f"    nnUNetv2_train {dataset_name} {configuration} all -tr nnUNetTrainerVolumeFusion -p {plans_name}"
            f"  [-pretrained_weights <checkpoint_final.pth of a stage-1 run on another dataset>]\n"
            f"    {fine_tune_command}\n"
            f"or pass -pretrained_weights FILE to nnUNetv2_train (e.g. the checkpoint_final.pth of a pretraining run), "
            f"or use nnUNetTrainerMultiEncoder to train from scratch.")
    listed = "\n".join(f"    {f}" for f in found)
    raise ValueError(
        f"Several pretext-trainer runs of {where} could provide the pretrained weights:\n{listed}\n"
        f"Choose one: pass -pretrained_weights FILE to nnUNetv2_train, or record it once with\n"
        f"    {RECORD_COMMAND} {dataset_name} FILE -p {plans_name} -c {configuration}\n"
        f"and run this command again.")
