"""Analysis of the few-shot proxy benchmark: tables, the label-efficiency curve and paired method comparisons.

Every run (one method trained on one random subset of ``n_labelled`` labelled cases) predicted the same fixed
held-out test cases into its fold's ``validation/`` folder. Runs are scored once with
:func:`nnunetv2_ext.evaluation.metrics.evaluate_folders` (through the cache of
:func:`nnunetv2_ext.evaluation.report.fold_metrics`); everything else here works on those summaries. Tables, the
NaN-skipping statistics and the curve plot are those of :mod:`nnunetv2_ext.evaluation.report`.

Aggregation (the same everywhere):

- a run's value of a metric in a region is the mean over its test cases, skipping NaN;
- the ``"mean"`` region is, per case, the mean over the dataset's regions (skipping NaN), then averaged over cases;
- a (method, n_labelled) cell reports the mean and the sample s.d. (ddof = 1; 0.0 for a single subset) of the
  per-subset values, as the few-shot curve of Cox et al. 2024 ("BrainSegFounder:
  Towards 3D Foundation Models for Neuroimage Segmentation", Figure 5: mean Dice +/- 1 s.d. over random subsets);
- paired comparisons use runs of both methods trained on the same subset (same labelled cases) and, within them,
  the same test cases; their uncertainty comes from a two-level (hierarchical) bootstrap that resamples subsets
  and, inside each resampled subset, test cases (Davison & Hinkley, *Bootstrap Methods and their Application*,
  1997, section 3.8; Saravanan et al., *Application of the hierarchical bootstrap to multi-level data in
  neuroscience*, 2020), since both the training subset and the test case are random.

Table metrics follow Taheri Otaghsara et al. 2025 ("Multi-encoder nnU-Net outperforms Transformer models with
self-supervised pretraining"), Table 1 (DSC Eq. 3, ACC, SE Eq. 4, SP, PRE Eq. 5) plus HD95.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from nnunetv2_ext.evaluation.report import fold_metrics, markdown_table, nanmean, nansd, plot_curves, write_table
from nnunetv2_ext.io_utils import atomic_write_json, json_safe

#: (metric key of :func:`~nnunetv2_ext.evaluation.metrics.case_metrics`, column label): Taheri Otaghsara et al. 2025
#: (Multi-encoder nnU-Net) Table 1 plus HD95.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "Dice"), ("accuracy", "ACC"), ("sensitivity", "SE"), ("specificity", "SP"), ("precision", "PRE"),
    ("hd95_mm", "HD95 (mm)"))
#: Name of the pseudo-region holding the per-case mean over the dataset's regions.
MEAN_REGION = "mean"
#: Decimals of the "mean ± sd" strings, per metric (default 4).
DECIMALS: dict[str, int] = {"hd95_mm": 2}
#: Two-sided coverage of the bootstrap interval.
CI_LEVEL = 0.95
#: Files written by :func:`write_results`.
RESULTS_FILE = "results.json"
#: Largest array (elements) the vectorised bootstrap builds at once; bounds its memory.
BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Run:
    """One trained run of the benchmark.

    Args:
        method: method key, e.g. ``"ssl_vf"``.
        n_labelled: labelled training cases of this run.
        subset: repeat index of the random labelled subset (0..R-1); runs of two methods with the same
            ``(n_labelled, subset)`` were trained on the same labelled cases.
        fold_dir: the nnU-Net fold folder (holds ``validation/``); stored as a string.
    """
    method: str
    n_labelled: int
    subset: int
    fold_dir: str

    def __post_init__(self):
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"Run.method must be a non-empty string, got {self.method!r}")
        if int(self.n_labelled) != self.n_labelled or self.n_labelled < 1:
            raise ValueError(f"Run.n_labelled must be a positive integer, got {self.n_labelled!r}")
        if int(self.subset) != self.subset or self.subset < 0:
            raise ValueError(f"Run.subset must be an integer >= 0, got {self.subset!r}")
        object.__setattr__(self, "fold_dir", os.fspath(self.fold_dir))

    def describe(self) -> str:
        return f"{self.method} (n_labelled={self.n_labelled}, subset={self.subset})"


# ----------------------------------------------------------------------------------------------------- scoring

def score_runs(runs: Sequence[Run], gt_dir: str | os.PathLike, dataset_json: Mapping[str, Any] | str | os.PathLike,
               num_processes: int = 1) -> dict[Run, dict]:
    """Score each run's ``validation/`` predictions against the references.

    Summaries are those of :func:`~nnunetv2_ext.evaluation.metrics.evaluate_folders` (cached per fold as
    ``validation/metrics_ext.json`` and recomputed when a prediction is newer).

    Args:
        runs: the runs; at most one per ``(method, n_labelled, subset)``.
        gt_dir: reference segmentations, e.g. ``$nnUNet_preprocessed/DatasetXXX/gt_segmentations``.
        dataset_json: the dataset's ``dataset.json`` (dict or path); its labels define the regions.
        num_processes: worker processes per fold.

    Returns:
        ``{run: summary}`` in the order of ``runs``.

    Raises:
        FileNotFoundError: ``gt_dir`` does not exist, or a run's ``validation/`` holds no predictions (named).
        ValueError: two runs share ``(method, n_labelled, subset)``.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"reference segmentations {gt_dir} do not exist (give gt_segmentations or labelsTr)")
    seen: set[tuple[str, int, int]] = set()
    for run in runs:  # duplicates fail before the (slow) scoring
        if (run.method, run.n_labelled, run.subset) in seen:
            raise ValueError(f"two runs of {run.describe()}; give one fold folder per (method, n_labelled, subset)")
        seen.add((run.method, run.n_labelled, run.subset))
    scores = {}
    for run in runs:
        summary = fold_metrics(run.fold_dir, gt_dir, dataset_json, num_processes)
        if summary is None:
            raise FileNotFoundError(
                f"run {run.describe()}: {Path(run.fold_dir) / 'validation'} holds no *.nii.gz predictions; predict "
                f"the test cases into it (nnUNetv2_train ... --val, or nnUNetv2_predict -o <fold>/validation)")
        scores[run] = summary
    return scores


