"""Argument checks shared by the pretext modules: each raises ``ValueError`` (or ``TypeError`` for a wrong type) that
states the rule and what was found."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["is_int", "int_triple", "check_images"]


def is_int(x) -> bool:
    """True for a Python int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def int_triple(owner: str, name: str, value) -> Tuple[int, int, int]:
    """``value`` as a tuple of 3 positive ints (z, y, x); ``ValueError`` naming ``owner.name`` otherwise."""
    try:
        t = tuple(value)
    except TypeError:
        raise ValueError(f"{owner}.{name} must be a sequence of 3 positive ints, got {value!r}") from None
    if len(t) != 3 or not all(is_int(v) for v in t):
        raise ValueError(f"{owner}.{name} must be a sequence of 3 positive ints, got {value!r}")
    if not all(v > 0 for v in t):
        raise ValueError(f"{owner}.{name} must be > 0 on every axis, got {t}")
    return t


def check_images(x, what: str) -> None:
    """``x`` must be a floating-point tensor (B, C, *spatial) with 2 or 3 spatial dimensions; ``what`` names the
    caller in the error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"{what} needs images (B, C, *spatial) with 2 or 3 spatial dimensions, got shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what} needs floating-point images, got {x.dtype}")
