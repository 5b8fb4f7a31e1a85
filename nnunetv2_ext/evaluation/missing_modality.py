"""The missing-modality benchmark: one trained model, every non-empty subset of its modalities, one table.

The field reports segmentation from incomplete MRI as Dice of WT / TC / ET for each of the 15 non-empty subsets of
{FLAIR, T1, T1Gd, T2} and their average, on BraTS 2018 with the split of RFNet (Ding et al., "RFNet: Region-aware
Fusion Network for Incomplete Multi-modal Brain Tumor Segmentation", ICCV 2021); mmFormer (Zhang et al., "mmFormer:
Multimodal Medical Transformer for Incomplete Multimodal Learning of Brain Tumor Segmentation", MICCAI 2022,
arXiv:2206.02425), ShaSpec (Wang et al., "Multi-modal Learning with Missing Modality via Shared-Specific Feature
Modelling", CVPR 2023, arXiv:2307.14126) and DeMoSeg (Li et al., "Decoupling Feature Representations of Ego and Other
Modalities for Incomplete Multi-modal Brain Tumor Segmentation", 2024, arXiv:2408.08708) use the same table. Its rows
follow the authors' code: T2, T1Gd, T1, FLAIR, then the pairs, the triples and all four (:data:`PAPER_ORDER`).

:func:`run_missing_modality` predicts every subset with nnU-Net's preprocessing and sliding window
(:mod:`nnunetv2_ext.inference.subset_predict`: a multi-encoder masks the absent encoders out of its fusion, a network
with one input stack sees the absent channels zero-filled), scores each subset with
:func:`~nnunetv2_ext.evaluation.metrics.evaluate_folders` (every metric of ``nnunetv2_ext evaluate``) and writes the
table (``missing_modality.md`` / ``.csv``) and a heat map (``missing_modality_heatmap.png``, drawn from
``missing_modality_heatmap.json``). A finished subset leaves ``predictions/<subset>/.done``; a rerun predicts only the
subsets without it. The CLI is ``nnunetv2_ext benchmark missing-modality`` (:mod:`nnunetv2_ext.cli_missing_modality`).
"""
from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_ext.dataset_json import channel_names
from nnunetv2_ext.evaluation.metrics import evaluate_folders
from nnunetv2_ext.io_utils import atomic_write_json, load_json

#: The four BraTS modalities under the papers' names, and the names datasets give them (lower case, '-' / '_' / ' '
#: removed): BraTS 2018-2021 file suffixes, BraTS 2023 suffixes, nnU-Net's Dataset137 and this package's names.
CANONICAL = ("FLAIR", "T1", "T1Gd", "T2")
ALIASES = {"flair": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR",
           "t1": "T1", "t1n": "T1", "t1w": "T1", "t1native": "T1",
           "t1gd": "T1Gd", "t1ce": "T1Gd", "t1c": "T1Gd", "t1post": "T1Gd", "t1contrast": "T1Gd",
           "t2": "T2", "t2w": "T2"}

#: The 15 subsets in the row order of RFNet's and mmFormer's tables and code (``mask_name``: t2, t1c, t1, flair,
#: t1c+t2, t1c+t1, flair+t1, t1+t2, flair+t2, flair+t1c, flair+t1c+t1, flair+t1+t2, flair+t1c+t2, t1c+t1+t2, all).
PAPER_ORDER: Tuple[frozenset, ...] = tuple(frozenset(s) for s in (
    ("T2",), ("T1Gd",), ("T1",), ("FLAIR",),
    ("T1Gd", "T2"), ("T1Gd", "T1"), ("FLAIR", "T1"), ("T1", "T2"), ("FLAIR", "T2"), ("FLAIR", "T1Gd"),
    ("FLAIR", "T1Gd", "T1"), ("FLAIR", "T1", "T2"), ("FLAIR", "T1Gd", "T2"), ("T1Gd", "T1", "T2"),
    ("FLAIR", "T1Gd", "T1", "T2")))

#: The published 15-subset averages (Dice %, WT / TC / ET; BraTS 2018, RFNet split), for the table's comparison line.
PUBLISHED_AVERAGES = {"RFNet": (85.59, 77.73, 59.29), "mmFormer": (84.93, 76.25, 58.44),
                      "ShaSpec": (85.92, 77.45, 61.58), "DeMoSeg": (87.96, 79.79, 64.90)}

DONE = ".done"
TABLE = "missing_modality"
HEATMAP = "missing_modality_heatmap"


def canonical_names(names: Sequence[str]) -> Optional[List[str]]:
    """The papers' name of each channel (:data:`ALIASES`), or None unless the channels are exactly the four BraTS
    modalities."""
    mapped = [ALIASES.get(re.sub(r"[-_ ]", "", n.lower())) for n in names]
    return mapped if sorted(m or "" for m in mapped) == sorted(CANONICAL) else None


