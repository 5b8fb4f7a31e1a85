"""Did the pretext learn? Each pretext trainer's metric against its trivial baseline, logged and kept as JSON.

At every validation epoch a pretext trainer computes its metric and the metric of a trivial predictor on the same
validation batches (the functions of ``nnunetv2_ext.pretext``), and hands them to :func:`report_pretext_metrics`,
which prints one line to the training log and (rank 0) writes ``pretext_metrics.json`` atomically in the fold's output
folder::

    {"trainer": "nnUNetTrainerVolumeFusion", "epoch": 12,
     "metrics": [{"name": "fusion-level Dice", "value": 0.41, "baseline": 0.10, "baseline_name": "constant predictor",
                  "higher_is_better": true, "learned": true}],
     "history": [{"epoch": 0, "metrics": [...]}, ..., {"epoch": 12, "metrics": [...]}]}

``learned`` is True when the value is strictly better than the baseline. A run continued with ``--c`` keeps the history
of the epochs before the one it resumes at; a new run in the same folder starts a new history.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
from torch import distributed as dist

from nnunetv2_ext.io_utils import atomic_write_json, load_json

PRETEXT_METRICS_FILE = "pretext_metrics.json"


def gather_values(values, is_ddp: bool) -> np.ndarray:
    """Values of this worker (any shape, flattened to float64), concatenated with those of every DDP worker: what a
    pretext trainer's metric is computed from at the end of a validation epoch."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if is_ddp:
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, values)
        values = np.concatenate(gathered)
    return values


def pretext_metric(name: str, value: float, baseline: float, baseline_name: str, higher_is_better: bool) -> dict:
    """One entry of ``pretext_metrics.json``; ``learned`` = value strictly better than baseline (False for NaN)."""
    value, baseline = float(value), float(baseline)
    learned = value > baseline if higher_is_better else value < baseline
    return {"name": name, "value": value, "baseline": baseline, "baseline_name": baseline_name,
            "higher_is_better": bool(higher_is_better), "learned": bool(learned)}


def format_pretext_metrics(metrics: Sequence[dict]) -> str:
    """One log line, e.g. ``pretext metric: fusion-level Dice 0.4100 (constant predictor 0.1000): learned``."""
    if not metrics:
        raise ValueError("no pretext metrics to format")
    parts = [f"{m['name']} {m['value']:.4f} ({m['baseline_name']} {m['baseline']:.4f}): "
             f"{'learned' if m['learned'] else 'not learned'}" for m in metrics]
    return f"pretext metric{'s' if len(parts) > 1 else ''}: " + "; ".join(parts)


def updated_record(previous: Optional[dict], trainer: str, epoch: int, metrics: Sequence[dict]) -> dict:
    """The new content of ``pretext_metrics.json``: ``previous``'s history before ``epoch`` (the epochs a resumed run
    does not repeat; none for a new run, which starts at epoch 0) plus this epoch. ``previous`` is not modified."""
    history: List[dict] = [h for h in (previous or {}).get("history", []) if int(h["epoch"]) < epoch]
    metrics = [dict(m) for m in metrics]
    history.append({"epoch": int(epoch), "metrics": metrics})
    return {"trainer": trainer, "epoch": int(epoch), "metrics": metrics, "history": history}


def report_pretext_metrics(trainer, metrics: Sequence[dict]) -> Optional[dict]:
    """Log ``metrics`` (entries of :func:`pretext_metric`) through ``trainer.print_to_log_file`` and, on rank 0, write
    them to ``<trainer.output_folder>/pretext_metrics.json`` at ``trainer.current_epoch``. Returns the record written
    (None on other ranks). Call it from ``on_validation_epoch_end`` after gathering over the DDP workers."""
    trainer.print_to_log_file(format_pretext_metrics(metrics))
    if trainer.local_rank != 0:
        return None
    path = os.path.join(trainer.output_folder, PRETEXT_METRICS_FILE)
    previous = load_json(path) if os.path.isfile(path) else None
    record = updated_record(previous, type(trainer).__name__, trainer.current_epoch, metrics)
    atomic_write_json(record, path, overwrite=True)
    return record



def checkpoint_pretext_check(checkpoint: str | os.PathLike) -> Optional[str]:
    """What ``pretext_metrics.json`` beside a checkpoint says of its pretext, as log lines for the run that uses it
    (``None`` when there is no such file: not a pretext run of this package). Each metric that did not beat its
    trivial baseline is named in a warning line."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), PRETEXT_METRICS_FILE)
    if not os.path.isfile(path):
        return None
    record = load_json(path)
    lines = [f"{record['trainer']} at epoch {record['epoch']}: {format_pretext_metrics(record['metrics'])}"]
    missed = [m["name"] for m in record["metrics"] if not m["learned"]]
    if missed:
        lines.append(f"WARNING: this checkpoint's pretext did not beat its trivial baseline on "
                     f"{', '.join(missed)} ({path}): its weights may be no better than a fresh initialisation")
    return "\n".join(lines)
