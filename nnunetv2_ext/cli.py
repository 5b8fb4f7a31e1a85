"""The ``nnunetv2_ext`` command: parses arguments and dispatches; the work happens in the package's modules."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnunetv2_ext.cli_missing_modality import add_case_lists_parser
from nnunetv2_ext.cli_missing_modality import add_parser as add_benchmark_parser
from nnunetv2_ext.planning.backbones import BACKBONE_NAMES
from nnunetv2_ext.proxy.experiment import SCALES


def _plans(args: argparse.Namespace) -> None:
    from nnunetv2_ext.planning.multi_encoder_plans import write_multi_encoder_plans

    if args.list_presets:
        from nnunetv2_ext.planning.presets import list_presets

        for name, description in list_presets().items():
            print(f"{name}: {description}")
        return
    if args.dataset is not None and args.dataset_flag is not None and args.dataset != args.dataset_flag:
        raise ValueError(f"two datasets given: DATASET {args.dataset} and -d {args.dataset_flag}; give one")
    args.dataset = args.dataset if args.dataset is not None else args.dataset_flag
    if args.dataset is None:
        raise ValueError("give DATASET (id or name, as for nnUNetv2_train; or -d), or --list-presets")
    if args.arch != "multi_encoder":
        from nnunetv2_ext.planning.backbones import write_backbone_plans

        path, notes = write_backbone_plans(args.dataset, args.arch, source_plans=args.source_plans,
                                           plans_name=args.plans_name, overwrite=args.overwrite,
                                           preset_file=args.preset)
        for note in notes:
            print(note)
        print(f"wrote {path}")
        return
    path = write_multi_encoder_plans(args.dataset, source_plans=args.source_plans, plans_name=args.plans_name,
                                     preset_file=args.preset, overwrite=args.overwrite, encoder=args.encoder,
                                     fusion=args.fusion, encoder_groups=args.groups, encoder_width=args.encoder_width)
    print(f"wrote {path}")


def _trainer_path(args: argparse.Namespace) -> None:
    from nnunetv2_ext.discovery import trainer_path

    print(trainer_path())


def _example_data(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data.synthetic import make_brats_like_dataset

    path = make_brats_like_dataset(args.raw, dataset_id=args.dataset_id, name=args.name, n_train=args.n_train,
                                   n_test=args.n_test, shape=tuple(args.shape), seed=args.seed,
                                   overwrite=args.overwrite, progress=True)
    print(f"wrote {path}")


def _raw_root(arg: Optional[str]) -> str:
    import os

    raw = arg or os.environ.get("nnUNet_raw")
    if not raw:
        raise ValueError("give --raw or export nnUNet_raw, as for nnU-Net's own commands")
    return raw


def _unlabeled_dataset(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data.unlabeled import import_unlabeled_dataset

    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    folder, report = import_unlabeled_dataset(args.images, _raw_root(args.raw), args.dataset_id, modalities,
                                              name=args.name, pattern=args.pattern, skip_bad=not args.strict,
                                              overwrite=args.overwrite, num_processes=args.np, progress=True)
    for case, reason in report.skipped.items():
        print(f"skipped {case}: {reason}")
    print(f"wrote {folder}: {len(report.written)} cases, {len(report.skipped)} skipped (see import_report.json)")


def _fingerprint(args: argparse.Namespace) -> None:
    from nnunetv2_ext.planning.fingerprint import SUBSET_KEY, extract_subset_fingerprint

    fingerprint = extract_subset_fingerprint(args.d, args.max_cases, seed=args.seed, num_processes=args.np,
                                             clean=not args.keep)
    subset = fingerprint.get(SUBSET_KEY)
    print(f"fingerprint of {args.d}: " + (f"{subset['n_cases']} cases (at most {subset['max_cases']}, seed "
                                          f"{subset['seed']})" if subset else "kept the existing one"))


def _brats_convert(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data.brats import convert_brats

    folder, report = convert_brats(args.input, _raw_root(args.raw), args.dataset_id, args.name,
                                   skip_bad=args.skip_bad, overwrite=args.overwrite, num_processes=args.np,
                                   progress=True)
    for case, reasons in report.skipped.items():
        print(f"skipped {case}: {'; '.join(reasons) if isinstance(reasons, list) else reasons}")
    print(f"wrote {folder} ({report.layout} layout): {len(report.converted)} cases, {len(report.skipped)} skipped")


def _brats_to_labels(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data.brats import to_brats_labels

    written = to_brats_labels(args.input, args.output, layout=args.layout, overwrite=args.overwrite)
    print(f"wrote {len(written)} files to {args.output}")


def _dataset_restrict(args: argparse.Namespace) -> None:
    import os

    from nnunetv2_ext.data.restrict import restrict_dataset

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    folder = restrict_dataset(_raw_root(args.raw), args.dataset, channels, args.dataset_id, args.name,
                              preprocessed_root=os.environ.get("nnUNet_preprocessed"), overwrite=args.overwrite,
                              allow_repeated=args.allow_repeated_channels, progress=True)
    print(f"wrote {folder}")


def _splits_file(dataset: str) -> Path:
    from nnunetv2_ext.io_utils import preprocessed_dataset_folder

    return preprocessed_dataset_folder(dataset) / "splits_final.json"


def _splits(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data import splits

    target = _splits_file(args.dataset)
    if args.splits_command == "default":
        written = splits.write_default_splits(target, splits.dataset_case_ids(args.dataset), args.overwrite)
        print(f"wrote {target}: nnU-Net's 5 folds")
    elif args.splits_command == "monai":
        written = splits.write_monai_splits(target, args.folds_json, splits.dataset_case_ids(args.dataset),
                                            args.overwrite)
        print(f"wrote {target}: {len(written)} folds from {args.folds_json}")
    else:
        fractions = [float(f) for f in args.fractions.split(",")]
        index = splits.append_few_shot_splits(target, fractions, args.repeats, args.seed, args.base_fold,
                                              args.overwrite)
        for entry in index:
            print(f"fold {entry['fold']}: {100 * entry['fraction']:g} % of fold {entry['base_fold']}'s training "
                  f"cases ({entry['n_train']}), repeat {entry['repeat']}")
        print(f"appended to {target}; index: {target.parent / splits.FEW_SHOT_INDEX}")


def _evaluate(args: argparse.Namespace) -> None:
    from nnunetv2_ext.evaluation.metrics import evaluate_folders
    from nnunetv2_ext.io_utils import dataset_json_path

    if not (args.dataset_json or args.dataset):
        raise ValueError("give -d/--dataset (id or name) or --dataset-json: the dataset.json names the regions")
    dataset_json = args.dataset_json or dataset_json_path(args.dataset)
    summary = evaluate_folders(args.ref, args.pred, dataset_json, num_processes=args.np, output=args.output,
                               strict=not args.partial, lesion_wise=args.brats, lesion_labels=args.brats_labels,
                               overwrite=args.overwrite, progress=True)
    for region, metrics in summary["mean"].items():
        lesion_wise = (f"  LW DSC {metrics['brats_lesion_dice']:.4f}  LW HD95 {metrics['brats_lesion_hd95_mm']:.2f} mm"
                       if "brats_lesion_dice" in metrics else "")
        print(f"{region:>6}: Dice {metrics['dice']:.4f}  HD95 {metrics['hd95_mm']:.2f} mm  "
              f"SE {metrics['sensitivity']:.4f}  PRE {metrics['precision']:.4f}{lesion_wise}")
    if args.output:
        print(f"wrote {args.output} and its .csv")


def _report(args: argparse.Namespace) -> None:
    from nnunetv2_ext.evaluation.report import write_report

    trainers = [t for t in (args.trainers or "").split(",") if t] or None
    written = write_report(args.results, args.output, trainers, args.configuration, args.gt, args.few_shot_index,
                           args.np, args.overwrite, lesion_wise=args.brats, rank_by=args.rank_by,
                           lesion_labels=args.brats_labels, progress=True)
    for name, path in written.items():
        print(f"{name}: {path}")


def _weights_inspect(args: argparse.Namespace) -> None:
    from nnunetv2_ext.transfer.formats import FORMATS
    from nnunetv2_ext.transfer.inspect_cli import inspect_target, inspect_weights

    if args.format is not None and args.format not in FORMATS:  # the table needs torch: checked here, not by argparse
        raise ValueError(f"--format {args.format!r} is not a known checkpoint format; choose one of "
                         f"{', '.join(FORMATS)}, or leave --format out to detect it")
    if args.dataset:
        print(inspect_target(args.file, args.dataset, args.plans, args.configuration, args.trainer, args.format))
    else:
        print(inspect_weights(args.file, args.format))


def _weights_use(args: argparse.Namespace) -> None:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunetv2_ext.training.pretraining_lookup import record_pretraining_checkpoint

    if not nnUNet_results.is_set():
        raise RuntimeError("nnUNet_results is not set: export it as for nnU-Net's own commands")
    dataset = str(maybe_convert_to_dataset_name(args.dataset))
    path = record_pretraining_checkpoint(nnUNet_results.get(), dataset, args.plans, args.configuration, args.file,
                                         overwrite=args.overwrite)
    print(f"recorded {Path(args.file).resolve()} for {dataset} (plans {args.plans}, configuration "
          f"{args.configuration}) in {path}")


def _predict(args: argparse.Namespace) -> None:
    from nnunetv2_ext.inference.subset_predict import model_folder_from_args, predict_with_subset

    folder = model_folder_from_args(args.d, args.tr, args.p, args.c)
    if args.npp < 1:
        raise ValueError(f"-npp must be >= 1; got {args.npp}")
    written = predict_with_subset(folder, args.i, args.o, args.modalities, folds=args.f, checkpoint=args.chk,
                                  device=args.device, overwrite=args.overwrite, num_processes=args.nps,
                                  use_mirroring=not args.disable_tta, tile_step_size=args.step_size,
                                  save_probabilities=args.save_probabilities,
                                  continue_prediction=args.continue_prediction, verbose=args.verbose,
                                  zero_fill=args.zero_fill)
    print(f"wrote {len(written)} segmentations to {args.o} from {args.modalities}")


def _proxy_make(args: argparse.Namespace) -> None:
    from nnunetv2_ext.proxy.anatomy import ProxySpec, make_proxy, save_preview

    spec = ProxySpec(seed=args.seed, resolution=args.resolution, n_pretrain=args.n_pretrain, n_target=args.n_target,
                     n_test=args.n_test, pretrain_id=args.pretrain_id, target_id=args.target_id)
    manifest = make_proxy(args.out, spec, overwrite=args.overwrite, num_processes=args.np, progress=True)
    print(f"wrote {manifest['pretrain_dataset']} ({len(manifest['pretrain_cases'])} healthy cases, T1 + FLAIR) and "
          f"{manifest['target_dataset']} ({len(manifest['target_train_cases'])} labelled + "
          f"{len(manifest['test_cases'])} test cases, 4 modalities) under {Path(args.out) / 'nnUNet_raw'}")
    print(f"preview: {save_preview(args.out)}")


def _proxy_run(args: argparse.Namespace) -> None:
    from nnunetv2_ext.proxy.experiment import run_benchmark

    if args.background:
        import subprocess

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        log = out / f"proxy_run_{args.scale}.log"
        argv = [a for a in sys.argv[1:] if a != "--background"]
        with open(log, "a") as f:
            proc = subprocess.Popen([sys.executable, "-m", "nnunetv2_ext.cli", *argv], stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        print(f"started in the background (pid {proc.pid}); follow it with: tail -f {log}")
        return
    n_labelled = [int(n) for n in args.n_labelled.split(",")] if args.n_labelled else None
    methods = [m for m in args.methods.split(",") if m] if args.methods else None
    written = run_benchmark(args.out, args.scale, methods=methods, lanes=args.lanes, n_labelled=n_labelled,
                            repeats=args.repeats, device=args.device, num_processes=args.np,
                            echo=lambda line: print(line, flush=True))
    for name, path in written.items():
        print(f"{name}: {path}")


def _overview(args: argparse.Namespace) -> None:
    from nnunetv2_ext.evaluation.overview import write_overview_from_folders

    path = write_overview_from_folders(args.images, args.ref, args.pred, args.model, args.o, case=args.case,
                                       fold=args.f, overwrite=args.overwrite)
    print(f"wrote {path}")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default (not for required options, switches, or None, which the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


ARCHITECTURES = ("multi_encoder",) + BACKBONE_NAMES  # the registry's names (planning.backbones imports no torch)
BRATS_DEFINITIONS = ("2023", "2023-MEN", "2023-MET", "2024")
"""The keys of ``evaluation.lesionwise.DEFINITIONS`` (that module imports MONAI: too slow for --help; a test keeps
them equal)."""
BRATS_LABELS = ("challenge", "nnunet")
ALL_FOLDS = ["0", "1", "2", "3", "4"]


def _env_int(name: str, default: int) -> int:
    """nnU-Net's defaults for -npp / -nps: its environment variable, else its default."""
    import os

    return int(os.environ.get(name, default))


