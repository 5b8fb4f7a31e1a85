"""Tables and plots from an nnU-Net results tree: Table 1 of Taheri Otaghsara et al. 2025, "Multi-encoder nnU-Net
outperforms Transformer models with self-supervised pretraining" (one row per trainer: mean DSC, ACC, SE, SP, PRE),
Table 4 of Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models for Neuroimage Segmentation" (rows =
folds, columns = trainers: mean Dice) and the few-shot curve of BrainSegFounder's Figure 5 (mean Dice vs fraction
of labelled training cases, +/- 1 s.d. over the random subsets, one line per trainer). Full references:
docs/references.md.

Each fold's ``validation/`` predictions are scored once with :func:`nnunetv2_ext.evaluation.metrics.evaluate_folders`
against nnU-Net's ``gt_segmentations``; the result is cached as ``validation/metrics_ext.json`` and recomputed when
a prediction is newer than it or it lacks the BraTS lesion-wise definition asked for. With one, the models table also
holds the lesion-wise Dice and HD95 (:mod:`nnunetv2_ext.evaluation.lesionwise`), and models can be ranked by any
metric (mean over regions, or one region).
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from nnunetv2_ext.evaluation.metrics import evaluate_folders

METRICS_FILE = "metrics_ext.json"
CURVE_KEYS = ("train_losses", "val_losses", "mean_fg_dice")  # nnU-Net's per-epoch log in its checkpoints
TABLE1_METRICS = (("dice", "Av. DSC"), ("accuracy", "ACC"), ("sensitivity", "SE"), ("specificity", "SP"),
                  ("precision", "PRE"), ("hd95_mm", "HD95 (mm)"))
#: BraTS lesion-wise columns of the models table, when the summaries hold them (the challenge's ranking metrics).
LESIONWISE_COLUMNS = (("brats_lesion_dice", "LW DSC"), ("brats_lesion_hd95_mm", "LW HD95 (mm)"))
#: Metric name fragments for which lower is better when ranking.
LOWER_IS_BETTER = ("hd95", "assd", "diff", "_fp", "_fn", "_ignored")

#: A point of :func:`plot_curves`: ``(x, mean, sd)``; a line: ``(label, points)``; a panel: ``(title, lines)``.
CurvePoint = Tuple[float, float, float]
CurveLine = Tuple[str, Sequence[CurvePoint]]
CurvePanel = Tuple[str, Sequence[CurveLine]]


@dataclass
class FoldResult:
    model: str          # "<trainer>__<plans>__<configuration>"
    fold: str
    summary: dict       # evaluate_folders output

    @property
    def trainer(self) -> str:
        return self.model.split("__")[0]

    def mean(self, metric: str, region: Optional[str] = None) -> float:
        """Mean over cases of one region, or over cases and regions (:func:`nanmean`; a missing value is NaN)."""
        regions = [region] if region else list(self.summary["mean"])
        values = [self.summary["mean"].get(r, {}).get(metric) for r in regions]
        return nanmean(float("nan") if v is None else v for v in values)


def training_curves(runs: Sequence[Tuple[str, str | os.PathLike]]) -> Dict[str, Dict[str, List[float]]]:
    """Per method, the mean over its runs of nnU-Net's per-epoch curves (``CURVE_KEYS``) from each run's
    ``checkpoint_final.pth``; runs are ``(method, fold folder)`` pairs. Runs without a final checkpoint are left
    out."""
    from nnunetv2_ext.transfer.checkpoint import load_checkpoint_file

    per_method: Dict[str, Dict[str, List[List[float]]]] = defaultdict(lambda: defaultdict(list))
    for method, folder in runs:
        path = Path(folder) / "checkpoint_final.pth"
        if not path.is_file():
            continue
        logging = load_checkpoint_file(path).get("logging", {})
        for key in CURVE_KEYS:
            values = [float(v) for v in logging.get(key, [])]
            if values:
                per_method[method][key].append(values)
    out: Dict[str, Dict[str, List[float]]] = {}
    for method, curves in per_method.items():
        out[method] = {}
        for key, series in curves.items():
            n = min(len(s) for s in series)
            out[method][key] = np.mean([s[:n] for s in series], axis=0).round(5).tolist()
    return out


def nanmean(values: Iterable[Any]) -> float:
    """Mean of the finite values (NaN and +/-inf skipped: the metrics' JSON cache stores both as null, so a fresh
    and a cached summary give the same mean), NaN if there is none."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def nansd(values: Iterable[Any]) -> float:
    """Sample standard deviation (ddof = 1) of the finite values; 0.0 for a single one, NaN for none."""
    arr = np.asarray(list(values), dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan")
    return float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fold_metrics(fold_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                 dataset_json: Mapping[str, Any] | str | os.PathLike, num_processes: int = 1,
                 lesion_wise: Optional[str] = None, lesion_labels: Optional[str] = None) -> Optional[dict]:
    """The :func:`~nnunetv2_ext.evaluation.metrics.evaluate_folders` summary of a fold's ``validation/`` predictions,
    cached as ``validation/metrics_ext.json`` and recomputed when a prediction is newer or, with ``lesion_wise`` (a
    BraTS definition, e.g. ``'2023'``; ``lesion_labels``: ``'challenge'`` / ``'nnunet'``, default read from the
    dataset.json), when the cache holds another or none; None without predictions."""
    validation = Path(fold_dir) / "validation"
    predictions = sorted(validation.glob("*.nii.gz"))
    if not predictions:
        return None
    cache = validation / METRICS_FILE
    if cache.is_file() and cache.stat().st_mtime >= max(p.stat().st_mtime for p in predictions):
        cached = json.loads(cache.read_text())
        if lesion_wise is None or (cached.get("lesion_wise") or {}).get("definition") == lesion_wise:
            return cached
    return evaluate_folders(gt_dir, validation, dataset_json, num_processes=num_processes, output=cache,
                            overwrite=True, strict=False, lesion_wise=lesion_wise, lesion_labels=lesion_labels)


def collect(results_dataset_dir: str | os.PathLike, trainers: Optional[Sequence[str]] = None,
            configuration: Optional[str] = None, gt_dir: str | os.PathLike | None = None,
            num_processes: int = 1, lesion_wise: Optional[str] = None,
            lesion_labels: Optional[str] = None, progress: bool = False) -> List[FoldResult]:
    """Score every fold's validation predictions under ``$nnUNet_results/DatasetXXX_Name``.

    Args:
        results_dataset_dir: the dataset's results folder.
        trainers: only these trainer names (default: all).
        configuration: only this configuration (default: all).
        gt_dir: reference segmentations (default ``$nnUNet_preprocessed/<dataset>/gt_segmentations``).
        lesion_wise: a BraTS lesion-wise definition (``'2023'``, ``'2024'``, ...) to score as well.
        lesion_labels: its label convention, ``'challenge'`` or ``'nnunet'`` (default: read from the dataset.json).
        progress: a tqdm bar over the folds on stderr.

    Raises:
        FileNotFoundError: the folder or the references do not exist; ValueError: no fold has predictions.
    """
    root = Path(results_dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: give $nnUNet_results/DatasetXXX_Name")
    if gt_dir is None:
        from nnunetv2.paths import nnUNet_preprocessed
        gt_dir = Path(nnUNet_preprocessed.get() or "") / root.name / "gt_segmentations"
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"reference segmentations {gt_dir} do not exist (pass --gt, e.g. the raw labelsTr)")
    folds = []
    for model in sorted(p for p in root.iterdir() if p.is_dir() and p.name.count("__") == 2):
        trainer, _, config = model.name.split("__")
        if (trainers and trainer not in trainers) or (configuration and config != configuration):
            continue
        folds.extend((model, fold_dir) for fold_dir in sorted(model.glob("fold_*")))
    results = []
    for model, fold_dir in tqdm(folds, desc=f"report {root.name}", unit="fold", file=sys.stderr,
                                disable=not progress):
        summary = fold_metrics(fold_dir, gt_dir, model / "dataset.json", num_processes, lesion_wise, lesion_labels)
        if summary is not None:
            results.append(FoldResult(model.name, fold_dir.name[len("fold_"):], summary))
    if not results:
        raise ValueError(f"no fold under {root} has validation predictions (run nnUNetv2_train first)")
    return results


def _fold_sort_key(fold: str):
    return (0, int(fold)) if fold.isdigit() else (1, fold)


def _has_metric(run: FoldResult, metric: str) -> bool:
    return any(metric in per_region for per_region in run.summary["mean"].values())


def parse_rank_by(rank_by: str) -> Tuple[str, Optional[str], bool]:
    """``'metric'`` or ``'metric:REGION'`` -> ``(metric, region or None, lower_is_better)``; lower is better for
    names holding one of :data:`LOWER_IS_BETTER` (distances, differences, lesion FP / FN counts)."""
    metric, _, region = rank_by.partition(":")
    return metric, region or None, any(part in metric for part in LOWER_IS_BETTER)


def table_models(results: Sequence[FoldResult], folds: Optional[Sequence[str]] = None,
                 rank_by: Optional[str] = None) -> List[Dict]:
    """Taheri Otaghsara et al. 2025 (Multi-encoder nnU-Net) Table 1: one row per model, metrics averaged over regions,
    cases and the given folds; with BraTS lesion-wise scores in the summaries also ``LW DSC``, ``LW HD95 (mm)``
    and ``LW DSC <region>``.

    Args:
        results: the folds' results.
        folds: only these folds (default all).
        rank_by: ``'metric'`` (mean over regions) or ``'metric:REGION'``, e.g. ``'brats_lesion_dice'`` or
            ``'brats_lesion_hd95_mm:ET'``: rows sorted best first (NaN last) with ``rank`` (ties share the better
            rank) and the value ranked by as columns.

    Raises:
        ValueError: ``rank_by`` names a metric or region no summary holds.
    """
    rows = []
    lesion_wise = any(_has_metric(r, LESIONWISE_COLUMNS[0][0]) for r in results)
    for model in dict.fromkeys(r.model for r in results):
        runs = [r for r in results if r.model == model and (folds is None or r.fold in folds)]
        if not runs:
            continue
        row = {"model": model, "folds": ",".join(sorted((r.fold for r in runs), key=_fold_sort_key))}
        for metric, label in TABLE1_METRICS:
            row[label] = nanmean(r.mean(metric) for r in runs)
        for region in runs[0].summary["mean"]:
            row[f"DSC {region}"] = nanmean(r.mean("dice", region) for r in runs)
        if lesion_wise:
            for metric, label in LESIONWISE_COLUMNS:
                row[label] = nanmean(r.mean(metric) for r in runs)
            for region in runs[0].summary["mean"]:
                row[f"LW DSC {region}"] = nanmean(r.mean(LESIONWISE_COLUMNS[0][0], region) for r in runs)
        rows.append(row)
    if rank_by is None:
        return rows
    metric, region, lower = parse_rank_by(rank_by)
    if not any(_has_metric(r, metric) and (region is None or metric in r.summary["mean"].get(region, {}))
               for r in results):
        known = sorted({m for r in results for per_region in r.summary["mean"].values() for m in per_region})
        regions = sorted({g for r in results for g in r.summary["mean"]})
        raise ValueError(f"--rank-by {rank_by!r}: no result holds {metric!r}{f' for region {region}' if region else ''}"
                         f"; metrics: {known}, regions: {regions} (lesion-wise metrics need --brats)")
    for row in rows:
        runs = [r for r in results if r.model == row["model"] and (folds is None or r.fold in folds)]
        row["ranked by"] = nanmean(r.mean(metric, region) for r in runs)
    worst = float("inf")
    rows.sort(key=lambda row: (worst if np.isnan(row["ranked by"]) else (row["ranked by"] if lower
                                                                          else -row["ranked by"])))
    for i, row in enumerate(rows):
        tied = i > 0 and row["ranked by"] == rows[i - 1]["ranked by"]
        row["rank"] = rows[i - 1]["rank"] if tied else i + 1
    return [{"rank": row.pop("rank"), rank_by: row.pop("ranked by"), **row} for row in rows]


def table_folds(results: Sequence[FoldResult], folds: Optional[Sequence[str]] = None) -> List[Dict]:
    """Cox et al. 2024 (BrainSegFounder) Table 4: rows = folds, columns = models, mean Dice over regions and cases."""
    models = list(dict.fromkeys(r.model for r in results))
    all_folds = sorted({r.fold for r in results if folds is None or r.fold in folds}, key=_fold_sort_key)
    rows = []
    for fold in all_folds:
        row = {"fold": fold}
        for model in models:
            match = [r for r in results if r.model == model and r.fold == fold]
            row[model] = match[0].mean("dice") if match else float("nan")
        rows.append(row)
    return rows


def few_shot_table(results: Sequence[FoldResult], index: Sequence[dict]) -> List[Dict]:
    """Per model and fraction: mean and s.d. (over repeats) of the mean Dice, from ``few_shot_index.json``."""
    rows = []
    for model in dict.fromkeys(r.model for r in results):
        by_fold = {r.fold: r for r in results if r.model == model}
        for fraction in sorted({e["fraction"] for e in index}):
            dice = [by_fold[str(e["fold"])].mean("dice") for e in index
                    if e["fraction"] == fraction and str(e["fold"]) in by_fold]
            if dice:
                rows.append({"model": model, "fraction": fraction, "n_repeats": len(dice),
                             "n_train": int(np.mean([e["n_train"] for e in index if e["fraction"] == fraction])),
                             "mean_dice": float(np.mean(dice)),
                             "sd_dice": float(statistics.stdev(dice)) if len(dice) > 1 else 0.0})
    return rows


def plot_curves(panels: Sequence[CurvePanel], path: str | os.PathLike, *, xlabel: str, ylabel: str,
                title: str = "", figsize: Optional[Tuple[float, float]] = None,
                log2_xticks: Optional[Sequence[float]] = None, image_format: Optional[str] = None) -> Path:
    """Mean +/- 1 s.d. curves in the style of the few-shot plot of Cox et al. 2024 (BrainSegFounder, Figure 5).

    One panel per ``(title, lines)`` side by side, sharing the y axis; in each, one line per ``(label, points)``
    with error bars of +/- ``sd`` at each ``(x, mean, sd)`` point (a line without points is left out). The y label
    is on the first panel, the legend on the last.

    Args:
        panels: the panels, left to right.
        path: the image file.
        xlabel: x label of every panel.
        ylabel: y label of the first panel.
        title: title above all panels (none if empty).
        figsize: inches (default: 3.4 per panel + 0.6 wide, 3.6 high).
        log2_xticks: if given, a log-2 x axis with ticks (labelled) at these values and no minor ticks.
        image_format: matplotlib's ``format`` (default: from the suffix of ``path``).

    Raises:
        ValueError: no panel.
    """
    if not panels:
        raise ValueError("plot_curves needs at least one (title, lines) panel, got none")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    if figsize is None:
        figsize = (3.4 * len(panels) + 0.6, 3.6)
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, dpi=120, sharey=True, squeeze=False)
    for ax, (panel_title, lines) in zip(axes[0], panels):
        for label, points in lines:
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                            marker="o", capsize=3, label=label)
        if log2_xticks is not None:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(log2_xticks))
            ax.set_xticklabels([str(x) for x in log2_xticks])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format=image_format)
    plt.close(fig)
    return path


