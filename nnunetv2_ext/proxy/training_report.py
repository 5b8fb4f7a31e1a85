"""What the proxy benchmark's trainings did, beside the test scores: whether each pretext was learned (its metric
against its trivial baseline, from the ``pretext_metrics.json`` every pretext trainer writes) and the fine-tuning
curves (nnU-Net's per-epoch training loss, validation loss and pseudo-Dice, from ``checkpoint_final.pth``)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Mapping, Sequence, Tuple

import numpy as np

from nnunetv2_ext.evaluation.report import CURVE_KEYS, training_curves  # noqa: F401 (re-exported)
from nnunetv2_ext.training.pretext_metrics import PRETEXT_METRICS_FILE


def pretext_rows(stages: Sequence[Tuple[str, str, str | os.PathLike]]) -> List[dict]:
    """One row per (method, stage, metric) from ``(method, stage, fold folder)`` triples: the last validation's value
    and baseline, whether it beat the baseline, and the epochs run. A stage without the file gives one row with
    ``value`` None (the pretext trainer predates the metrics, or the run did not validate)."""
    rows = []
    for method, stage, folder in stages:
        path = Path(folder) / PRETEXT_METRICS_FILE
        if not path.is_file():
            rows.append({"method": method, "stage": stage, "name": None, "value": None, "baseline": None,
                         "baseline_name": None, "higher_is_better": None, "learned": None, "epoch": None})
            continue
        data = json.loads(path.read_text())
        for metric in data["metrics"]:
            rows.append({"method": method, "stage": stage, "epoch": data["epoch"], **metric})
    return rows


def pretext_markdown(rows: Sequence[dict], labels: Mapping[str, str]) -> str:
    """The pretext table: metric, value, trivial baseline, learned."""
    lines = ["| method | stage | metric | value | trivial baseline | learned | epochs |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["value"] is None:
            lines.append(f"| {labels.get(r['method'], r['method'])} | {r['stage']} | (no {PRETEXT_METRICS_FILE}) "
                         f"| | | | |")
            continue
        better = "higher" if r["higher_is_better"] else "lower"
        lines.append(f"| {labels.get(r['method'], r['method'])} | {r['stage']} | {r['name']} ({better} is better) "
                     f"| {r['value']:.4f} | {r['baseline']:.4f} ({r['baseline_name']}) | "
                     f"{'yes' if r['learned'] else '**no**'} | {r['epoch'] + 1} |")
    return "\n".join(lines) + "\n"


def plot_training_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                         labels: Mapping[str, str], iterations_per_epoch: int | None = None) -> Path:
    """Training loss, validation loss and pseudo-Dice per epoch (mean over runs), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(5 * len(CURVE_KEYS), 4.4))
    titles = {"train_losses": "training loss (Dice + CE)", "val_losses": "validation loss",
              "mean_fg_dice": "pseudo-Dice (online validation)"}
    for ax, key in zip(axes, CURVE_KEYS):
        for method, series in curves.items():
            if key in series:
                x = np.arange(1, len(series[key]) + 1) * (iterations_per_epoch or 1)
                ax.plot(x, series[key], label=labels.get(method, method))
        ax.set_title(titles[key])
        ax.set_xlabel("training steps" if iterations_per_epoch else "epoch")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(3, max(1, len(names))), fontsize=8, frameon=False)
    rows = (len(names) + 2) // 3
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