def _add_brats_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brats", default=None, choices=BRATS_DEFINITIONS,
                   help="also score the BraTS challenge's lesion-wise Dice and HD95 (LW DSC, LW HD95) of that "
                   "challenge's official scripts: 2023 (GLI, SSA, PED), 2023-MEN, 2023-MET, 2024 (GLI post-treatment, "
                   "with NSD)")
    p.add_argument("--brats-labels", default=None, choices=BRATS_LABELS,
                   help="label convention of the data for --brats: challenge (1 NETC, 2 SNFH, 3 ET) or nnunet "
                   "(1 edema, 2 necrosis, 3 ET, as `brats convert` writes); default: read from the dataset.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunetv2_ext", description="nnU-Net v2 plugin: multi-encoder U-Net, "
                                     "self-supervised pretraining, weight transfer. Trainers run through nnU-Net's "
                                     "own commands once `export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)`.",
                                     formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(parent, name: str, help: str):  # noqa: A002 - argparse's own keyword
        return parent.add_parser(name, help=help, description=help, formatter_class=_Formatter)

    p = command(sub, "plans", "derive multi-encoder plans from a dataset's nnU-Net plans")
    p.add_argument("dataset", nargs="?", default=None, help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("-d", dest="dataset_flag", default=None, metavar="DATASET",
                   help="the dataset, as nnUNetv2_plan_and_preprocess -d (instead of the positional DATASET)")
    p.add_argument("--arch", default="multi_encoder", choices=ARCHITECTURES,
                   help="multi_encoder or an alternative backbone")
    p.add_argument("--encoder", choices=["plain", "residual"], default=None,
                   help="encoder blocks (default None: follow the source plans: PlainConvUNet -> plain, ResEnc -> "
                   "residual)")
    p.add_argument("--fusion", choices=["concat", "sum", "mean"], default=None,
                   help="how the encoders' features are fused (None: the preset's, else concat)")
    p.add_argument("--groups", default=None,
                   help="channels per encoder, e.g. 'T1,T1Gd;T2,FLAIR' or '0,1;2,3' (None: one per channel)")
    p.add_argument("--encoder-width", type=float, default=None,
                   help="encoder width relative to the plans' features (None: 1.0)")
    p.add_argument("--source-plans", default="nnUNetPlans", help="plans to derive from")
    p.add_argument("--plans-name", default=None,
                   help="name of the new plans (None: <source>_MultiEncoder, or the backbone's); never the source")
    p.add_argument("--preset", default=None, help="a shipped preset by name (see --list-presets), e.g. "
                   "brats_taheri2025, or a preset JSON file")
    p.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name (never the "
                   "source plans)")
    p.set_defaults(func=_plans)

    p = command(sub, "unlabeled-dataset", "make an nnU-Net raw dataset of unlabeled scans (for SSL pretraining)")
    p.add_argument("--images", required=True, help="folder: one sub-folder per case, or <case>_<modality> files")
    p.add_argument("--modalities", required=True, help="comma-separated, in channel order, e.g. T1,FLAIR")
    p.add_argument("--dataset-id", type=int, required=True, help="id of the new dataset (1..999, unused)")
    p.add_argument("--name", default="Unlabeled", help="name of the new dataset")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (None: $nnUNet_raw)")
    p.add_argument("--pattern", default=None, help="file template, e.g. '{case}/{case}_{modality}.nii.gz' "
                   "(None: detected)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(func=_unlabeled_dataset)

    p = command(sub, "fingerprint", "nnU-Net's dataset fingerprint from a fixed-size random subset of the cases "
                "(large cohorts: docs/scale.md)")
    p.add_argument("-d", "--dataset", dest="d", required=True, metavar="DATASET",
                   help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("--max-cases", type=int, default=1000, help="cases read (all if fewer)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subset")
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--keep", action="store_true", help="keep an existing dataset_fingerprint.json")
    p.set_defaults(func=_fingerprint)

    brats = command(sub, "brats", "BraTS data: conversion to nnU-Net and back").add_subparsers(
        dest="brats_command", required=True)
    p = command(brats, "convert", "BraTS 2021 or 2023/2024 GLI folder -> nnU-Net raw dataset (regions)")
    p.add_argument("--input", required=True, help="folder of case folders (BraTS2021_xxxxx or BraTS-GLI-xxxxx-xxx)")
    p.add_argument("--dataset-id", type=int, default=137, help="id of the new dataset (nnU-Net's BraTS example "
                   "uses 137)")
    p.add_argument("--name", default=None, help="name of the new dataset (None: after the detected release, "
                   "BraTS2021 or BraTSGLI)")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (None: $nnUNet_raw)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and report) bad cases instead of failing")
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(func=_brats_convert)
    p = command(brats, "to-brats-labels", "nnU-Net predictions -> the source BraTS label convention")
    p.add_argument("--input", required=True, help="prediction folder (its dataset.json names the layout)")
    p.add_argument("--output", required=True, help="folder for the relabelled files")
    p.add_argument("--layout", choices=["2021", "gli"], default=None,
                   help="source convention (None: the brats_layout of the prediction folder's dataset.json)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    p.set_defaults(func=_brats_to_labels)

    dataset = command(sub, "dataset", "derived raw datasets").add_subparsers(dest="dataset_command", required=True)
    p = command(dataset, "restrict", "a new raw dataset with a subset of the channels (Cox et al. 2024, "
                "BrainSegFounder, sec. 2.4.4)")
    p.add_argument("-d", "--dataset", required=True, help="source dataset id or name")
    p.add_argument("--channels", required=True, help="comma-separated channel names, e.g. T1 or T1,FLAIR")
    p.add_argument("--dataset-id", type=int, required=True, help="id of the new dataset")
    p.add_argument("--name", default=None, help="name of the new dataset (None: <source name>_<channels>)")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (None: $nnUNet_raw)")
    p.add_argument("--allow-repeated-channels", action="store_true",
                   help="accept a channel named twice (one modality fed to several inputs, as BrainSegFounder "
                   "adapts a two-channel model)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(func=_dataset_restrict)

    splits = command(sub, "splits", "write folds into nnU-Net's splits_final.json").add_subparsers(
        dest="splits_command", required=True)
    p = command(splits, "default", "nnU-Net's own 5-fold split, written now (before any training)")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.set_defaults(func=_splits)
    p = command(splits, "monai", "folds from MONAI's brats21_folds.json (as in Cox et al. 2024, BrainSegFounder)")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--folds-json", required=True, help="MONAI's brats21_folds.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.set_defaults(func=_splits)
    p = command(splits, "few-shot", "append folds training on random subsets of a fold (Cox et al. 2024, "
                "BrainSegFounder, Fig. 5)")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.4", help="comma-separated fractions of the base fold's "
                   "training cases")
    p.add_argument("--repeats", type=int, default=5, help="random subsets per fraction")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same subsets)")
    p.add_argument("--base-fold", type=int, default=0, help="the fold whose training cases are subsampled")
    p.add_argument("--overwrite", action="store_true", help="rebuild the few-shot folds")
    p.set_defaults(func=_splits)
    add_case_lists_parser(splits, _Formatter)

    p = command(sub, "evaluate", "per case and region: Dice, Jaccard, SE, SP, PRE, ACC, HD95, ASSD, lesions")
    p.add_argument("--ref", required=True, help="reference labels (e.g. labelsTr)")
    p.add_argument("--pred", required=True, help="predictions")
    p.add_argument("-d", "--dataset", default=None, help="dataset id/name: its dataset.json (preprocessed, else raw) "
                   "gives the regions")
    p.add_argument("--dataset-json", default=None, help="or the dataset.json itself")
    p.add_argument("-o", "--output", default=None, help="summary JSON (a .csv is written beside it)")
    p.add_argument("--partial", action="store_true", help="evaluate only the cases that have a prediction")
    _add_brats_options(p)
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o and its .csv")
    p.set_defaults(func=_evaluate)

    p = command(sub, "report", "paper-style tables (Multi-encoder nnU-Net Table 1, BrainSegFounder Table 4) and the "
                "few-shot curve from a results folder")
    p.add_argument("--results", required=True, help="$nnUNet_results/DatasetXXX_Name")
    p.add_argument("-o", "--output", required=True, help="folder for tables (md, csv) and plots")
    p.add_argument("-tr", "--trainers", default=None, help="comma-separated trainer names (None: all)")
    p.add_argument("-c", "--configuration", default=None, help="only this configuration (None: all)")
    p.add_argument("--gt", default=None, help="references (None: the preprocessed gt_segmentations)")
    p.add_argument("--few-shot-index", default=None,
                   help="few_shot_index.json (None: the one beside the preprocessed splits_final.json, if any)")
    _add_brats_options(p)
    p.add_argument("--rank-by", default=None, metavar="COLUMN",
                   help="rank the models table by a metric, averaged over regions (e.g. brats_lesion_dice, dice, "
                   "hd95_mm) or of one region (dice:ET); distances and counts rank lower-is-better")
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace a report in -o")
    p.set_defaults(func=_report)

    weights = command(sub, "weights", "pretrained weights").add_subparsers(dest="weights_command", required=True)
    p = command(weights, "inspect", "format, tensors, input channels; with -d a dry-run transfer report")
    p.add_argument("file", help="the checkpoint (.pth / .pt)")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="force a checkpoint format (one row of nnunetv2_ext.transfer.formats.CHECKPOINT_FORMATS: "
                   "nnunet, nnssl, monai_swin_ssl, ...); None: detected")
    p.add_argument("-d", "--dataset", default=None, help="target dataset id/name: report what would load where")
    p.add_argument("-p", "--plans", default="nnUNetPlans_MultiEncoder", help="plans of the target network")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="configuration of the target network")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerMultiEncoder", help="trainer of the target network")
    p.set_defaults(func=_weights_inspect)
    p = command(weights, "use", "record FILE as the pretrained weights nnUNetTrainerMultiEncoderSSL takes for a "
                "dataset, plans and configuration when nnUNetv2_train gets no -pretrained_weights")
    p.add_argument("dataset", help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("file", help="checkpoint_final.pth of a pretraining run (or any file -pretrained_weights takes)")
    p.add_argument("-p", "--plans", default="nnUNetPlans_MultiEncoder", help="plans of the fine-tuning runs")
    p.add_argument("-c", "--configuration", default="3d_fullres", help="configuration of the fine-tuning runs")
    p.add_argument("--overwrite", action="store_true", help="replace another file recorded for the same key")
    p.set_defaults(func=_weights_use)

    p = command(sub, "predict", "nnUNetv2_predict from a subset of the modalities (multi-encoder models); "
                "nothing is written unless every check passes, and a failed run leaves -o as it was")
    p.add_argument("-i", required=True, help="input folder: {case}_{channel:04d} files of the present modalities")
    p.add_argument("-o", required=True, help="output folder (created; must be empty unless --overwrite or "
                   "--continue_prediction)")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-p", default="nnUNetPlans_MultiEncoder", help="plans identifier")
    p.add_argument("-tr", default="nnUNetTrainerMultiEncoderModalityDropout", help="trainer class used for training")
    p.add_argument("-c", default="3d_fullres", help="configuration")
    p.add_argument("-f", nargs="+", default=ALL_FOLDS, help="folds (several are averaged), as nnUNetv2_predict")
    p.add_argument("--modalities", required=True, help="present modalities, e.g. T1,FLAIR")
    p.add_argument("-step_size", type=float, default=0.5, help="sliding-window step size, in (0, 1]")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("--verbose", action="store_true", help="nnU-Net's predictor talks")
    p.add_argument("--save_probabilities", action="store_true", help="also write the class probabilities "
                   "(.npz, .pkl)")
    p.add_argument("--continue_prediction", action="store_true",
                   help="keep the segmentations already in -o and predict only the missing cases")
    p.add_argument("--zero-fill", action="store_true",
                   help="also predict with a one-stack network (vanilla nnU-Net): the absent channels are all-zero "
                   "images (train nnUNetTrainerVanillaChannelDropout for that)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name in each fold folder")
    p.add_argument("-npp", type=int, default=_env_int("nnUNet_npp", 3),
                   help="as nnUNetv2_predict's (>= 1; $nnUNet_npp); the subset preprocessing itself runs in this "
                   "process, one case at a time")
    p.add_argument("-nps", type=int, default=_env_int("nnUNet_nps", 3),
                   help="processes for the segmentation export (>= 1; $nnUNet_nps)")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                   help="as nnUNetv2_predict's; without CUDA the run is refused before anything is written: "
                   "use -device cpu")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty -o, replacing files of the same "
                   "name")
    p.set_defaults(func=_predict)

    proxy = command(sub, "proxy", "offline few-shot benchmark on proxy data built from the MNI152 template (needs "
                    "pip install 'nnunetv2-ext[proxy]')").add_subparsers(dest="proxy_command", required=True)
    p = command(proxy, "make", "write the proxy cohorts (healthy T1+FLAIR; 4-modality tumour cases) as nnU-Net raw "
                "datasets under OUT/nnUNet_raw")
    p.add_argument("--out", required=True, help="benchmark folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same files)")
    p.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm (2.0: the template's)")
    p.add_argument("--n-pretrain", type=int, default=24, help="healthy pretraining cases")
    p.add_argument("--n-target", type=int, default=16, help="labelled training pool")
    p.add_argument("--n-test", type=int, default=12, help="held-out test cases")
    p.add_argument("--pretrain-id", type=int, default=601, help="dataset id of the healthy cohort")
    p.add_argument("--target-id", type=int, default=602, help="dataset id of the tumour cohort")
    p.add_argument("-np", "--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true", help="replace existing proxy datasets")
    p.set_defaults(func=_proxy_make)

    p = command(proxy, "run", "train every method on every few-shot level through nnU-Net and write the tables, the "
                "few-shot curve and the paired comparison to OUT/results_<scale>; rerun to resume")
    p.add_argument("--out", required=True, help="benchmark folder written by `proxy make`")
    p.add_argument("--scale", choices=list(SCALES), default="cpu",
                   help="cpu: 2-core CPU in about an hour; cpu2d: nnU-Net's 2d configuration with long "
                   "pretraining, 2 labelled cases; gpu: nnU-Net's planned patch, longer schedule; smoke: a toy run "
                   "for tests")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of vanilla,scratch,ssl_vf,ssl_swin,ssl_cm and the ablations "
                   "ssl_vf_full,ssl_vf_sgd (None: the scale's)")
    p.add_argument("--n-labelled", default=None, help="comma-separated labelled-case levels, e.g. 2,4,8,16 "
                   "(None: the scale's)")
    p.add_argument("--repeats", type=int, default=None, help="random subsets per level (None: the scale's)")
    p.add_argument("--lanes", type=int, default=None, help="parallel training jobs (None: the scale's)")
    p.add_argument("-device", "--device", default=None, choices=["cpu", "cuda", "mps"],
                   help="training device (None: the scale's)")
    p.add_argument("-np", "--np", type=int, default=2, help="worker processes for scoring")
    p.add_argument("--background", action="store_true",
                   help="detach and log to OUT/proxy_run_<scale>.log (prints the pid and the log to follow)")
    p.set_defaults(func=_proxy_run)

    add_benchmark_parser(sub, _Formatter)

    p = command(sub, "trainer-path", "print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = command(sub, "example-data", "write a small synthetic BraTS-like dataset in nnU-Net raw format")
    p.add_argument("--raw", required=True, help="nnU-Net raw folder (e.g. $nnUNet_raw)")
    p.add_argument("--dataset-id", type=int, default=991, help="id of the new dataset (1..999, unused)")
    p.add_argument("--name", default="SyntheticBraTS", help="name of the new dataset")
    p.add_argument("--n-train", type=int, default=8, help="training cases (>= 2)")
    p.add_argument("--n-test", type=int, default=2, help="test cases (labels in labelsTs)")
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48], metavar=("Z", "Y", "X"),
                   help="volume shape (24..512 each)")
    p.add_argument("--seed", type=int, default=0, help="random seed (the same seed gives the same data)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.set_defaults(func=_example_data)

    p = command(sub, "overview", "a picture of a trained model on one case: each modality, reference and "
                "prediction overlaid (WT/TC/ET) and the training curve")
    p.add_argument("-i", "--images", required=True, help="the cases' images ({case}_{channel:04d}), e.g. imagesTs")
    p.add_argument("--ref", required=True, help="reference labels, e.g. labelsTs")
    p.add_argument("--pred", required=True, help="the model's predictions (nnUNetv2_predict -o)")
    p.add_argument("-m", "--model", required=True,
                   help="the model folder ($nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>): its "
                   "dataset.json names the channels, fold_F/checkpoint_final.pth gives the training curve")
    p.add_argument("-f", default="0", help="the fold whose training curve is shown")
    p.add_argument("--case", default=None, help="case id (None: the first prediction)")
    p.add_argument("-o", required=True, help="PNG to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p.set_defaults(func=_overview)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as e:
        print(f"nnunetv2_ext {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
