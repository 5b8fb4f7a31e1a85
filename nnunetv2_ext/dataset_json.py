"""Read an nnU-Net ``dataset.json``: the one reader of its channel names, for every part of the package.

Top-level, so planning, training, transfer, inference and data can all import it without importing each other.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional


def channel_names(dataset_json: Any, required: bool = True) -> Optional[List[str]]:
    """Modality names in channel order, from nnU-Net v2's ``channel_names`` or nnU-Net v1's ``modality``.

    ``channel_names`` wins when both keys are present (nnU-Net v2's own ``verify_dataset_integrity`` reads them in
    that order). Keys are channel indices, as strings (JSON) or ints, and sort numerically: ``{"10": "X", "2": "T2"}``
    gives ``["T2", "X"]``. Names are returned as strings.

    Args:
        dataset_json: the parsed ``dataset.json``.
        required: raise when the names cannot be read; if False, return None instead (e.g. a checkpoint whose
            ``init_args`` may carry no usable dataset.json).

    Returns:
        the names, position ``i`` being input channel ``i``; None if not ``required`` and the names are missing,
        empty or malformed.

    Raises:
        ValueError: (``required`` only) ``dataset_json`` is not a mapping or has no non-empty ``channel_names`` /
            ``modality``, or their keys are not channel indices.
    """
    names = dataset_json.get("channel_names", dataset_json.get("modality")) \
        if isinstance(dataset_json, Mapping) else None
    if not isinstance(names, Mapping) or not names:
        if required:
            raise ValueError("dataset.json has no 'channel_names': cannot tell how many modalities the data has")
        return None
    try:
        order = sorted(names, key=int)
    except (TypeError, ValueError):
        if required:
            raise ValueError(f"dataset.json 'channel_names' must map channel indices to names (e.g. "
                             f"{{'0': 'T1', '1': 'FLAIR'}}), got {dict(names)!r}") from None
        return None
    return [str(names[k]) for k in order]