def ordered_subsets(names: Sequence[str]) -> List[Tuple[str, ...]]:
    """Every non-empty subset of the channels ``names`` (dataset.json order), in the table's row order.

    For the four BraTS modalities (under any name of :data:`ALIASES`) the order is :data:`PAPER_ORDER`; otherwise
    singles, then pairs, then triples ..., each size in channel order. Within a subset the names keep channel order.

    Raises:
        ValueError: no channels, or a name repeated.
    """
    names = list(names)
    if not names:
        raise ValueError("no channels: the model's dataset.json lists no channel_names")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be distinct to name subsets, got {names}")
    canon = canonical_names(names)
    if canon is not None:
        by_canon = dict(zip(canon, names))
        return [tuple(n for n in names if n in {by_canon[c] for c in subset}) for subset in PAPER_ORDER]
    return [tuple(c) for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]


def subset_key(subset: Sequence[str]) -> str:
    """Folder name of a subset: its names joined by '+', characters outside ``[A-Za-z0-9._-]`` replaced by '_'."""
    return "+".join(re.sub(r"[^A-Za-z0-9._-]", "_", n) for n in subset)


@dataclass(frozen=True)
class ModelInfo:
    """What the table header says about a model."""
    folder: str
    trainer: str
    plans: str
    configuration: str
    names: Tuple[str, ...]
    multi_encoder: bool
    dropout_p: float

    @property
    def note(self) -> str:
        """One line for the header: how the absent modalities reach the network, and whether it trained for it."""
        if self.multi_encoder:
            how = "multi-encoder: the absent modalities' encoders are masked out of the fusion"
        else:
            how = "one input stack (vanilla nnU-Net): the absent channels are zero-filled (zero after normalisation)"
        if self.dropout_p:
            trained = f"trained with modality dropout (p = {self.dropout_p:g} per sample)"
        else:
            trained = ("trained WITHOUT modality dropout: every subset but all modalities is outside its training "
                       "distribution")
        return f"{how}; {trained}"


