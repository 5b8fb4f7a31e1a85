"""The proxy benchmark (``nnunetv2_ext proxy run``): few-shot segmentation on the proxy data of
:mod:`nnunetv2_ext.proxy.anatomy`, every method through nnU-Net's own commands.

Protocol (few-shot levels with random subsets: Cox et al. 2024, "BrainSegFounder: Towards 3D Foundation Models for
Neuroimage Segmentation", sec. 2.4.3 / Fig. 5; two-stage SSL: Taheri Otaghsara et al. 2025, "Multi-encoder nnU-Net
outperforms Transformer models with self-supervised pretraining", sec. 4.3; Volume Fusion: Wang et al. 2023,
"MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a Large-Scale Unannotated Dataset",
arXiv:2306.16925, Table 2):

1. ``nnUNetv2_plan_and_preprocess --no_pp`` fingerprints and plans both datasets; the benchmark then writes its own
   plans (``nnUNetPlans_proxy_<scale>``: the target dataset's configuration with the scale's spacing, patch and widths,
   for both datasets so that pretrained and fine-tuned networks share one topology) and the multi-encoder plans
   derived from them, and runs ``nnUNetv2_preprocess`` with them.
2. ``splits_final.json`` of the target dataset: fold 0 trains on the whole labelled pool and validates on the fixed
   held-out test cases; the harness's few-shot folds (:func:`nnunetv2_ext.data.splits.append_few_shot_splits`) draw
   random subsets of the pool with the same test cases; one last fold (the SSL fold) trains on the pool and
   validates on two pool cases, for the self-supervised stage 2, so no method ever sees a test image.
3. Pretraining (one chain per SSL method): stage 1 on the healthy 2-modality cohort (fold ``all``), stage 2 on the
   target pool's 4-modality images (SSL fold, ``-pretrained_weights`` from stage 1: T1 and FLAIR encoders loaded,
   T1Gd and T2 new).
4. Fine-tuning: every method on every fold (whole pool and each subset) with the same schedule; nnU-Net's final
   validation predicts the test cases into ``fold_k/validation``.
5. Scoring and tables through :mod:`nnunetv2_ext.proxy.analysis`, with one more row: the threshold baseline of
   :mod:`nnunetv2_ext.proxy.threshold_baseline` (the best single-modality intensity threshold per region, chosen on
   the training pool), the score below which a method has learnt nothing a threshold could not do.

Each method has its own ``nnUNet_results`` root (``DIR/nnUNet_results/<method>``), so the two SSL methods can use the
same fine-tuning trainer. Every step is skipped when its output exists, and an interrupted training is continued
(``--c``), so running the command again resumes the benchmark. Jobs run in ``--lanes`` parallel subprocesses (one
torch thread each on the CPU).
"""
from __future__ import annotations

import copy
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

from nnunetv2_ext.io_utils import atomic_write_json, load_json

if TYPE_CHECKING:
    from nnunetv2_ext.proxy.analysis import Run

CONFIGURATION = "3d_fullres"  # the default configuration of a scale
FINE_TUNE = "fine_tune"


@dataclass(frozen=True)
class Scale:
    """How big the benchmark is. ``None`` keeps what nnU-Net planned."""
    name: str
    spacing: Optional[float]              # mm, isotropic; None: nnU-Net's planned spacing
    patch_size: Optional[tuple]           # None: nnU-Net's planned patch
    base_features: Optional[int]          # features of the first stage (doubling, capped at 320); None: planned
    max_stages: Optional[int]             # cap on the number of resolution stages; None: planned
    encoder_width: float                  # multi-encoder: width of each encoder relative to the decoder
    batch_size: int
    n_labelled: tuple                     # labelled training cases per few-shot level (the pool size = all)
    repeats: int                          # random subsets per level below the whole pool (BrainSegFounder: 5)
    lanes: int                            # parallel jobs
    device: str
    methods: tuple
    configuration: str = CONFIGURATION   # nnU-Net configuration planned, preprocessed and trained: 3d_fullres or 2d