# ----------------------------------------------------------------------------------------------- aggregation

def _float(value: Any) -> float:
    return math.nan if value is None else float(value)  # the JSON cache stores NaN as null


def _index(scores: Mapping[Run, Any]) -> dict[str, dict[int, dict[int, Any]]]:
    """``{method: {n_labelled: {subset: summary}}}``, methods in first-seen order."""
    index: dict[str, dict[int, dict[int, Any]]] = {}
    for run, summary in scores.items():
        by_subset = index.setdefault(run.method, {}).setdefault(run.n_labelled, {})
        if run.subset in by_subset:
            raise ValueError(f"two runs of {run.describe()}; give one fold folder per (method, n_labelled, subset)")
        by_subset[run.subset] = summary
    return index


def _regions(scores: Mapping[Run, dict], regions: Sequence[str] | None = None) -> list[str]:
    """The requested regions (default: the dataset's regions, then ``"mean"``), checked against every run."""
    if not scores:
        raise ValueError("no scored runs (score_runs returned nothing)")
    available = list(next(iter(scores.values()))["mean"])
    if MEAN_REGION in available:
        raise ValueError(f"the dataset has a region named {MEAN_REGION!r}, which names the mean over regions here")
    for run, summary in scores.items():
        if list(summary["mean"]) != available:
            raise ValueError(f"run {run.describe()} has regions {list(summary['mean'])}, others have {available}: "
                             f"score every run with the same dataset.json")
    if regions is None:
        return available + [MEAN_REGION]
    unknown = [r for r in regions if r not in available + [MEAN_REGION]]
    if unknown:
        raise ValueError(f"unknown region(s) {unknown}; available: {available + [MEAN_REGION]}")
    return list(regions)


def _check_metric(scores: Mapping[Run, dict], metric: str) -> None:
    for summary in scores.values():
        for region_metrics in summary["mean"].values():
            if metric not in region_metrics:
                raise ValueError(f"unknown metric {metric!r}; available: {sorted(region_metrics)}")


def _case_values(summary: Mapping, region: str, metric: str) -> dict[str, float]:
    """Per-case value of one metric in one region (or the NaN-skipping mean over regions)."""
    out = {}
    for case, per_region in summary["cases"].items():
        if region == MEAN_REGION:
            out[case] = nanmean(_float(m[metric]) for m in per_region.values())
        else:
            out[case] = _float(per_region[region][metric])
    return out


def _run_value(summary: Mapping, region: str, metric: str) -> float:
    return nanmean(_case_values(summary, region, metric).values())