def describe_model(model_folder: str | os.PathLike) -> ModelInfo:
    """Trainer, plans, configuration, channels, network kind and dropout of a ``TRAINER__PLANS__CONFIGURATION``
    folder (read from its name, plans.json and dataset.json; the trainer class from nnU-Net's search).

    Raises:
        FileNotFoundError: the folder lacks plans.json or dataset.json.
        ValueError: the folder name is not ``TRAINER__PLANS__CONFIGURATION``.
    """
    from nnunetv2_ext.inference.subset_predict import trained_with_dropout

    folder = Path(model_folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} does not exist: -m must be a trained model folder "
                                    f"($nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIGURATION)")
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise ValueError(f"{folder} is not named TRAINER__PLANS__CONFIGURATION (nnU-Net's model folder)")
    trainer, plans_name, configuration = parts
    plans = load_json(folder / "plans.json")
    arch = plans["configurations"][configuration]["architecture"]["network_class_name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nnunetv2_ext.training import exported_trainers

        exported_trainers()  # this package's trainers are importable before nnU-Net's search
        dropout = trained_with_dropout(trainer)
    return ModelInfo(str(folder), trainer, plans_name, configuration,
                     tuple(channel_names(load_json(folder / "dataset.json"))),
                     arch.rsplit(".", 1)[-1] == "MultiEncoderUNet", dropout)


def _case_inputs(images: Path, cases_file: Optional[str], ending: str, work: Path) -> Path:
    """``images`` itself, or (with a case list) a folder of links to the listed cases' files."""
    if cases_file is None:
        return images
    from nnunetv2_ext.data.splits import read_case_list

    wanted = read_case_list(cases_file)
    pattern = re.compile(r"^(.+)_\d{4}" + re.escape(ending) + "$")
    files: Dict[str, List[Path]] = {}
    for p in sorted(images.iterdir()):
        m = pattern.match(p.name)
        if m:
            files.setdefault(m.group(1), []).append(p)
    unknown = [c for c in wanted if c not in files]
    if unknown:
        raise ValueError(f"--cases {cases_file} lists {len(unknown)} case(s) with no image in {images}: {unknown[:10]}")
    target = work / "inputs"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for case in wanted:
        for p in files[case]:
            os.symlink(p.resolve(), target / p.name)
    return target


def run_missing_modality(model_folder: str | os.PathLike, images: str | os.PathLike, ref: str | os.PathLike,
                         output: str | os.PathLike, folds: Sequence[int | str] = (0,),
                         checkpoint: str = "checkpoint_final.pth", device: str = "cpu", use_mirroring: bool = True,
                         num_processes_eval: int = 1, num_processes_export: int = 1,
                         cases_file: Optional[str] = None, echo=print) -> Dict[str, Any]:
    """Predict and score every non-empty subset of the model's modalities; write the table and the heat map.

    Args:
        model_folder: ``TRAINER__PLANS__CONFIGURATION`` folder; a multi-encoder, or any nnU-Net model (its absent
            channels are zero-filled).
        images: ``CASE_XXXX<ending>`` images with every modality (each subset takes its own files).
        ref: reference labels ``CASE<ending>``; it may hold more cases than ``images``.
        output: benchmark folder: ``predictions/<subset>/``, ``scores/<subset>.json`` / ``.csv``, the table and the
            heat map.
        folds, checkpoint, device, use_mirroring: as ``nnUNetv2_predict``'s ``-f``, ``-chk``, ``-device`` and
            ``--disable_tta``.
        num_processes_eval: processes scoring the cases (``evaluate_folders``).
        num_processes_export: 1: resampling and export in this process, case after case; more: nnU-Net's export
            pool of that many processes (started once per subset).
        cases_file: a case list (one id a line, :func:`nnunetv2_ext.data.splits.read_case_list`): predict only
            those cases of ``images``.

    Returns:
        ``{'table': rows, 'files': {name: path}, 'model': ModelInfo, 'predicted': [subsets predicted now]}``.

    Raises:
        FileNotFoundError: a folder or the model's files are missing.
        ValueError: see :func:`describe_model`, :func:`ordered_subsets` and ``evaluate_folders``.
    """
    from nnunetv2_ext.inference.subset_predict import (
        _check_run,
        load_subset_predictor,
        predict_subset_in_process,
    )

    info = describe_model(model_folder)
    images, ref, output = Path(images), Path(ref), Path(output)
    for folder, flag in ((images, "-i"), (ref, "--ref")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder")
    device = _check_run(os.fspath(model_folder), folds, checkpoint, device, num_processes_export, 0.5)
    dataset_json = load_json(Path(model_folder) / "dataset.json")
    ending = dataset_json["file_ending"]
    output.mkdir(parents=True, exist_ok=True)
    inputs = _case_inputs(images, cases_file, ending, output)
    subsets = ordered_subsets(info.names)
    predictor = None
    predicted = []
    for subset in subsets:
        key = subset_key(subset)
        pred_dir = output / "predictions" / key
        if (pred_dir / DONE).is_file():
            continue
        if predictor is None:
            echo(f"loading {info.folder} (folds {', '.join(map(str, folds))})")
            predictor = load_subset_predictor(model_folder, folds, checkpoint, device, use_mirroring, zero_fill=True)
        if pred_dir.exists():
            shutil.rmtree(pred_dir)  # an interrupted subset: predicted anew
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was not trained with modality dropout")  # said in the header
            written = predict_subset_in_process(predictor, inputs, pred_dir, list(subset), num_processes_export)
        atomic_write_json({"subset": list(subset), "n_cases": len(written), "seconds": round(time.time() - t0, 1)},
                          pred_dir / DONE, overwrite=True)
        predicted.append(key)
        echo(f"predicted {key}: {len(written)} cases in {time.time() - t0:.0f} s")

    summaries = {}
    for subset in subsets:
        key = subset_key(subset)
        pred_dir, score = output / "predictions" / key, output / "scores" / f"{key}.json"
        if not score.is_file() or score.stat().st_mtime < (pred_dir / DONE).stat().st_mtime:
            evaluate_folders(ref, pred_dir, dataset_json, file_ending=ending, num_processes=num_processes_eval,
                             output=score, strict=False, overwrite=True)  # a stale score: the subset was redone
        summaries[key] = load_json(score)
    rows = table_rows(subsets, summaries, info.names)
    files = write_outputs(rows, output, info, n_cases=next(iter(summaries.values()))["n_cases"])
    return {"table": rows, "files": files, "model": info, "predicted": predicted}


def table_rows(subsets: Sequence[Tuple[str, ...]], summaries: Dict[str, dict], names: Sequence[str]) -> List[dict]:
    """One row per subset (table order) and the average row: ``subset``, ``present`` (per channel True/False),
    per region ``<region>_<metric>`` means (every metric of the summaries), and ``mean_dice`` over regions."""
    rows = []
    for subset in subsets:
        mean = summaries[subset_key(subset)]["mean"]
        row: Dict[str, Any] = {"subset": " + ".join(subset), "n_present": len(subset),
                               "present": {n: n in subset for n in names}}
        for region, metrics in mean.items():
            for metric, value in metrics.items():
                row[f"{region}_{metric}"] = np.nan if value is None else float(value)
        row["mean_dice"] = float(np.nanmean([row[f"{r}_dice"] for r in mean]))
        rows.append(row)
    average: Dict[str, Any] = {"subset": f"average ({len(rows)} subsets)", "n_present": "", "present": {}}
    for key in rows[0]:
        if key not in average:
            average[key] = float(np.nanmean([r[key] for r in rows]))
    return rows + [average]


def regions_of(rows: Sequence[dict]) -> List[str]:
    return [k[:-len("_dice")] for k in rows[0] if k.endswith("_dice") and k != "mean_dice"]


def heatmap_data(rows: Sequence[dict]) -> Dict[str, Any]:
    """What the heat map shows: one row per subset (no average), columns = regions + mean, Dice in %."""
    regions = regions_of(rows)
    body = [r for r in rows if r["present"]]
    return {"rows": [r["subset"] for r in body], "columns": [*regions, "mean"],
            "dice_percent": [[100 * r[f"{g}_dice"] for g in regions] + [100 * r["mean_dice"]] for r in body]}


def _markdown(rows: Sequence[dict], info: ModelInfo, n_cases: int) -> str:
    regions = regions_of(rows)
    canon = canonical_names(info.names)
    # marker columns in the papers' order (FLAIR, T1, T1Gd, T2) when the channels are the BraTS four
    order = [info.names[canon.index(c)] for c in CANONICAL] if canon else list(info.names)
    lines = [f"# Missing-modality benchmark: {info.trainer}__{info.plans}__{info.configuration}", "",
             f"- Model: `{info.folder}`", f"- {info.note}.",
             f"- Dice (%) on {n_cases} cases per subset of the modalities (● present, ○ absent); rows in the order of "
             f"RFNet / mmFormer (Ding et al. 2021; Zhang et al. 2022)." if canon else
             f"- Dice (%) on {n_cases} cases per subset of the modalities (● present, ○ absent).",
             f"- Mean HD95 (mm) over the regions in the last column; every metric per region in "
             f"`{TABLE}.csv`, per case in `scores/<subset>.csv`.", ""]
    head = [*order, *regions, "mean Dice", "mean HD95"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        marks = [("●" if r["present"].get(n) else "○") for n in order] if r["present"] else \
            [f"**{r['subset']}**", *[""] * (len(order) - 1)]
        values = [f"{100 * r[f'{g}_dice']:.2f}" for g in regions] + [f"{100 * r['mean_dice']:.2f}"]
        hd = np.nanmean([r.get(f"{g}_hd95_mm", np.nan) for g in regions])
        lines.append("| " + " | ".join([*marks, *values, f"{hd:.1f}"]) + " |")
    if canon and {"WT", "TC", "ET"} <= set(regions):
        lines += ["", "Published 15-subset averages (Dice %, WT / TC / ET; BraTS 2018, RFNet split; other data): " +
                  "; ".join(f"{k} {' / '.join(f'{v:.2f}' for v in vals)}" for k, vals in PUBLISHED_AVERAGES.items())
                  + "."]
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[dict], output: Path, info: ModelInfo, n_cases: int) -> Dict[str, Path]:
    """``missing_modality.md`` / ``.csv``, ``missing_modality_heatmap.json`` / ``.png`` in ``output``."""
    files = {"table_md": output / f"{TABLE}.md", "table_csv": output / f"{TABLE}.csv",
             "heatmap_json": output / f"{HEATMAP}.json", "heatmap_png": output / f"{HEATMAP}.png"}
    files["table_md"].write_text(_markdown(rows, info, n_cases))
    columns = ["subset", *info.names, *[k for k in rows[0] if k not in ("subset", "present", "n_present")]]
    with open(files["table_csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r["subset"], *[int(r["present"][n]) if r["present"] else "" for n in info.names],
                             *[r[k] for k in columns[1 + len(info.names):]]])
    data = heatmap_data(rows)
    data["title"] = f"{info.trainer} ({'multi-encoder' if info.multi_encoder else 'zero-filled'})"
    atomic_write_json(data, files["heatmap_json"], overwrite=True)
    plot_heatmap(data, files["heatmap_png"])
    return files


def plot_heatmap(data: Dict[str, Any], path: Path) -> Path:
    """Subset x region heat map of Dice (%), each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(data["dice_percent"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(data["columns"]) + 3, 0.32 * len(data["rows"]) + 1.5))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(data["columns"])), data["columns"])
    ax.set_yticks(range(len(data["rows"])), data["rows"], fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                color="white" if v < 60 else "black")
    ax.set_title(data.get("title", ""), fontsize=9)
    fig.colorbar(im, ax=ax, label="Dice (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