# CPU scale (2 cores, 24 GiB, <= 90 min for 4 methods x 10 runs + 4 pretraining stages), measured on this machine:
# - 4 mm voxels (brain ~ 40 x 45 x 37 voxels) and a 32^3 patch (128 mm: most of the brain's extent per axis, so a patch
#   sees the tumour with its surroundings). At 3 mm nnU-Net's final validation of the 12 test cases alone took ~100 s
#   per run (36 sliding windows per case); at 4 mm it is 8 windows per case.
# - 4 stages of 16-128 features: vanilla 1.4 M parameters; the multi-encoder with half-width encoders has 1.45 M
#   (parameter-matched; Taheri Otaghsara et al. 2025 sec. 4.1.1 use full width on a GPU). One training step: ~0.45 s
#   (vanilla) and ~0.65 s (multi-encoder) on one core, data augmentation included.
# - 200 steps per fine-tuning run (10 epochs of 20: the CPU trainers in nnunetv2_ext.training.proxy) and 160 per
#   pretraining stage; 3 random subsets per level (Cox et al. 2024 use 5); two lanes of one thread each (one run on two
#   threads is only ~1.15x faster than on one).
SCALES: Dict[str, Scale] = {
    "cpu": Scale("cpu", spacing=4.0, patch_size=(32, 32, 32), base_features=16, max_stages=4, encoder_width=0.5,
                 batch_size=2, n_labelled=(2, 4, 8, 16), repeats=3, lanes=2, device="cpu",
                 methods=("vanilla", "scratch", "ssl_vf", "ssl_swin")),
    # The self-supervised pretraining benchmark on the CPU. Its protocol was fixed before any of its test results
    # existed (benchmarks/PROXY.md says so): nnU-Net's 2d configuration of the proxy data at 4 mm, 32^2 patches,
    # batch 8; every method of the ranking question (vanilla nnU-Net, the multi-encoder from scratch, and the
    # multi-encoder fine-tuned from each of six pretexts, with nnUNetTrainerMultiEncoderSSL's default transfer
    # protocol); 2 and 8 labelled cases x 3 random subsets each (seed of the proxy data), the same 12 held-out test
    # cases for every run; pretraining 2 x 1000 steps per method (healthy cohort, then the labelled pool's images;
    # cross-modality: the pool only), done once and reused by the method's 6 fine-tuning runs; fine-tuning 500 steps
    # (20 epochs x 25; in issue 16's 2d run scratch's training loss had flattened by ~500 steps). Budget: 11
    # pretraining stages of ~220 s and 48 fine-tuning runs of ~150 s on two lanes, ~80 min on 2 cores (<= 90).
    # Trainers: the *_cpu2d classes of nnunetv2_ext.training.proxy.
    "cpu2d": Scale("cpu2d", spacing=4.0, patch_size=(32, 32), base_features=16, max_stages=4, encoder_width=0.5,
                   batch_size=8, n_labelled=(2, 8), repeats=3, lanes=2, device="cpu",
                   methods=("vanilla", "scratch", "ssl_vf", "ssl_swin", "ssl_cm", "ssl_mg", "ssl_mim", "ssl_ps"),
                   configuration="2d"),
    # a toy run of the whole pipeline for the tests (two methods, one level, a handful of steps)
    "smoke": Scale("smoke", spacing=6.0, patch_size=(16, 16, 16), base_features=8, max_stages=3, encoder_width=0.5,
                   batch_size=2, n_labelled=(2,), repeats=1, lanes=1, device="cpu", methods=("scratch", "ssl_vf")),
    "gpu": Scale("gpu", spacing=None, patch_size=None, base_features=None, max_stages=None, encoder_width=1.0,
                 batch_size=2, n_labelled=(2, 4, 8, 16), repeats=5, lanes=1, device="cuda",
                 methods=("vanilla", "scratch", "ssl_vf", "ssl_swin", "ssl_cm", "ssl_mg", "ssl_mim", "ssl_ps")),
}


@dataclass(frozen=True)
class Method:
    label: str
    trainer: str                          # fine-tuning trainer, without the scale suffix
    multi_encoder: bool
    pretext: Optional[str] = None         # pretraining trainer (both stages), without the scale suffix
    two_stage: bool = True                # stage 1 on the healthy cohort, then stage 2 on the target pool; else
                                          # stage 2 only (a pretext that needs modalities the healthy cohort lacks)
    pretrained_by: Optional[str] = None   # fine-tune from this other method's pretraining (an ablation of the
                                          # fine-tuning protocol on the same checkpoint); no pretraining of its own


