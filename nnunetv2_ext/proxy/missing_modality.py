"""The missing-modality benchmark on the CPU proxy (``benchmarks/missing_modality_proxy.py``; protocol and results in
``benchmarks/MISSING_MODALITY.md``).

On the proxy data of ``nnunetv2_ext proxy make`` (the target cohort: 16 labelled cases, 12 held-out test cases, T1,
T1Gd, T2, FLAIR), with the ``cpu`` scale (nnU-Net's 3d_fullres at 4 mm, 32^3 patches, batch 2, 4 stages of 16-128
features, half-width encoders for the multi-encoder, 200 steps: :data:`nnunetv2_ext.proxy.experiment.SCALES`; the
2d configuration predicts ~10x slower on the CPU, ~300 tiles per case), every model trained on the whole pool (fold
0, validated on the test cases) through ``nnUNetv2_train``:

- ``me_dropout``: the multi-encoder with modality dropout (``nnUNetTrainerMultiEncoderModalityDropout``);
- ``me``: the multi-encoder without dropout;
- ``vanilla``: nnU-Net's PlainConvUNet, the absent channels zero-filled at prediction;
- ``vanilla_dropout``: PlainConvUNet trained with the same dropout over its input channels
  (``nnUNetTrainerVanillaChannelDropout``; ModDrop, Neverova et al., TPAMI 2016), zero-filled at prediction;
- ``single_<modality>``: a PlainConvUNet per modality on a restricted dataset (``nnunetv2_ext dataset restrict``), the
  reference of the four one-modality rows.

The first four go through ``nnunetv2_ext benchmark missing-modality`` (15 subsets each); the single-modality models
are scored on their own final-validation predictions (the same test cases). Every step is skipped when its output
exists, so rerunning resumes.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from nnunetv2_ext.io_utils import atomic_write_json, load_json

SCALE = "cpu"
SINGLE_ID0 = 611  # restricted datasets 611..614, one per modality in channel order


@dataclass(frozen=True)
class MMMethod:
    label: str
    trainer: str          # without the schedule suffix
    multi_encoder: bool


METHODS: Dict[str, MMMethod] = {
    # in the order they are trained and benchmarked: the main comparison (dropout vs zero-fill) first
    "me_dropout": MMMethod("Multi-encoder + modality dropout", "nnUNetTrainerProxyMultiEncoderModalityDropout", True),
    "vanilla": MMMethod("nnU-Net, absent channels zero-filled", "nnUNetTrainerProxyVanilla", False),
    "vanilla_dropout": MMMethod("nnU-Net + channel dropout, zero-filled", "nnUNetTrainerProxyVanillaChannelDropout",
                                False),
    "me": MMMethod("Multi-encoder, no dropout", "nnUNetTrainerProxyMultiEncoder", True),
}
#: (a, b): a minus b on the 15-subset mean Dice, with a bootstrap CI over test cases.
COMPARISONS = (("me_dropout", "vanilla"), ("me_dropout", "vanilla_dropout"), ("me_dropout", "me"),
               ("vanilla_dropout", "vanilla"))


def _scale(manifest: dict):
    from nnunetv2_ext.proxy.experiment import SCALES

    return replace(SCALES[SCALE], n_labelled=(len(manifest["target_train_cases"]),), repeats=1, methods=())


def prepare_datasets(out: Path, manifest: dict, env: dict, echo: Callable[[str], None] = print) -> List[str]:
    """Restricted one-modality datasets, fingerprints and plans (``--no_pp``), the proxy plans, preprocessing and the
    splits (fold 0: pool -> test cases, copied to the restricted datasets). Returns the restricted datasets' names."""
    from nnunetv2_ext.data.restrict import restrict_dataset
    from nnunetv2_ext.dataset_json import channel_names
    from nnunetv2_ext.proxy.experiment import _check, plans_names, write_proxy_plans, write_proxy_splits

    scale = _scale(manifest)
    raw, preprocessed, logs = out / "nnUNet_raw", out / "nnUNet_preprocessed", out / "logs_missing_modality"
    logs.mkdir(parents=True, exist_ok=True)
    target = manifest["target_dataset"]
    names = channel_names(load_json(raw / target / "dataset.json"))
    singles = []
    for i, name in enumerate(names):
        found = sorted(raw.glob(f"Dataset{SINGLE_ID0 + i:03d}_*"))
        folder = found[0] if found else restrict_dataset(raw, target, [name], SINGLE_ID0 + i,
                                                         f"{target.split('_', 1)[1]}_{name}")
        singles.append(folder.name)
    datasets = [target, *singles]
    env = {**env, "nnUNet_n_proc_DA": "1"}
    ids = [d[len("Dataset"):len("Dataset") + 3] for d in datasets]
    if not all((preprocessed / d / "nnUNetPlans.json").is_file() for d in datasets):
        echo("fingerprint and plan (nnUNetv2_plan_and_preprocess --no_pp)")
        _check(["nnUNetv2_plan_and_preprocess", "-d", *ids, "-c", scale.configuration, "--no_pp", "-npfp", "1"],
               env, logs / "plan.log")
    write_proxy_plans(preprocessed, [target], target, scale)
    write_proxy_plans(preprocessed, singles, target, scale, multi_encoder=False)
    vanilla_name, _ = plans_names(scale)
    n_cases = len(manifest["target_train_cases"]) + len(manifest["test_cases"])
    data_dirs = [preprocessed / d / f"{vanilla_name}_{scale.configuration}" for d in datasets]
    if not all(d.is_dir() and len(list(d.glob("*.pkl"))) >= n_cases for d in data_dirs):
        echo(f"preprocess with {vanilla_name} (nnUNetv2_preprocess)")
        _check(["nnUNetv2_preprocess", "-d", *ids, "-plans_name", vanilla_name, "-c", scale.configuration, "-np",
                "1"], env, logs / "preprocess.log")
    write_proxy_splits(preprocessed / target, manifest, scale, manifest["spec"]["seed"])
    splits = (preprocessed / target / "splits_final.json").read_text()
    for d in singles:
        (preprocessed / d / "splits_final.json").write_text(splits)
    return singles