def plot_few_shot(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """The few-shot curve (Cox et al. 2024, Figure 5): mean Dice vs training fraction, error bars +/- 1 s.d."""
    lines = [(model.split("__")[0], [(100 * r["fraction"], r["mean_dice"], r["sd_dice"])
                                     for r in rows if r["model"] == model])
             for model in dict.fromkeys(r["model"] for r in rows)]
    return plot_curves([(title or "Few-shot fine-tuning", lines)], path, figsize=(6, 4),
                       xlabel="labelled training cases (% of the fold's training set)",
                       ylabel="mean Dice (validation, all regions)")


def markdown_table(rows: Sequence[dict]) -> str:
    """A Markdown table: the keys of the first row as columns, floats with 4 decimals; ``(no rows)`` if empty."""
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict], stem: str | os.PathLike) -> None:
    """``<stem>.md`` (:func:`markdown_table`) and, unless ``rows`` is empty, ``<stem>.csv`` (all digits)."""
    stem = Path(stem)
    stem.with_suffix(".md").write_text(markdown_table(rows))
    if rows:
        with open(stem.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def write_report(results_dataset_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 trainers: Optional[Sequence[str]] = None, configuration: Optional[str] = None,
                 gt_dir: str | os.PathLike | None = None, few_shot_index: str | os.PathLike | None = None,
                 num_processes: int = 1, overwrite: bool = False, lesion_wise: Optional[str] = None,
                 rank_by: Optional[str] = None, lesion_labels: Optional[str] = None,
                 progress: bool = False) -> Dict[str, Path]:
    """Write ``table_models.md/.csv`` (Multi-encoder nnU-Net Table 1, folds 0-4 or whatever folds exist outside the
    few-shot ones), ``table_folds.md/.csv`` (BrainSegFounder Table 4) and, if a few-shot index exists (default: the
    ``few_shot_index.json`` beside the dataset's splits_final.json), ``few_shot.md/.csv`` and ``few_shot.png``.

    ``lesion_wise`` (a BraTS definition, e.g. ``'2023'``; its label convention ``lesion_labels``, default read from
    the dataset.json) adds the challenge's lesion-wise scores to the fold summaries and the models table; ``rank_by``
    (see :func:`table_models`) ranks the models table; ``progress`` shows a bar over the folds scored.

    Raises:
        FileExistsError: ``output_dir`` holds a report and ``overwrite`` is False.
        ValueError: ``rank_by`` names a metric the summaries lack.
    """
    out = Path(output_dir)
    if (out / "table_models.md").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a report; pass --overwrite to replace it")
    if rank_by is not None:
        parse_rank_by(rank_by)  # a malformed --rank-by fails before any fold is scored
    results = collect(results_dataset_dir, trainers, configuration, gt_dir, num_processes, lesion_wise, lesion_labels,
                      progress)
    if few_shot_index is None:
        from nnunetv2.paths import nnUNet_preprocessed
        candidate = Path(nnUNet_preprocessed.get() or "") / Path(results_dataset_dir).name / "few_shot_index.json"
        few_shot_index = candidate if candidate.is_file() else None
    index = json.loads(Path(few_shot_index).read_text()) if few_shot_index else []
    few_shot_folds = {str(e["fold"]) for e in index}
    standard_folds = sorted({r.fold for r in results} - few_shot_folds, key=_fold_sort_key)
    models = table_models(results, standard_folds, rank_by)  # a bad --rank-by fails before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    write_table(models, out / "table_models")
    write_table(table_folds(results, standard_folds), out / "table_folds")
    written.update(table_models=out / "table_models.md", table_folds=out / "table_folds.md")
    if index:
        rows = few_shot_table(results, index)
        write_table(rows, out / "few_shot")
        written["few_shot"] = out / "few_shot.md"
        if rows:
            written["few_shot_plot"] = plot_few_shot(rows, out / "few_shot.png", Path(results_dataset_dir).name)
    return written