METHODS: Dict[str, Method] = {
    "vanilla": Method("nnU-Net (PlainConvUNet)", "nnUNetTrainerProxyVanilla", multi_encoder=False),
    "scratch": Method("Multi-encoder, from scratch", "nnUNetTrainerProxyMultiEncoder", multi_encoder=True),
    "ssl_vf": Method("Multi-encoder + Volume Fusion SSL", "nnUNetTrainerProxyMultiEncoderSSL", multi_encoder=True,
                     pretext="nnUNetTrainerProxyVolumeFusion"),
    "ssl_swin": Method("Multi-encoder + Swin proxies SSL", "nnUNetTrainerProxyMultiEncoderSSL", multi_encoder=True,
                       pretext="nnUNetTrainerProxySwinProxies"),
    # the restoration baselines of MIS-FM (Wang et al. 2023, Table 2), two-stage as ssl_vf (T1 + FLAIR suffice)
    "ssl_mg": Method("Multi-encoder + Models Genesis SSL", "nnUNetTrainerProxyMultiEncoderSSL", multi_encoder=True,
                     pretext="nnUNetTrainerProxyModelGenesis"),
    "ssl_mim": Method("Multi-encoder + masked image modelling SSL", "nnUNetTrainerProxyMultiEncoderSSL",
                      multi_encoder=True, pretext="nnUNetTrainerProxyMaskedImage"),
    "ssl_ps": Method("Multi-encoder + patch swapping SSL", "nnUNetTrainerProxyMultiEncoderSSL", multi_encoder=True,
                     pretext="nnUNetTrainerProxyPatchSwapping"),
    # T1 + T1Gd -> FLAIR needs T1Gd, which the healthy T1 + FLAIR cohort lacks: stage 2 (the target pool) only
    "ssl_cm": Method("Multi-encoder + cross-modality SSL", "nnUNetTrainerProxyMultiEncoderSSL", multi_encoder=True,
                     pretext="nnUNetTrainerProxyCrossModality", two_stage=False),
    # ablations of issue 16's changes (cpu2d): the old fine-tuning protocol (whole network transferred, no warm-up)
    # on ssl_vf's checkpoint, and Volume Fusion pretrained with nnU-Net's SGD instead of MIS-FM's Adam
    "ssl_vf_full": Method("Multi-encoder + Volume Fusion SSL, whole network transferred, no warm-up",
                          "nnUNetTrainerProxyMultiEncoderSSLFullTransfer", multi_encoder=True,
                          pretext="nnUNetTrainerProxyVolumeFusion", pretrained_by="ssl_vf"),
    "ssl_vf_sgd": Method("Multi-encoder + Volume Fusion SSL pretrained with SGD", "nnUNetTrainerProxyMultiEncoderSSL",
                         multi_encoder=True, pretext="nnUNetTrainerProxyVolumeFusionSGD"),
}
COMPARISONS = (("ssl_vf", "scratch"), ("ssl_swin", "scratch"), ("ssl_cm", "scratch"), ("ssl_mg", "scratch"),
               ("ssl_mim", "scratch"), ("ssl_ps", "scratch"), ("scratch", "vanilla"), ("ssl_vf", "vanilla"),
               ("ssl_vf", "ssl_vf_full"), ("ssl_vf", "ssl_vf_sgd"))


def plans_names(scale: Scale) -> tuple[str, str]:
    """(vanilla plans, multi-encoder plans) of a scale."""
    base = f"nnUNetPlans_proxy_{scale.name}"
    return base, base + "_MultiEncoder"


# ----------------------------------------------------------------------------------------------------------------------
# plans


def proxy_configuration(target_config: dict, scale: Scale) -> dict:
    """The target dataset's planned configuration with the scale's spacing, patch, stages, widths and batch."""
    from nnunetv2_ext.planning.multi_encoder_plans import sized_configuration

    return sized_configuration(target_config, scale.patch_size, scale.base_features, scale.max_stages,
                               scale.batch_size, scale.spacing)


