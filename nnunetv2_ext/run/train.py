"""``nnUNetv2_train`` under torchrun: data-parallel nnU-Net training on one or many nodes, any trainer.

    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \\
        -m nnunetv2_ext.run.train 901 3d_fullres all -tr nnUNetTrainerVolumeFusion -p nnUNetPlans_MultiEncoder

(``nnunetv2_ext_train`` is the same as a console script.) The arguments are ``nnUNetv2_train``'s, parsed by
nnU-Net's own parser (``nnunetv2.run.run_training.run_training_entry``, whose call of ``run_training`` is routed
here). Without torchrun's environment, or with ``WORLD_SIZE=1``, it is exactly ``nnUNetv2_train``.

Under torchrun each worker reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, joins the process group through
``env://`` (the rendezvous torchrun set up; NCCL on ``-device cuda``, Gloo on ``-device cpu``), works on
``cuda:LOCAL_RANK``, and then does what a worker of nnU-Net's ``-num_gpus`` does (``run_ddp``, with nnU-Net's own
``get_trainer_from_args`` and ``maybe_load_checkpoint``): the plans' batch is the global batch, split over the
workers by nnU-Net (``_set_batch_size_and_oversample``); the global rank 0 writes logs and checkpoints (the results
folder must be shared by the nodes); the final validation is sharded over all workers; ``--c`` resumes.

What nnU-Net 2.8's trainer gets wrong outside its single-node ``mp.spawn`` (it takes the global rank as the CUDA index
and always wraps the network for CUDA) is corrected here, for every trainer and without touching nnU-Net's files: the
trainer is moved to this worker's device after construction, and ``DistributedDataParallel`` gets
``device_ids=[LOCAL_RANK]`` on CUDA and none on the CPU. nnU-Net's ``nnUNetTrainer.local_rank`` keeps the global rank,
which nnU-Net uses for "rank 0 writes" and the validation shards.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, List, Optional, Union
from unittest import mock

import torch
from nnunetv2.run import run_training as nnunet
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_ext.distributed import TORCHRUN_VARS, TorchrunEnv, state_digest, torchrun_env

__all__ = ["main", "run_training", "worker_device"]

PROG = "nnunetv2_ext_train"
#: nnU-Net's own run_training (main() routes nnU-Net's parser to ours, which calls this one for a single process)
_NNUNET_RUN_TRAINING = nnunet.run_training


def worker_device(requested: torch.device, env: TorchrunEnv) -> torch.device:
    """The device of this worker: ``cuda:LOCAL_RANK`` for ``-device cuda``, the CPU for ``-device cpu``.

    Raises:
        ValueError: ``-device mps``, or CUDA asked for but this node has fewer visible GPUs than workers.
    """
    if requested.type == "cpu":
        return torch.device("cpu")
    if requested.type != "cuda":
        raise ValueError(f"-device {requested.type}: multi-process training runs on cuda (NCCL) or cpu (Gloo)")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if env.local_rank >= visible:
        raise ValueError(f"LOCAL_RANK={env.local_rank} but this node sees {visible} CUDA device(s): start at most "
                         f"{visible} workers per node (torchrun --nproc_per_node), check CUDA_VISIBLE_DEVICES, or "
                         f"pass -device cpu")
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def _ddp_on(device: torch.device) -> Iterator[None]:
    """nnUNetTrainer.initialize wraps the network as ``DDP(network, device_ids=[self.local_rank])`` with the global
    rank: here the wrapper takes this worker's CUDA index, or no device ids on the CPU (as DDP requires)."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module

    def ddp(module, device_ids=None, **kwargs):
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **kwargs)

    with mock.patch.object(trainer_module, "DDP", ddp):
        yield


