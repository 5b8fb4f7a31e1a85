"""The proxy's training report: pretext metric rows and fine-tuning curves."""
from __future__ import annotations

import json

import numpy as np
import torch

from nnunetv2_ext.proxy.training_report import plot_training_curves, pretext_markdown, pretext_rows, training_curves


def test_pretext_rows_and_markdown(tmp_path):
    done, missing = tmp_path / "done", tmp_path / "missing"
    done.mkdir()
    missing.mkdir()
    metric = {"name": "rotation accuracy", "value": 0.61, "baseline": 0.25, "baseline_name": "chance",
              "higher_is_better": True, "learned": True}
    (done / "pretext_metrics.json").write_text(json.dumps({"trainer": "T", "epoch": 29, "metrics": [metric],
                                                           "history": []}))
    rows = pretext_rows([("ssl_swin", "stage2", done), ("ssl_vf", "stage1", missing)])
    assert rows[0] == {"method": "ssl_swin", "stage": "stage2", "epoch": 29, **metric}
    assert rows[1]["value"] is None
    md = pretext_markdown(rows, {"ssl_swin": "Swin"})
    assert "| Swin | stage2 | rotation accuracy (higher is better) | 0.6100 | 0.2500 (chance) | yes | 30 |" in md
    assert "no pretext_metrics.json" in md


def test_training_curves_average_runs_and_plot(tmp_path):
    for i, losses in enumerate(([1.0, 0.5, 0.2], [0.8, 0.3, 0.1, 0.05])):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        torch.save({"logging": {"train_losses": [np.float64(v) for v in losses],
                                "mean_fg_dice": [np.float32(0.1)] * len(losses)}}, folder / "checkpoint_final.pth")
    (tmp_path / "unfinished").mkdir()
    curves = training_curves([("a", tmp_path / "run0"), ("a", tmp_path / "run1"), ("b", tmp_path / "unfinished")])
    assert list(curves) == ["a"]
    assert curves["a"]["train_losses"] == [0.9, 0.4, 0.15]  # mean over the common epochs
    assert curves["a"]["mean_fg_dice"] == [0.1, 0.1, 0.1]
    path = plot_training_curves(curves, tmp_path / "curves.png", {"a": "A"}, iterations_per_epoch=50)
    assert path.stat().st_size > 1000