def write_proxy_plans(preprocessed: Path, datasets: Sequence[str], target: str, scale: Scale,
                      multi_encoder: bool = True) -> None:
    """Write ``nnUNetPlans_proxy_<scale>`` (and, with ``multi_encoder``, its multi-encoder plans) for every dataset,
    from the target dataset's configuration of the scale (3d_fullres or 2d); existing files are kept (so a resumed
    benchmark keeps its plans)."""
    from nnunetv2_ext.planning.multi_encoder_plans import derive_multi_encoder_plans

    vanilla_name, me_name = plans_names(scale)
    target_plans = load_json(preprocessed / target / "nnUNetPlans.json")
    c = scale.configuration
    config = proxy_configuration(target_plans["configurations"][c], scale)
    config["data_identifier"] = f"{vanilla_name}_{c}"
    for dataset in datasets:
        folder = preprocessed / dataset
        me_done = not multi_encoder or (folder / f"{me_name}.json").is_file()
        if (folder / f"{vanilla_name}.json").is_file() and me_done:
            continue
        plans = load_json(folder / "nnUNetPlans.json")
        own = copy.deepcopy(config)
        for per_channel in ("normalization_schemes", "use_mask_for_norm"):  # one entry per input channel
            own[per_channel] = plans["configurations"][c][per_channel]
        plans["plans_name"] = vanilla_name
        plans["configurations"] = {c: own}
        atomic_write_json(plans, folder / f"{vanilla_name}.json", overwrite=True)
        if multi_encoder:
            me = derive_multi_encoder_plans(plans, load_json(folder / "dataset.json"), me_name,
                                            encoder_width=scale.encoder_width)
            atomic_write_json(me, folder / f"{me_name}.json", overwrite=True)


# ----------------------------------------------------------------------------------------------------------------------
# splits


def write_proxy_splits(preprocessed_dataset: Path, manifest: dict, scale: Scale, seed: int) -> dict:
    """Write the target dataset's ``splits_final.json`` (see the module docstring) unless it exists; return the run
    index ``{'folds': [{'fold', 'n_labelled', 'subset'}], 'ssl_fold': int}`` (also saved as ``proxy_folds.json``)."""
    from nnunetv2_ext.data.splits import FEW_SHOT_INDEX, append_few_shot_splits

    index_file = preprocessed_dataset / "proxy_folds.json"
    if index_file.is_file():
        index = load_json(index_file)
        stored = sorted({e["n_labelled"] for e in index["folds"]})
        repeats = 1 + max((e["subset"] for e in index["folds"] if e["n_labelled"] < len(index["pool"])), default=0)
        wanted = sorted({int(n) for n in scale.n_labelled})
        if stored != wanted or (any(n < len(index["pool"]) for n in wanted) and repeats != scale.repeats):
            raise ValueError(f"{preprocessed_dataset.parent.parent} already holds a benchmark with levels {stored} x "
                             f"{repeats} subsets ({index_file}); asked for {wanted} x {scale.repeats}. Resume it with "
                             f"the same --n-labelled/--repeats, or make the proxy data in a new --out folder")
        return index
    pool, test = list(manifest["target_train_cases"]), list(manifest["test_cases"])
    levels = sorted({int(n) for n in scale.n_labelled})
    if not levels or levels[0] < 1 or levels[-1] > len(pool):
        raise ValueError(f"labelled-case levels {levels} must lie in 1..{len(pool)} (the target pool's size)")
    splits_file = preprocessed_dataset / "splits_final.json"
    for stale in (splits_file, splits_file.with_name(splits_file.name + ".bak"), preprocessed_dataset / FEW_SHOT_INDEX):
        if stale.exists():
            stale.unlink()
    atomic_write_json([{"train": pool, "val": test}], splits_file)
    folds = [{"fold": 0, "n_labelled": len(pool), "subset": 0}] if len(pool) in levels else []
    fractions = [n / len(pool) for n in levels if n < len(pool)]
    if fractions:
        few_shot = append_few_shot_splits(splits_file, fractions, scale.repeats, seed, base_fold=0)
        folds += [{"fold": e["fold"], "n_labelled": e["n_train"], "subset": e["repeat"]} for e in few_shot]
    splits = load_json(splits_file)
    ssl_fold = len(splits)
    splits.append({"train": pool, "val": pool[:2]})
    atomic_write_json(splits, splits_file, overwrite=True)
    index = {"folds": folds, "ssl_fold": ssl_fold, "test_cases": test, "pool": pool}
    atomic_write_json(index, index_file)
    return index


# ----------------------------------------------------------------------------------------------------------------------
# jobs


@dataclass
class Job:
    name: str
    cmd: List[str]
    results: Path                      # nnUNet_results root of the job
    fold_dir: Path
    deps: List[str] = field(default_factory=list)
    needs_validation: bool = True      # fine-tuning: done when validation/summary.json exists

    def state(self) -> str:
        """'done', 'validate' (trained, final validation missing), 'continue' (checkpoint), or 'new'."""
        final = (self.fold_dir / "checkpoint_final.pth").is_file()
        if final and (not self.needs_validation or (self.fold_dir / "validation" / "summary.json").is_file()):
            return "done"
        if final:
            return "validate"
        return "continue" if (self.fold_dir / "checkpoint_latest.pth").is_file() else "new"