def _place(trainer, device: torch.device) -> None:
    """Move a freshly constructed trainer to ``device`` (nnU-Net's __init__ picked ``cuda:<global rank>``)."""
    trainer.device = device
    if device.type != "cuda":
        trainer.grad_scaler = None  # nnU-Net's choice on the CPU: no grad scaler
    trainer.print_to_log_file(f"torchrun worker: rank {dist.get_rank()} of {dist.get_world_size()}, local rank "
                              f"{os.environ['LOCAL_RANK']}, device {device}, backend {dist.get_backend()}")


def _single_process_error(num_gpus: int) -> ValueError:
    return ValueError(
        f"-num_gpus {num_gpus} but {PROG} was not launched by torchrun ({', '.join(TORCHRUN_VARS)} not set): start "
        f"one process per GPU with `torchrun --nproc_per_node {num_gpus} -m nnunetv2_ext.run.train ...` (and "
        f"--nnodes / --rdzv_endpoint for several nodes; -num_gpus is then not needed), or use nnU-Net's single-node "
        f"`nnUNetv2_train ... -num_gpus {num_gpus}`")


def run_training(dataset_name_or_id: Union[str, int], configuration: str, fold: Union[int, str],
                 trainer_class_name: str = "nnUNetTrainer", plans_identifier: str = "nnUNetPlans",
                 pretrained_weights: Optional[str] = None, num_gpus: int = 1,
                 export_validation_probabilities: bool = False, continue_training: bool = False,
                 only_run_validation: bool = False, disable_checkpointing: bool = False, val_with_best: bool = False,
                 device: torch.device = torch.device("cuda")) -> None:
    """nnU-Net's ``run_training`` (same arguments) as one torchrun worker; without torchrun (or ``WORLD_SIZE=1``)
    nnU-Net's own ``run_training`` in one process."""
    env = torchrun_env()
    if env is None or env.world_size == 1:
        if num_gpus > 1:
            raise _single_process_error(num_gpus)
        return _NNUNET_RUN_TRAINING(dataset_name_or_id, configuration, fold, trainer_class_name, plans_identifier,
                                   pretrained_weights, 1, export_validation_probabilities, continue_training,
                                   only_run_validation, disable_checkpointing, val_with_best, device=device)
    if num_gpus not in (1, env.world_size):
        raise ValueError(f"-num_gpus {num_gpus} but torchrun started WORLD_SIZE={env.world_size} workers: leave "
                         f"-num_gpus out under torchrun (the workers are torchrun's --nnodes x --nproc_per_node)")
    if continue_training and only_run_validation:
        raise ValueError("--c and --val cannot be combined (as in nnUNetv2_train)")
    if val_with_best and disable_checkpointing:
        raise ValueError("--val_best is not compatible with --disable_checkpointing (as in nnUNetv2_train)")
    if isinstance(fold, str) and fold != "all":
        fold = int(fold)
    device = worker_device(device, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    elif "OMP_NUM_THREADS" in os.environ:  # nnU-Net's parser took every core; torchrun sets 1 per worker
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    try:
        with _ddp_on(device):
            trainer = nnunet.get_trainer_from_args(dataset_name_or_id, configuration, fold, trainer_class_name,
                                                   plans_identifier, continue_training, device=device)
            _place(trainer, device)
            if disable_checkpointing:
                trainer.disable_checkpointing = disable_checkpointing
            nnunet.maybe_load_checkpoint(trainer, continue_training, only_run_validation, pretrained_weights)
            if not only_run_validation:
                trainer.run_training()
            # every worker, to its own stdout: the same weights everywhere is what data parallelism promises
            print(f"{PROG}: rank {dist.get_rank()} epoch {trainer.current_epoch} weights sha256 "
                  f"{state_digest(trainer.network)}", flush=True)
            if val_with_best:
                trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
            trainer.perform_actual_validation(export_validation_probabilities)
    finally:
        dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``nnUNetv2_train``'s arguments with nnU-Net's own parser and run :func:`run_training`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with mock.patch.object(sys, "argv", [PROG, *argv]), mock.patch.object(nnunet, "run_training", run_training):
        nnunet.run_training_entry()


if __name__ == "__main__":
    main()