def table_numbers(scores: Mapping[Run, dict], regions: Sequence[str] | None = None,
                  metrics: Sequence[str] = tuple(m for m, _ in TABLE_METRICS)) -> list[dict]:
    """The numbers behind :func:`results_table` and :func:`curve_rows`.

    Returns:
        One row per (method, n_labelled), methods in first-seen order, n_labelled ascending:
        ``{'method', 'n_labelled', 'n_subsets', 'subsets': [...], 'values': {region: {metric: {'mean', 'sd',
        'per_subset': [...]}}}}``; ``per_subset`` follows ``subsets``; NaN where no finite value exists.
    """
    regions = _regions(scores, regions)
    for metric in metrics:
        _check_metric(scores, metric)
    rows = []
    for method, by_n in _index(scores).items():
        for n in sorted(by_n):
            subsets = sorted(by_n[n])
            values: dict[str, dict[str, dict]] = {}
            for region in regions:
                values[region] = {}
                for metric in metrics:
                    per_subset = [_run_value(by_n[n][s], region, metric) for s in subsets]
                    values[region][metric] = {"mean": nanmean(per_subset), "sd": nansd(per_subset),
                                              "per_subset": per_subset}
            rows.append({"method": method, "n_labelled": n, "n_subsets": len(subsets), "subsets": subsets,
                         "values": values})
    return rows


def _mean_sd(mean: float, sd: float, decimals: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def results_table(scores: Mapping[Run, dict], regions: Sequence[str] | None = None) -> list[dict]:
    """The results table: one row per (method, n_labelled).

    Columns: ``method``, ``n_labelled``, ``n_subsets``, then ``"<region> <label>"`` for each region (default: the
    dataset's regions and ``"mean"``) and each :data:`TABLE_METRICS` label, as ``"mean ± sd"`` over subsets
    (``"n/a"`` when no finite value exists). The numbers are in :func:`table_numbers`.
    """
    rows = []
    for numbers in table_numbers(scores, regions):
        row: dict[str, Any] = {"method": numbers["method"], "n_labelled": numbers["n_labelled"],
                               "n_subsets": numbers["n_subsets"]}
        for region, per_metric in numbers["values"].items():
            for metric, label in TABLE_METRICS:
                cell = per_metric[metric]
                row[f"{region} {label}"] = _mean_sd(cell["mean"], cell["sd"], DECIMALS.get(metric, 4))
        rows.append(row)
    return rows


def curve_rows(scores: Mapping[Run, dict], regions: Sequence[str] | None = None) -> list[dict]:
    """The label-efficiency curve (Cox et al. 2024, Figure 5 style): Dice vs number of labelled cases.

    Returns:
        One row per (method, n_labelled, region) (regions default to the dataset's and ``"mean"``):
        ``{'method', 'n_labelled', 'region', 'n_subsets', 'mean_dice', 'sd_dice', 'dice_per_subset'}``, where
        ``mean_dice``/``sd_dice`` are the mean and s.d. over subsets of each subset's mean Dice over test cases.
    """
    rows = []
    for numbers in table_numbers(scores, regions, metrics=("dice",)):
        for region, per_metric in numbers["values"].items():
            cell = per_metric["dice"]
            rows.append({"method": numbers["method"], "n_labelled": numbers["n_labelled"], "region": region,
                         "n_subsets": numbers["n_subsets"], "mean_dice": cell["mean"], "sd_dice": cell["sd"],
                         "dice_per_subset": cell["per_subset"]})
    return rows


def plot_curve(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Plot :func:`curve_rows` as a PNG: one panel per region, the mean over regions last; x = labelled cases
    (log2 axis, ticks at the n values), y = Dice, one line per method with error bars of +/- 1 s.d. over subsets.

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no curve rows to plot (curve_rows returned nothing)")
    regions = list(dict.fromkeys(r["region"] for r in rows))
    if MEAN_REGION in regions:
        regions.append(regions.pop(regions.index(MEAN_REGION)))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    panels = []
    for region in regions:
        lines = []
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method and r["region"] == region
                           and math.isfinite(r["mean_dice"])), key=lambda r: r["n_labelled"])
            lines.append((str(method), [(r["n_labelled"], r["mean_dice"], r["sd_dice"]) for r in mine]))
        panels.append(("mean over regions" if region == MEAN_REGION else str(region), lines))
    return plot_curves(panels, path, xlabel="labelled training cases",
                       ylabel="Dice (test cases), ± 1 s.d. over subsets", title=title,
                       log2_xticks=sorted({int(r["n_labelled"]) for r in rows}), image_format="png")