def _train_cmd(dataset: str, fold, trainer: str, plans: str, device: str, pretrained: Optional[Path] = None,
               configuration: str = CONFIGURATION) -> List[str]:
    cmd = ["nnUNetv2_train", dataset, configuration, str(fold), "-tr", trainer, "-p", plans, "-device", device]
    if pretrained is not None:
        cmd += ["-pretrained_weights", str(pretrained)]
    return cmd


def fold_dir(results: Path, dataset: str, trainer: str, plans: str, fold, configuration: str = CONFIGURATION) -> Path:
    return results / dataset / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"


def build_jobs(out: Path, manifest: dict, folds: dict, scale: Scale, methods: Sequence[str]) -> List[Job]:
    """Pretraining chains first (they gate their fine-tunings), then fine-tuning from the smallest level up."""
    pretrain_ds, target_ds = manifest["pretrain_dataset"], manifest["target_dataset"]
    vanilla_plans, me_plans = plans_names(scale)
    suffix = f"_{scale.name}"  # trainers: nnUNetTrainerProxy..._<scale> (nnunetv2_ext.training.proxy)
    c = scale.configuration
    jobs: List[Job] = []
    for key in methods:
        method = METHODS[key]
        if method.pretext is None or method.pretrained_by is not None:
            continue
        results = out / "nnUNet_results" / key
        trainer = method.pretext + suffix
        stage2 = fold_dir(results, target_ds, trainer, me_plans, folds["ssl_fold"], c)
        stage1_weights, stage2_deps = None, []
        if method.two_stage:
            stage1 = fold_dir(results, pretrain_ds, trainer, me_plans, "all", c)
            jobs.append(Job(f"{key}/stage1", _train_cmd(pretrain_ds, "all", trainer, me_plans, scale.device,
                                                        configuration=c),
                            results, stage1, needs_validation=False))
            stage1_weights, stage2_deps = stage1 / "checkpoint_final.pth", [f"{key}/stage1"]
        jobs.append(Job(f"{key}/stage2", _train_cmd(target_ds, folds["ssl_fold"], trainer, me_plans, scale.device,
                                                    stage1_weights, c),
                        results, stage2, deps=stage2_deps, needs_validation=False))
    for entry in sorted(folds["folds"], key=lambda e: (e["n_labelled"], e["subset"])):
        for key in methods:
            method = METHODS[key]
            results = out / "nnUNet_results" / key
            trainer, plans = method.trainer + suffix, me_plans if method.multi_encoder else vanilla_plans
            pretrained, deps = None, []
            if method.pretext is not None:
                source = method.pretrained_by or key
                pretrained = fold_dir(out / "nnUNet_results" / source, target_ds, method.pretext + suffix, me_plans,
                                      folds["ssl_fold"], c) / "checkpoint_final.pth"
                deps = [f"{source}/stage2"]
            jobs.append(Job(f"{key}/n{entry['n_labelled']}_s{entry['subset']}",
                            _train_cmd(target_ds, entry["fold"], trainer, plans, scale.device, pretrained, c),
                            results, fold_dir(results, target_ds, trainer, plans, entry["fold"], c), deps))
    return jobs


def _run_logged(cmd: List[str], env: dict, log: Path, tail_lines: int = 25) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr appended to ``log`` (after a ``$ command`` line); return the exit code and,
    on failure, the log's last lines."""
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        returncode = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    tail = "" if returncode == 0 else \
        "".join(log.read_text(errors="replace").splitlines(keepends=True)[-tail_lines:])
    return returncode, tail


