"""What a process of a torchrun (torch.distributed elastic) launch needs to know and share: its place in the job from
the environment torchrun sets, and a gather of tensor rows that keeps the gradient (for losses whose negatives come
from the global batch, e.g. NT-Xent). No nnU-Net import: the trainers and the launcher (``nnunetv2_ext.run.train``)
build on it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import distributed as dist

__all__ = ["TORCHRUN_VARS", "TorchrunEnv", "torchrun_env", "is_distributed", "all_gather_rows", "state_digest"]

#: the variables torchrun sets in every worker (torch.distributed.run; also srun + torchrun)
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class TorchrunEnv:
    """A worker's place in the job: global ``rank`` in ``[0, world_size)``, ``local_rank`` on its node (the CUDA
    index), ``local_world_size`` workers on its node."""
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int


def torchrun_env(environ: Optional[Mapping[str, str]] = None) -> Optional[TorchrunEnv]:
    """The job as torchrun describes it in ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (and ``LOCAL_WORLD_SIZE``), or
    None when none of them is set (not launched by torchrun).

    Raises:
        ValueError: some but not all of them are set, or they are not consistent integers.
    """
    environ = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_VARS if k in environ]
    if not present:
        return None
    missing = [k for k in TORCHRUN_VARS if k not in environ]
    if missing:
        raise ValueError(f"{', '.join(present)} set but {', '.join(missing)} not: launch with torchrun (which sets "
                         f"all of {', '.join(TORCHRUN_VARS)}), or unset them for a single process")
    try:
        rank, local_rank, world_size = (int(environ[k]) for k in TORCHRUN_VARS)
        local_world_size = int(environ.get("LOCAL_WORLD_SIZE", world_size))
    except ValueError as e:
        raise ValueError(f"{', '.join(f'{k}={environ[k]!r}' for k in TORCHRUN_VARS)}: expected integers") from e
    if not (world_size >= 1 and 0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"WORLD_SIZE={world_size}, LOCAL_WORLD_SIZE={local_world_size}")
    return TorchrunEnv(rank, local_rank, world_size, local_world_size)


def is_distributed() -> bool:
    """A process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows (first dimension) of ``x`` of every rank, concatenated in rank order, with the gradient flowing back
    to every rank's own rows: the gather of SimCLR's cross-replica NT-Xent (Chen et al. 2020, arXiv:2002.05709,
    sec. 2 "Training with large batch size": negatives from all devices) as ``torch.distributed.nn.all_gather``
    (backward: the gradients of a rank's rows from every rank, summed, as DDP's mean over ranks then needs). Ranks may
    hold different numbers of rows (nnU-Net splits a global batch of 5 as 3 + 2): rows are padded to the largest
    count for the collective and the padding dropped. Without a process group of more than one process, ``x`` itself.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn import functional as dist_nn

    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    most = max(sizes)
    padded = x if x.shape[0] == most else torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    parts = dist_nn.all_gather(padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def state_digest(module: torch.nn.Module) -> str:
    """SHA-256 of ``module``'s state dict (names, dtypes, shapes and bytes, in key order; DDP's ``module.`` and
    torch.compile's ``_orig_mod.`` wrappers unwrapped): equal on every data-parallel worker that holds the same
    weights."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