# ------------------------------------------------------------------------------------------ paired comparison

def hierarchical_bootstrap(groups: Sequence[np.ndarray], n_boot: int, seed: int = 0) -> np.ndarray:
    """Two-level bootstrap distribution of the mean of group means.

    Each replicate draws ``len(groups)`` groups with replacement and, inside each drawn group, as many values as
    it holds, with replacement; its statistic is the mean over drawn groups of the mean of their drawn values.
    Vectorised over replicates (in chunks of at most :data:`BOOTSTRAP_CHUNK_ELEMENTS` elements).

    Args:
        groups: one 1-D array of finite values per group (here: per-case differences of one subset).
        n_boot: number of replicates.
        seed: seed of ``numpy.random.default_rng``; equal seeds give equal distributions.

    Raises:
        ValueError: no group, an empty group, or ``n_boot < 1``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("the bootstrap needs at least one group and no empty group")
    rng = np.random.default_rng(seed)
    sizes = np.array([len(g) for g in groups])
    n_groups, width = len(groups), int(sizes.max())
    padded = np.zeros((n_groups, width))
    for i, g in enumerate(groups):
        padded[i, :len(g)] = g
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // (n_groups * width))
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        drawn = rng.integers(0, n_groups, size=(b, n_groups))                      # subsets, with replacement
        drawn_sizes = sizes[drawn]
        picks = rng.integers(0, drawn_sizes[..., None], size=(b, n_groups, width))  # cases inside each subset
        valid = np.arange(width) < drawn_sizes[..., None]                           # only n_s draws count
        sums = np.where(valid, padded[drawn[..., None], picks], 0.0).sum(-1)
        out[start:start + b] = (sums / drawn_sizes).mean(-1)
    return out


def paired_comparison(scores: Mapping[Run, dict], method_a: str, method_b: str, metric: str = "dice",
                      n_boot: int = 10000, seed: int = 0) -> list[dict]:
    """Paired difference ``a - b`` of a per-case metric, per n_labelled and region.

    Runs of both methods with the same ``(n_labelled, subset)`` are paired (same labelled cases), and within them
    the same test cases. The estimate is the mean over paired subsets of the mean per-case difference (the pooled
    mean when every subset has the same test cases); cases where either value is NaN are skipped. The interval is
    the percentile interval (:data:`CI_LEVEL`) of :func:`hierarchical_bootstrap` over subsets and test cases, and
    ``p(a > b)`` the fraction of bootstrap means above 0. Every region uses the same seed.

    Returns:
        One row per (n_labelled where both methods have runs, region incl. ``"mean"``): ``method_a``,
        ``method_b``, ``metric``, ``n_labelled``, ``region``, ``n_subsets`` (paired subsets used), ``n_cases``
        (distinct test cases used), ``mean_diff``, ``ci_low``, ``ci_high``, ``p(a > b)``, ``unpaired``
        (``{method: [subsets without a partner]}``, empty when all pair) and ``unpaired_cases`` (test-case
        predictions of paired subsets that only one method has). NaN where nothing is paired.

    Raises:
        ValueError: a method has no runs, both methods are the same, the metric is unknown or ``n_boot < 1``.
    """
    index = _index(scores)
    for method in (method_a, method_b):
        if method not in index:
            raise ValueError(f"no runs of method {method!r}; methods scored: {list(index)}")
    if method_a == method_b:
        raise ValueError(f"compare two different methods, got {method_a!r} twice")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_metric(scores, metric)
    regions = _regions(scores)
    tail = 100 * (1 - CI_LEVEL) / 2
    rows = []
    for n in sorted(set(index[method_a]) & set(index[method_b])):
        runs_a, runs_b = index[method_a][n], index[method_b][n]
        paired = sorted(set(runs_a) & set(runs_b))
        unpaired = {m: sorted(set(mine) - set(other))
                    for m, mine, other in ((method_a, runs_a, runs_b), (method_b, runs_b, runs_a))}
        unpaired = {m: s for m, s in unpaired.items() if s}
        for region in regions:
            groups, cases, unpaired_cases = [], set(), 0
            for s in paired:
                va, vb = _case_values(runs_a[s], region, metric), _case_values(runs_b[s], region, metric)
                common = sorted(set(va) & set(vb))
                unpaired_cases += len(set(va) ^ set(vb))
                diff = np.array([va[c] - vb[c] for c in common], dtype=float)
                finite = np.isfinite(diff)
                cases.update(c for c, keep in zip(common, finite) if keep)
                if finite.any():
                    groups.append(diff[finite])
            if groups:
                estimate = float(np.mean([g.mean() for g in groups]))
                boot = hierarchical_bootstrap(groups, n_boot, seed)
                ci_low, ci_high = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
                p_greater = float(np.mean(boot > 0))
            else:
                estimate = ci_low = ci_high = p_greater = math.nan
            rows.append({"method_a": method_a, "method_b": method_b, "metric": metric, "n_labelled": n,
                         "region": region, "n_subsets": len(groups), "n_cases": len(cases), "mean_diff": estimate,
                         "ci_low": ci_low, "ci_high": ci_high, "p(a > b)": p_greater, "unpaired": unpaired,
                         "unpaired_cases": unpaired_cases})
    return rows


# -------------------------------------------------------------------------------------------------- writing

def _pairedmarkdown_table(rows: Sequence[dict], labels: Mapping[str, str]) -> str:
    a, b, metric = rows[0]["method_a"], rows[0]["method_b"], rows[0]["metric"]
    fmt = lambda v: "n/a" if not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
    table = [{"n_labelled": r["n_labelled"], "region": r["region"], "mean diff (a - b)": fmt(r["mean_diff"]),
              f"{100 * CI_LEVEL:g} % CI": "n/a" if not math.isfinite(r["ci_low"])
              else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
              "p(a > b)": fmt(r["p(a > b)"]), "subsets": r["n_subsets"], "cases": r["n_cases"],
              "unpaired subsets": "; ".join(f"{labels.get(m, m)}: {s}" for m, s in r["unpaired"].items()) or "-"}
             for r in rows]
    return (f"## {labels.get(a, a)} (a) vs {labels.get(b, b)} (b): {metric}\n\n"
            f"Paired by labelled subset and test case; {100 * CI_LEVEL:g} % interval from a two-level bootstrap "
            f"(subsets, then test cases).\n\n" + markdown_table(table))


def summarymarkdown_table(results: Mapping[str, Any]) -> str:
    """A short report from a ``results.json`` dict: the setup (``meta``), Dice per region and HD95 (mean ± s.d.
    over subsets, one row per method and level) and every paired comparison on the mean over regions."""
    meta, labels = results.get("meta") or {}, results.get("methods_labels") or {}
    lines = []
    if meta:
        scale = meta.get("scale") or {}
        lines.append("## Setup\n")
        for key, value in (("command", meta.get("command")), ("wall time", _minutes(meta.get("wall_time_s"))),
                           ("training wall time", _minutes(meta.get("training_wall_time_s"))),
                           ("machine", meta.get("machine")), ("versions", meta.get("versions")),
                           ("scale", {k: v for k, v in scale.items() if k != "name"} or None),
                           ("test cases", meta.get("n_test_cases"))):
            if value is not None:
                lines.append(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}")
        lines.append("")
    rows = results.get("table") or []
    if rows:
        regions = list(rows[0]["values"])
        lines.append("## Dice and HD95 on the held-out test cases (mean ± s.d. over labelled subsets)\n")
        table = []
        for row in rows:
            line = {"method": labels.get(row["method"], row["method"]), "labelled cases": row["n_labelled"],
                    "subsets": row["n_subsets"]}
            for region in regions:
                cell = row["values"][region]["dice"]
                line[f"{region} Dice"] = _mean_sd(_float(cell["mean"]), _float(cell["sd"]), 3)
            cell = row["values"][regions[-1]]["hd95_mm"]
            line[f"{regions[-1]} HD95 (mm)"] = _mean_sd(_float(cell["mean"]), _float(cell["sd"]), 1)
            table.append(line)
        lines.append(markdown_table(table))
    for comparison in results.get("paired") or []:
        mean_rows = [r for r in comparison if r["region"] == MEAN_REGION] or comparison
        if not mean_rows:
            continue
        a, b = mean_rows[0]["method_a"], mean_rows[0]["method_b"]
        lines.append(f"## {labels.get(a, a)} minus {labels.get(b, b)}: Dice ({mean_rows[0]['region']}), paired\n")
        lines.append(markdown_table([{"labelled cases": r["n_labelled"],
                                 "mean difference": f"{_float(r['mean_diff']):+.4f}",
                                 "95 % CI": f"[{_float(r['ci_low']):+.4f}, {_float(r['ci_high']):+.4f}]",
                                 "p(a > b)": f"{_float(r['p(a > b)']):.3f}", "subsets": r["n_subsets"],
                                 "test cases": r["n_cases"]} for r in mean_rows]))
    return "\n".join(lines)


def _minutes(seconds: Any) -> str | None:
    return None if seconds is None else f"{float(seconds) / 60:.1f} min"


def write_results(scores: Mapping[Run, dict], out_dir: str | os.PathLike,
                  methods_labels: Mapping[str, str] | None = None,
                  comparisons: Sequence[tuple[str, str]] = (("ssl_vf", "scratch"),), overwrite: bool = False,
                  meta: dict | None = None) -> dict[str, Path]:
    """Write the benchmark's results to ``out_dir``.

    Files: ``results.json`` (all numbers: per run the summary means and per-case :data:`TABLE_METRICS`, the table
    numbers, the curve rows, the paired comparisons, ``meta``; NaN as null), ``table.md`` and ``table.csv``
    (:func:`results_table`), ``curve.png`` (:func:`plot_curve`) and ``paired.md`` (:func:`paired_comparison` for
    each comparison whose two methods were scored; the others are listed as skipped).

    Args:
        scores: :func:`score_runs` output.
        out_dir: output folder (created).
        methods_labels: display names of method keys for the table, plot and ``paired.md`` (default: the keys).
        comparisons: ``(method_a, method_b)`` pairs to compare.
        overwrite: replace an existing ``results.json``.
        meta: anything JSON-serialisable to keep beside the numbers (e.g. the experiment's settings).

    Returns:
        ``{'results': ..., 'table': ..., 'table_csv': ..., 'curve': ..., 'paired': ...}`` paths.

    Raises:
        FileExistsError: ``out_dir/results.json`` exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out / RESULTS_FILE} already exists; use --overwrite to replace it")
    labels = {m: m for m in _index(scores)}
    labels.update(methods_labels or {})
    out.mkdir(parents=True, exist_ok=True)

    table = results_table(scores)
    write_table([{**row, "method": labels[row["method"]]} for row in table], out / "table")
    curve = curve_rows(scores)
    plot_curve([{**row, "method": labels[row["method"]]} for row in curve], out / "curve.png",
               title="Dice vs labelled training cases")

    paired, skipped, sections = [], [], []
    for method_a, method_b in comparisons:
        if method_a not in labels or method_b not in labels:
            skipped.append([method_a, method_b])
            continue
        rows = paired_comparison(scores, method_a, method_b)
        paired.append(rows)
        if rows:
            sections.append(_pairedmarkdown_table(rows, labels))
        else:
            sections.append(f"## {labels[method_a]} vs {labels[method_b]}\n\nno n_labelled with runs of both.\n")
    if skipped:
        sections.append("Skipped (method not scored): " + ", ".join(f"{a} vs {b}" for a, b in skipped) + "\n")
    (out / "paired.md").write_text("\n".join(sections) if sections else "(no comparison requested)\n")

    metric_keys = [m for m, _ in TABLE_METRICS]
    runs = [{"method": run.method, "n_labelled": run.n_labelled, "subset": run.subset, "fold_dir": run.fold_dir,
             "n_cases": len(summary["cases"]), "mean": summary["mean"],
             "cases": {case: {region: {m: values.get(m) for m in metric_keys} for region, values in per.items()}
                       for case, per in summary["cases"].items()}}
            for run, summary in scores.items()]
    results = {"meta": meta or {}, "methods_labels": labels, "table_metrics": [list(m) for m in TABLE_METRICS],
               "runs": runs, "table": table_numbers(scores), "curve": curve, "paired": paired,
               "paired_skipped": skipped}
    results = json_safe(results)
    (out / "summary.md").write_text(summarymarkdown_table(results))
    atomic_write_json(results, out / RESULTS_FILE, overwrite=True)  # last: a crash leaves no results.json
    return {"results": out / RESULTS_FILE, "table": out / "table.md", "table_csv": out / "table.csv",
            "curve": out / "curve.png", "paired": out / "paired.md", "summary": out / "summary.md"}