class Runner:
    """Run jobs in parallel lanes, respecting dependencies; print one line per start and end."""

    def __init__(self, jobs: Sequence[Job], env: dict, logs: Path, lanes: int, echo: Callable[[str], None] = print):
        self.jobs, self.env, self.logs, self.lanes, self.echo = list(jobs), env, logs, max(1, lanes), echo
        self.start = time.time()
        self.lock = threading.Lock()
        self.finished: Dict[str, str] = {}      # name -> 'ok' | 'failed' | 'skipped'
        self.durations: Dict[str, float] = {}

    def _say(self, text: str) -> None:
        elapsed = time.time() - self.start
        self.echo(f"[{int(elapsed // 60):3d}:{int(elapsed % 60):02d}] {text}")

    def _run(self, job: Job) -> str:
        state = job.state()
        if state == "done":
            return "skipped"
        cmd = list(job.cmd)
        if state == "continue":
            cmd = [c for c in cmd if c != "-pretrained_weights" and not c.endswith("checkpoint_final.pth")] + ["--c"]
        elif state == "validate":
            cmd = [c for c in cmd if c != "-pretrained_weights" and not c.endswith("checkpoint_final.pth")] + ["--val"]
        log = self.logs / (job.name.replace("/", "__") + ".log")
        job.results.mkdir(parents=True, exist_ok=True)
        returncode, tail = _run_logged(cmd, {**self.env, "nnUNet_results": str(job.results)}, log)
        if returncode != 0:
            self._say(f"FAILED {job.name} (exit {returncode}); log {log}:\n{tail}")
            return "failed"
        return "ok"

    def run(self) -> Dict[str, str]:
        self.logs.mkdir(parents=True, exist_ok=True)
        pending = list(self.jobs)
        running: Dict[str, threading.Thread] = {}
        total = len(pending)

        def work(job: Job):
            t0 = time.time()
            status = self._run(job)
            with self.lock:
                self.finished[job.name] = status
                self.durations[job.name] = time.time() - t0
                running.pop(job.name, None)
            done = len(self.finished)
            if status != "skipped":
                self._say(f"{status:>6} {job.name} in {time.time() - t0:.0f} s  ({done}/{total} done)")

        while pending or running:
            with self.lock:
                failed = {n for n, s in self.finished.items() if s == "failed"}
                blocked = [j for j in pending if any(d in failed for d in j.deps)]
                for job in blocked:
                    pending.remove(job)
                    self.finished[job.name] = "failed"
                    self._say(f"blocked {job.name}: it needs {', '.join(job.deps)}")
                ready = [j for j in pending if all(self.finished.get(d) in ("ok", "skipped") for d in j.deps)]
                while ready and len(running) < self.lanes:
                    job = ready.pop(0)
                    pending.remove(job)
                    if job.state() != "done":
                        self._say(f" start {job.name}")
                    thread = threading.Thread(target=work, args=(job,), daemon=True)
                    running[job.name] = thread
                    thread.start()
            time.sleep(0.2)
        return self.finished


# ----------------------------------------------------------------------------------------------------------------------
# the whole benchmark


