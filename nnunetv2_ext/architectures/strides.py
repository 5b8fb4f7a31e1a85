"""Per-level strides in nnU-Net's plans format, for 3D networks with a fixed number of resolution levels (PCT-Net,
TransBTS): the strides check, the total stride, the patch sizes the network accepts and the deep-supervision scales,
written once.

nnU-Net's plans give a network ``strides``, one entry per resolution level, the first all ones (level 0 is full
resolution): level ``i`` has the input size divided by ``prod(strides[:i + 1])``. nnU-Net's trainer derives its
deep-supervision targets from the same list (``nnUNetTrainer._get_deep_supervision_scales``: ``1 / cumprod(strides)``
without the last level), so a network whose outputs follow its ``strides`` matches them by construction.

No torch import: the planning code reads these rules without building a network.
"""
from __future__ import annotations

from typing import ClassVar, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

IntOrSeq = Union[int, Sequence[int]]
Triple = Tuple[int, int, int]


class PlansStrides:
    """Mixin of a 3D network whose ``n_levels`` resolution levels are set by nnU-Net-style ``strides``.

    The network sets ``self.strides = self.validate_strides(...)`` in its constructor; the class attributes say its
    rules (``network_name`` in messages, ``default_strides``, ``stride_values``: the per-axis strides it can build,
    ``None`` for any positive int).
    """

    network_name: ClassVar[str] = ""
    n_levels: ClassVar[int] = 0
    default_strides: ClassVar[Tuple[Triple, ...]] = ()
    stride_values: ClassVar[Optional[Tuple[int, ...]]] = None
    strides: List[Triple]

    @classmethod
    def validate_strides(cls, strides: Sequence[IntOrSeq]) -> List[Triple]:
        """nnU-Net-style per-level strides -> ``n_levels`` triples; the first must be all ones.

        Raises:
            ValueError: another number of levels, a stride that is not 3 allowed ints, a first stride not all ones.
        """
        strides = list(strides)
        if len(strides) != cls.n_levels:
            raise ValueError(f"{cls.network_name} has {cls.n_levels} resolution levels, so strides needs "
                             f"{cls.n_levels} entries (the first [1, 1, 1]), got {len(strides)}: {strides}. Write its "
                             f"plans with e.g. {[list(s) for s in cls.default_strides]}")
        allowed = "positive ints" if cls.stride_values is None else \
            f"values of {' or '.join(map(str, cls.stride_values))}"
        triples = []
        for i, s in enumerate(strides):
            values = [s] * 3 if isinstance(s, (int, np.integer)) else list(s)
            if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 and
                                           (cls.stride_values is None or v in cls.stride_values) for v in values):
                raise ValueError(f"strides[{i}] must be 3 {allowed} ({cls.network_name} is 3D-only), got {s!r}")
            triples.append(cast(Triple, tuple(int(v) for v in values)))  # 3 values, checked above
        if triples[0] != (1, 1, 1):
            raise ValueError(f"strides[0] must be [1, 1, 1] (level 0 is the full-resolution level), got {strides[0]}")
        return triples

    @classmethod
    def strides_total(cls, strides: Sequence[IntOrSeq]) -> Triple:
        """Downsampling factor of the lowest level per axis for ``strides`` (checked); input sizes must be divisible
        by it."""
        return cast(Triple, tuple(int(v) for v in np.prod(np.array(cls.validate_strides(strides)), axis=0)))

    def total_stride(self) -> Triple:
        """Downsampling factor of this network's lowest level per axis."""
        return self.strides_total(self.strides)

    @classmethod
    def _divisibility(cls, total: Triple) -> str:
        return f"by {total[0]}" if len(set(total)) == 1 else f"by {list(total)} per axis"

    def validate_patch_size(self, patch_size: Sequence[int]) -> Triple:
        """``patch_size`` as a triple, checked: 3 positive sizes divisible by the total stride.

        Raises:
            ValueError: not 3 values, or a size not divisible by the total stride.
        """
        size = list(patch_size)
        if len(size) != 3:
            raise ValueError(f"{self.network_name} is 3D-only: patch size must have 3 values, got {size} (no 2D "
                             f"configuration)")
        total = self.total_stride()
        if any(int(s) < 1 or int(s) % t for s, t in zip(size, total)):
            raise ValueError(f"patch size must be divisible {self._divisibility(total)} (the product of the "
                             f"strides), got {size}")
        return cast(Triple, tuple(int(s) for s in size))  # 3 values, checked above

    @classmethod
    def valid_patch_size(cls, patch: Sequence[int], strides: Optional[Sequence[IntOrSeq]] = None,
                         **arch_kwargs) -> List[int]:
        """``patch`` rounded up to multiples of the total stride of ``strides`` (default ``default_strides``); the
        planning code calls it, as it calls the MONAI wrappers' ``valid_patch_size``."""
        total = cls.strides_total(cls.default_strides if strides is None else strides)
        return [int(np.ceil(int(p) / t) * t) for p, t in zip(patch, total)]

    @classmethod
    def patch_rule(cls, strides: Optional[Sequence[IntOrSeq]] = None, **arch_kwargs) -> str:
        """The rule of :meth:`valid_patch_size`, for notes and messages."""
        return f"multiples of {list(cls.strides_total(cls.default_strides if strides is None else strides))}"

    def ds_scales(self) -> List[List[float]]:
        """Scales of the deep-supervision outputs, full resolution first; equal to nnU-Net's
        ``1 / cumprod(strides)[:-1]`` for this network's strides."""
        return [[float(1.0 / v) for v in c] for c in np.cumprod(np.array(self.strides), axis=0)[:-1]]