def build_jobs(out: Path, manifest: dict, singles: Sequence[str], suffix: str, methods: Sequence[str]):
    """One training job per method and one per restricted dataset, all fold 0."""
    from nnunetv2_ext.proxy.experiment import Job, _train_cmd, fold_dir, plans_names

    scale = _scale(manifest)
    vanilla_plans, me_plans = plans_names(scale)
    target, c = manifest["target_dataset"], scale.configuration
    jobs = []
    for key in methods:
        m = METHODS[key]
        results, plans, trainer = out / f"mm_results_{suffix}" / key, me_plans if m.multi_encoder else vanilla_plans, \
            f"{m.trainer}_{suffix}"
        jobs.append(Job(key, _train_cmd(target, 0, trainer, plans, "cpu", configuration=c), results,
                        fold_dir(results, target, trainer, plans, 0, c)))
    for d in singles:
        key = "single_" + d.rsplit("_", 1)[1]
        results, trainer = out / f"mm_results_{suffix}" / key, f"nnUNetTrainerProxyVanilla_{suffix}"
        jobs.append(Job(key, _train_cmd(d, 0, trainer, vanilla_plans, "cpu", configuration=c), results,
                        fold_dir(results, d, trainer, vanilla_plans, 0, c)))
    return jobs


def bootstrap_difference(a: np.ndarray, b: np.ndarray, n: int = 10000, seed: int = 0) -> Dict[str, float]:
    """Mean of ``a - b`` (paired per case) with a 95 % percentile bootstrap CI over cases and p(mean > 0)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci_low": float(np.percentile(means, 2.5)),
            "ci_high": float(np.percentile(means, 97.5)), "p_greater": float((means > 0).mean()), "n_cases": len(diff)}


def per_case_average(bench_dir: Path, regions: Sequence[str]) -> Dict[str, float]:
    """Per test case: Dice averaged over the 15 subsets and ``regions`` (from ``scores/<subset>.json``)."""
    per_case: Dict[str, List[float]] = {}
    for score in sorted((bench_dir / "scores").glob("*.json")):
        for case, metrics in load_json(score)["cases"].items():
            per_case.setdefault(case, []).extend(metrics[r]["dice"] for r in regions)
    return {c: float(np.nanmean(v)) for c, v in per_case.items()}


def run_missing_modality_proxy(out: str | os.PathLike, results: str | os.PathLike, suffix: str = SCALE,
                               methods: Sequence[str] = tuple(METHODS), lanes: int = 2,
                               n_test: Optional[int] = None, report_only: bool = False,
                               echo: Callable[[str], None] = print) -> Dict[str, Path]:
    """Train, predict, score; write the combined table, heat map and comparison to ``results``.

    Args:
        out: the folder of ``nnunetv2_ext proxy make``.
        results: where the tables go (e.g. ``benchmarks/missing_modality``).
        suffix: the trainers' schedule (``cpu``, or ``smoke`` for a toy run of the pipeline).
        n_test: benchmark only the first ``n_test`` test cases (the single-modality models are scored on the same);
            None: all.
        report_only: train and predict nothing; write the tables of what is finished (methods with all 15 subsets,
            trained single-modality models).

    Each lane runs chains one after another: a method's training then its benchmark (me_dropout, vanilla,
    vanilla_dropout, me), then the single-modality trainings.
    """
    from nnunetv2_ext.evaluation.metrics import evaluate_folders, regions_from_dataset_json
    from nnunetv2_ext.evaluation.missing_modality import (
        ModelInfo,
        canonical_names,
        describe_model,
        ordered_subsets,
        plot_heatmap,
        subset_key,
    )
    from nnunetv2_ext.proxy.experiment import Runner, _run_logged, nnunet_env

    out, results = Path(out).resolve(), Path(results).resolve()
    manifest = load_json(out / "proxy_manifest.json")
    scale = _scale(manifest)
    env = nnunet_env(out, scale)
    t0 = time.time()
    singles = prepare_datasets(out, manifest, env, echo)
    jobs = build_jobs(out, manifest, singles, suffix, methods)
    logs = out / f"logs_missing_modality_{suffix}"
    target = manifest["target_dataset"]
    raw = out / "nnUNet_raw" / target
    bench_root = out / f"mm_bench_{suffix}"
    bench_root.mkdir(parents=True, exist_ok=True)
    test_cases = list(manifest["test_cases"])[:n_test]
    cases_file = bench_root / "test_cases.txt"
    if cases_file.is_file() and cases_file.read_text().split() != test_cases:
        raise ValueError(f"{bench_root} holds predictions of other test cases ({cases_file}); delete it or give the "
                         f"same --n-test")
    cases_file.write_text("".join(f"{c}\n" for c in test_cases))
    by_key = {j.name: j for j in jobs}
    benches = {key: bench_root / key for key in methods}
    seconds: Dict[str, float] = {}

    def chain(job) -> None:
        """Train (skipped when done), then, for the four methods, the 15-subset benchmark, in one lane."""
        t = time.time()
        if Runner([job], env, logs, 1, echo).run()[job.name] == "failed":
            raise RuntimeError(f"training {job.name} failed; log in {logs}; rerun to resume")
        seconds[f"train {job.name}"] = round(time.time() - t, 1)
        if job.name in benches:
            t = time.time()
            cmd = ["nnunetv2_ext", "benchmark", "missing-modality", "-i", str(raw / "imagesTr"), "--ref",
                   str(raw / "labelsTr"), "--cases", str(cases_file), "-m", str(job.fold_dir.parent), "-f", "0",
                   "-o", str(benches[job.name]), "-device", "cpu"]
            code, tail = _run_logged(cmd, env, logs / f"benchmark_{job.name}.log")
            if code != 0:
                raise RuntimeError(f"{shlex.join(cmd)} exited {code}:\n{tail}")
            seconds[f"benchmark {job.name}"] = round(time.time() - t, 1)
            echo(f"benchmark {job.name} done at {(time.time() - t0) / 60:.1f} min")

    if not report_only:
        echo(f"{len(jobs)} chains (training, then the benchmark for the methods) on {lanes} lanes; test cases "
             f"{len(test_cases)}")
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(chain, jobs))
    finished = [k for k in methods if len(list((benches[k] / "scores").glob("*.json"))) == 15
                and (benches[k] / "missing_modality.md").is_file()]
    if not finished:
        raise RuntimeError(f"no method has finished its 15 subsets in {bench_root}")
    methods = finished

    dataset_json = load_json(raw / "dataset.json")
    regions = list(regions_from_dataset_json(dataset_json))
    names = [dataset_json["channel_names"][k] for k in sorted(dataset_json["channel_names"], key=int)]
    subsets = ordered_subsets(names)
    mean_dice: Dict[str, Dict[str, Dict[str, float]]] = {}  # method -> subset key -> region -> Dice
    for key in methods:
        mean_dice[key] = {subset_key(s): {r: load_json(benches[key] / "scores" / f"{subset_key(s)}.json")["mean"][r]
                                          ["dice"] for r in regions} for s in subsets}
    single_dice: Dict[str, Dict[str, float]] = {}
    for d in singles:
        key = "single_" + d.rsplit("_", 1)[1]
        validation = by_key[key].fold_dir / "validation"
        if not all((validation / f"{c}.nii.gz").is_file() for c in test_cases):
            continue  # not trained (yet)
        subset_dir = bench_root / key
        subset_dir.mkdir(exist_ok=True)
        for c in test_cases:  # the benchmark's test cases only
            if not (subset_dir / f"{c}.nii.gz").exists():
                os.symlink(validation / f"{c}.nii.gz", subset_dir / f"{c}.nii.gz")
        summary = evaluate_folders(raw / "labelsTr", subset_dir, dataset_json, strict=False,
                                   output=bench_root / f"{key}.json", overwrite=True)  # recomputed each run
        single_dice[d.rsplit("_", 1)[1]] = {r: summary["mean"][r]["dice"] for r in regions}

    infos: Dict[str, ModelInfo] = {key: describe_model(by_key[key].fold_dir.parent) for key in methods}
    per_case = {key: per_case_average(benches[key], regions) for key in methods}
    comparisons = []
    for a, b in COMPARISONS:
        if a in per_case and b in per_case:
            cases = sorted(per_case[a])
            comparisons.append({"a": a, "b": b, **bootstrap_difference(np.array([per_case[a][c] for c in cases]),
                                                                        np.array([per_case[b][c] for c in cases]))})
    results.mkdir(parents=True, exist_ok=True)
    canon = canonical_names(names)
    order = [names[canon.index(c)] for c in ("FLAIR", "T1", "T1Gd", "T2")] if canon else names
    head = [*order, *[f"{key} {r}" for key in methods for r in regions], "single-modality model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv_rows = [["subset", *[f"{key}_{r}" for key in methods for r in regions + ['mean']],
                 *[f"single_{r}" for r in regions]]]
    for s in subsets:
        k = subset_key(s)
        marks = ["●" if n in s else "○" for n in order]
        vals = [f"{100 * mean_dice[key][k][r]:.1f}" for key in methods for r in regions]
        single = single_dice.get(s[0]) if len(s) == 1 else None
        ref = " / ".join(f"{100 * single[r]:.1f}" for r in regions) if single else ""
        lines.append("| " + " | ".join([*marks, *vals, ref]) + " |")
        csv_rows.append([" + ".join(s), *[v for key in methods for v in
                                          [*(mean_dice[key][k][r] for r in regions),
                                           float(np.mean([mean_dice[key][k][r] for r in regions]))]],
                         *([single[r] for r in regions] if single else [""] * len(regions))])
    averages = {key: {r: float(np.mean([mean_dice[key][subset_key(s)][r] for s in subsets])) for r in regions}
                for key in methods}
    lines.append("| " + " | ".join([f"**average ({len(subsets)})**", *[""] * (len(order) - 1),
                                    *[f"**{100 * averages[key][r]:.1f}**" for key in methods for r in regions], ""])
                 + " |")
    avg_lines = ["| method | " + " | ".join(regions) + " | mean | how the absent modalities are handled |",
                 "|---|" + "---|" * (len(regions) + 2)]
    for key in methods:
        a = averages[key]
        avg_lines.append(f"| {METHODS[key].label} (`{key}`) | " + " | ".join(f"{100 * a[r]:.2f}" for r in regions)
                         + f" | {100 * np.mean(list(a.values())):.2f} | {infos[key].note} |")
    cmp_lines = ["| comparison | mean Dice difference (15 subsets x regions, %) | 95 % CI (bootstrap over cases) "
                 "| p(a > b) |", "|---|---|---|---|"]
    for c in comparisons:
        cmp_lines.append(f"| {c['a']} - {c['b']} | {100 * c['mean']:+.2f} | [{100 * c['ci_low']:+.2f}, "
                         f"{100 * c['ci_high']:+.2f}] | {c['p_greater']:.3f} |")
    (results / "table.md").write_text(
        f"Dice (%) on {len(test_cases)} held-out proxy cases per subset (● present, ○ absent); columns "
        f"method x region; the last column: the dedicated one-modality model's {' / '.join(regions)}.\n\n"
        + "\n".join(lines) + "\n\n15-subset averages (Dice %):\n\n" + "\n".join(avg_lines) + "\n\nPaired "
        "differences:\n\n" + "\n".join(cmp_lines) + "\n")
    import csv

    with open(results / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    heat = {"rows": [" + ".join(s) for s in subsets], "columns": [f"{key}\n{r}" for key in methods for r in regions],
            "dice_percent": [[100 * mean_dice[key][subset_key(s)][r] for key in methods for r in regions]
                             for s in subsets], "title": "Dice (%) per subset: " + ", ".join(methods)}
    atomic_write_json(heat, results / "heatmap.json", overwrite=True)
    plot_heatmap(heat, results / "heatmap.png")
    for key in methods:
        (results / f"{key}.md").write_text((benches[key] / "missing_modality.md").read_text())
    meta = {"command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]), "suffix": suffix,
            "scale": asdict(scale), "n_test_cases": len(test_cases),
            "wall_time_s": {"this_invocation": round(time.time() - t0, 1), **seconds}, "report_only": report_only,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "averages": averages, "single_modality": single_dice, "comparisons": comparisons,
            "test_cases": test_cases}
    atomic_write_json(meta, results / "run.json", overwrite=True)
    echo(f"done in {(time.time() - t0) / 60:.1f} min; results in {results}")
    return {"table": results / "table.md", "heatmap": results / "heatmap.png", "run": results / "run.json"}