def nnunet_env(out: Path, scale: Scale) -> dict:
    from nnunetv2_ext.discovery import trainer_path

    env = dict(os.environ)
    env.update(nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
               nnUNet_results=str(out / "nnUNet_results"), nnUNet_extTrainer=trainer_path(), nnUNet_compile="false",
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    if scale.device == "cpu":
        # one process and one torch thread per lane: augmentation in the training process (nnU-Net's
        # SingleThreadedAugmenter when nnUNet_n_proc_DA=0), one export worker
        env.update(nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0", NNUNETV2_EXT_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


def _check(cmd: List[str], env: dict, log: Path) -> None:
    returncode, tail = _run_logged(cmd, env, log)
    if returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {returncode}; log {log}:\n{tail}")


def prepare(out: Path, manifest: dict, scale: Scale, env: dict, echo=print) -> dict:
    """Fingerprint, plan, write the proxy plans, preprocess, write the splits (each skipped when done)."""
    preprocessed = out / "nnUNet_preprocessed"
    datasets = [manifest["pretrain_dataset"], manifest["target_dataset"]]
    env = {**env, "nnUNet_n_proc_DA": "1"}  # the planner calls torch.set_num_threads(nnUNet_n_proc_DA)
    ids = [d[len("Dataset"):len("Dataset") + 3] for d in datasets]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    np_args = ["-np", "1"] if scale.device == "cpu" else []
    if not all((preprocessed / d / "nnUNetPlans.json").is_file() for d in datasets):
        echo("fingerprint and plan (nnUNetv2_plan_and_preprocess --no_pp)")
        _check(["nnUNetv2_plan_and_preprocess", "-d", *ids, "-c", scale.configuration, "--no_pp",
                *(["-npfp", "1"] if scale.device == "cpu" else [])], env, logs / "plan.log")
    write_proxy_plans(preprocessed, datasets, manifest["target_dataset"], scale)
    vanilla_name, _ = plans_names(scale)
    data_dirs = [preprocessed / d / f"{vanilla_name}_{scale.configuration}" for d in datasets]
    n_cases = [len(manifest["pretrain_cases"]), len(manifest["target_train_cases"]) + len(manifest["test_cases"])]
    if not all(d.is_dir() and len(list(d.glob("*.pkl"))) >= n for d, n in zip(data_dirs, n_cases)):
        echo(f"preprocess with {vanilla_name} (nnUNetv2_preprocess)")
        _check(["nnUNetv2_preprocess", "-d", *ids, "-plans_name", vanilla_name, "-c", scale.configuration, *np_args],
               env, logs / "preprocess.log")
    return write_proxy_splits(preprocessed / manifest["target_dataset"], manifest, scale, manifest["spec"]["seed"])


def run_benchmark(out: str | os.PathLike, scale: str = "cpu", methods: Optional[Sequence[str]] = None,
                  lanes: Optional[int] = None, n_labelled: Optional[Sequence[int]] = None,
                  repeats: Optional[int] = None, device: Optional[str] = None, num_processes: int = 1,
                  echo: Callable[[str], None] = print) -> Dict[str, Path]:
    """Run (or resume) the benchmark on the proxy data in ``out`` (made by ``nnunetv2_ext proxy make``) and write
    the results to ``out/results_<scale>/``. Returns the written files.

    Args:
        scale: a key of :data:`SCALES`.
        methods, lanes, n_labelled, repeats, device: override the scale's values.
        num_processes: worker processes for scoring.

    Raises:
        FileNotFoundError: ``out`` holds no proxy data.
        ValueError: an unknown scale or method.
        RuntimeError: a command failed (its log is named); rerunning resumes.
    """
    from nnunetv2_ext.proxy.analysis import Run, score_runs, write_results

    out = Path(out).resolve()
    manifest_file = out / "proxy_manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{manifest_file} does not exist: make the proxy data first with "
                                f"`nnunetv2_ext proxy make --out {out}`")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    base = SCALES[scale]
    overrides = {k: v for k, v in dict(methods=tuple(methods) if methods else None, lanes=lanes,
                                       n_labelled=tuple(n_labelled) if n_labelled else None, repeats=repeats,
                                       device=device).items() if v is not None}
    chosen = Scale(**{**asdict(base), **overrides})
    unknown = [m for m in chosen.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    needs = [(m, METHODS[m].pretrained_by) for m in chosen.methods
             if METHODS[m].pretrained_by and METHODS[m].pretrained_by not in chosen.methods]
    if needs:
        raise ValueError(", ".join(f"method {m} fine-tunes {p}'s pretraining" for m, p in needs) +
                         ": add it to --methods")
    from nnunetv2_ext.training import proxy as proxy_trainers

    missing = [f"{name}_{chosen.name}" for m in chosen.methods for name in (METHODS[m].trainer, METHODS[m].pretext)
               if name is not None and not hasattr(proxy_trainers, f"{name}_{chosen.name}")]
    if missing:
        raise ValueError(f"scale {chosen.name!r} has no trainer {', '.join(missing)} (nnunetv2_ext.training.proxy); "
                         f"choose other --methods or another --scale")
    manifest = load_json(manifest_file)
    env = nnunet_env(out, chosen)
    t0 = time.time()
    echo(f"proxy benchmark, scale {chosen.name}: methods {', '.join(chosen.methods)}; levels "
         f"{list(chosen.n_labelled)} x {chosen.repeats} subsets; {chosen.lanes} lane(s) on {chosen.device}; in {out}")
    folds = prepare(out, manifest, chosen, env, echo)
    jobs = build_jobs(out, manifest, folds, chosen, chosen.methods)
    echo(f"{len(jobs)} training jobs ({sum(j.state() == 'done' for j in jobs)} already done); logs in {out / 'logs'}")
    runner = Runner(jobs, env, out / "logs", chosen.lanes, echo)
    status = runner.run()
    failed = sorted(n for n, s in status.items() if s == "failed")
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed or were blocked: {', '.join(failed)}; see {out / 'logs'}; "
                           f"run the same command again to resume")
    train_seconds = time.time() - t0

    echo("scoring the test predictions")
    runs = []
    for job in jobs:
        if "/stage" in job.name:
            continue
        key, level = job.name.split("/")
        n, subset = level[1:].split("_s")
        runs.append(Run(key, int(n), int(subset), str(job.fold_dir)))
    echo("threshold baseline: one intensity threshold per region, chosen on the training pool")
    runs.append(threshold_baseline_run(out, manifest, folds))
    preprocessed_target = out / "nnUNet_preprocessed" / manifest["target_dataset"]
    scores = score_runs(runs, preprocessed_target / "gt_segmentations",
                        out / "nnUNet_raw" / manifest["target_dataset"] / "dataset.json", num_processes=num_processes)
    meta = {"command": shlex.join(["nnunetv2_ext", "proxy", "run", *sys.argv[3:]]) if sys.argv[1:3] == ["proxy", "run"]
            else None, "scale": asdict(chosen),
            "wall_time_s": round(time.time() - t0, 1), "training_wall_time_s": round(train_seconds, 1),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "versions": _versions(), "proxy_spec": manifest["spec"], "n_test_cases": len(folds["test_cases"]),
            "job_seconds": {n: round(t, 1) for n, t in runner.durations.items() if status.get(n) == "ok"}}
    from nnunetv2_ext.proxy import threshold_baseline

    labels = {**{k: METHODS[k].label for k in chosen.methods}, threshold_baseline.METHOD: threshold_baseline.LABEL}
    written = write_results(scores, out / f"results_{chosen.name}", labels,
                            comparisons=[c for c in COMPARISONS if c[0] in chosen.methods and c[1] in chosen.methods],
                            overwrite=True, meta=meta)
    written.update(write_training_report(jobs, out / f"results_{chosen.name}", chosen))
    echo(f"done in {(time.time() - t0) / 60:.1f} min; results in {out / f'results_{chosen.name}'}")
    return written


def threshold_baseline_run(out: Path, manifest: dict, folds: dict) -> Run:
    """The run of :mod:`nnunetv2_ext.proxy.threshold_baseline`: one threshold per region chosen on the whole
    training pool (never a test case), its test predictions in ``out/threshold_baseline/validation`` (kept when
    there), scored like every method's; ``n_labelled`` is the pool's size."""
    from nnunetv2_ext.proxy.analysis import Run
    from nnunetv2_ext.proxy.threshold_baseline import FOLDER, METHOD, run_threshold_baseline

    folder = run_threshold_baseline(out / "nnUNet_raw" / manifest["target_dataset"], folds["pool"],
                                    folds["test_cases"], out / FOLDER)
    return Run(METHOD, len(folds["pool"]), 0, str(folder))


def write_training_report(jobs: Sequence[Job], results_dir: Path, scale: Scale) -> Dict[str, Path]:
    """``pretext.md`` (each pretraining stage's pretext metric against its trivial baseline), ``training_curves.png``
    / ``.json`` (mean fine-tuning curves per method), both appended to ``summary.md``."""
    from nnunetv2_ext.proxy.training_report import plot_training_curves, pretext_markdown, pretext_rows, training_curves
    from nnunetv2_ext.training import proxy as proxy_trainers

    labels = {k: METHODS[k].label for k in scale.methods}
    stages = [(j.name.split("/")[0], j.name.split("/")[1], j.fold_dir) for j in jobs if "/stage" in j.name]
    runs = [(j.name.split("/")[0], j.fold_dir) for j in jobs if "/stage" not in j.name]
    pretext = pretext_markdown(pretext_rows(stages), labels) if stages else "(no pretraining in this run)\n"
    (results_dir / "pretext.md").write_text(pretext)
    curves = training_curves(runs)
    atomic_write_json(curves, results_dir / "training_curves.json", overwrite=True)
    fine_tune = getattr(proxy_trainers, f"{METHODS[scale.methods[0]].trainer}_{scale.name}", None)
    plot = plot_training_curves(curves, results_dir / "training_curves.png", labels,
                                getattr(fine_tune, "num_iterations_per_epoch", None))
    with open(results_dir / "summary.md", "a") as f:
        f.write(f"\n## Pretexts: metric against the trivial baseline (last validation)\n\n{pretext}\n"
                f"## Fine-tuning curves\n\nMean over runs per method: `training_curves.png`, `training_curves.json`.\n")
    return {"pretext": results_dir / "pretext.md", "training_curves": plot}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nnunetv2", "torch", "nnunetv2-ext", "monai", "nilearn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
