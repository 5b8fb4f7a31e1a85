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
                              preprocessed_root=os.environ.get("nnUNet_preprocessed"), overwrite=args.overwrite)
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
    from nnunetv2_ext.io_utils import preprocessed_dataset_folder

    if not (args.dataset_json or args.dataset):
        raise ValueError("give --dataset (id or name) or --dataset-json: the dataset.json names the regions")
    dataset_json = args.dataset_json or preprocessed_dataset_folder(args.dataset) / "dataset.json"
    summary = evaluate_folders(args.ref, args.pred, dataset_json, num_processes=args.np, output=args.output,
                               strict=not args.partial)
    for region, metrics in summary["mean"].items():
        print(f"{region:>6}: Dice {metrics['dice']:.4f}  HD95 {metrics['hd95_mm']:.2f} mm  "
              f"SE {metrics['sensitivity']:.4f}  PRE {metrics['precision']:.4f}")
    if args.output:
        print(f"wrote {args.output} and its .csv")


def _report(args: argparse.Namespace) -> None:
    from nnunetv2_ext.evaluation.report import write_report

    trainers = [t for t in (args.trainers or "").split(",") if t] or None
    written = write_report(args.results, args.output, trainers, args.configuration, args.gt, args.few_shot_index,
                           args.np, args.overwrite)
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
    written = predict_with_subset(folder, args.i, args.o, args.modalities, folds=args.f, checkpoint=args.chk,
                                  device=args.device, overwrite=args.overwrite, num_processes=args.npp,
                                  use_mirroring=not args.disable_tta)
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
    """--help shows every option's default."""


ARCHITECTURES = ("multi_encoder",) + BACKBONE_NAMES  # the registry's names (planning.backbones imports no torch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunetv2_ext", description="nnU-Net v2 plugin: multi-encoder U-Net, "
                                     "self-supervised pretraining, weight transfer. Trainers run through nnU-Net's "
                                     "own commands once `export nnUNet_extTrainer=$(nnunetv2_ext trainer-path)`.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plans", help="derive multi-encoder plans from a dataset's nnU-Net plans")
    p.add_argument("dataset", help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("--arch", default="multi_encoder", choices=ARCHITECTURES,
                   help="multi_encoder (default) or an alternative backbone")
    p.add_argument("--encoder", choices=["plain", "residual"], default=None,
                   help="encoder blocks (default: follow the source plans: PlainConvUNet -> plain, ResEnc -> residual)")
    p.add_argument("--fusion", choices=["concat", "sum", "mean"], default=None, help="default concat")
    p.add_argument("--groups", default=None,
                   help="channels per encoder, e.g. 'T1,T1Gd;T2,FLAIR' or '0,1;2,3' (default: one per channel)")
    p.add_argument("--encoder-width", type=float, default=None,
                   help="encoder width relative to the plans' features (default 1.0)")
    p.add_argument("--source-plans", default="nnUNetPlans", help="plans to derive from (default nnUNetPlans)")
    p.add_argument("--plans-name", default=None, help="name of the new plans (default <source>_MultiEncoder)")
    p.add_argument("--preset", default=None, help="preset JSON, e.g. plans/brats_taheri2025.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plans file of that name")
    p.set_defaults(func=_plans)

    p = sub.add_parser("unlabeled-dataset", help="make an nnU-Net raw dataset of unlabeled scans (for SSL pretraining)")
    p.add_argument("--images", required=True, help="folder: one sub-folder per case, or <case>_<modality> files")
    p.add_argument("--modalities", required=True, help="comma-separated, in channel order, e.g. T1,FLAIR")
    p.add_argument("--dataset-id", type=int, required=True)
    p.add_argument("--name", default="Unlabeled")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--pattern", default=None, help="file template, e.g. '{case}/{case}_{modality}.nii.gz'")
    p.add_argument("--strict", action="store_true", help="stop at the first bad case instead of skipping it")
    p.add_argument("--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_unlabeled_dataset)

    brats = sub.add_parser("brats", help="BraTS data: conversion to nnU-Net and back").add_subparsers(
        dest="brats_command", required=True)
    p = brats.add_parser("convert", help="BraTS 2021 or 2023/2024 GLI folder -> nnU-Net raw dataset (regions)")
    p.add_argument("--input", required=True, help="folder of case folders (BraTS2021_xxxxx or BraTS-GLI-xxxxx-xxx)")
    p.add_argument("--dataset-id", type=int, default=137)
    p.add_argument("--name", default="BraTS2021")
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and report) bad cases instead of failing")
    p.add_argument("--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_brats_convert)
    p = brats.add_parser("to-brats-labels", help="nnU-Net predictions -> the source BraTS label convention")
    p.add_argument("--input", required=True, help="prediction folder (its dataset.json names the layout)")
    p.add_argument("--output", required=True)
    p.add_argument("--layout", choices=["2021", "gli"], default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_brats_to_labels)

    dataset = sub.add_parser("dataset", help="derived raw datasets").add_subparsers(dest="dataset_command",
                                                                                      required=True)
    p = dataset.add_parser("restrict", help="a new raw dataset with a subset of the channels "
                                            "(Cox et al. 2024, BrainSegFounder, sec. 2.4.4)")
    p.add_argument("--dataset", required=True, help="source dataset id or name")
    p.add_argument("--channels", required=True, help="comma-separated channel names, e.g. T1 or T1,FLAIR")
    p.add_argument("--dataset-id", type=int, required=True, help="id of the new dataset")
    p.add_argument("--name", default=None)
    p.add_argument("--raw", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_dataset_restrict)

    splits = sub.add_parser("splits", help="write folds into nnU-Net's splits_final.json").add_subparsers(
        dest="splits_command", required=True)
    p = splits.add_parser("default", help="nnU-Net's own 5-fold split, written now (before any training)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_splits)
    p = splits.add_parser("monai", help="folds from MONAI's brats21_folds.json (as in Cox et al. 2024, "
                                        "BrainSegFounder)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--folds-json", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_splits)
    p = splits.add_parser("few-shot", help="append folds training on random subsets of a fold "
                                           "(Cox et al. 2024, BrainSegFounder, Fig. 5)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--fractions", default="0.05,0.1,0.2,0.4")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-fold", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="rebuild the few-shot folds")
    p.set_defaults(func=_splits)
    add_case_lists_parser(splits)

    p = sub.add_parser("evaluate", help="per case and region: Dice, Jaccard, SE, SP, PRE, ACC, HD95, ASSD, lesions")
    p.add_argument("--ref", required=True, help="reference labels (e.g. labelsTr)")
    p.add_argument("--pred", required=True, help="predictions")
    p.add_argument("--dataset", default=None, help="dataset id/name (its dataset.json gives the regions)")
    p.add_argument("--dataset-json", default=None, help="or the dataset.json itself")
    p.add_argument("-o", "--output", default=None, help="summary JSON (a .csv is written beside it)")
    p.add_argument("--partial", action="store_true", help="evaluate only the cases that have a prediction")
    p.add_argument("--np", type=int, default=1)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("report", help="paper-style tables (Multi-encoder nnU-Net Table 1, BrainSegFounder Table 4) "
                                      "and the few-shot curve from a results folder")
    p.add_argument("--results", required=True, help="$nnUNet_results/DatasetXXX_Name")
    p.add_argument("-o", "--output", required=True, help="folder for tables (md, csv) and plots")
    p.add_argument("--trainers", default=None, help="comma-separated trainer names (default: all)")
    p.add_argument("--configuration", default=None)
    p.add_argument("--gt", default=None, help="references (default: the preprocessed gt_segmentations)")
    p.add_argument("--few-shot-index", default=None)
    p.add_argument("--np", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_report)

    weights = sub.add_parser("weights", help="pretrained weights").add_subparsers(dest="weights_command",
                                                                                  required=True)
    p = weights.add_parser("inspect", help="format, tensors, input channels; with --dataset a dry-run transfer report")
    p.add_argument("file")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="force a checkpoint format (one row of nnunetv2_ext.transfer.formats.CHECKPOINT_FORMATS: "
                   "nnunet, nnssl, monai_swin_ssl, ...); default: detected")
    p.add_argument("--dataset", default=None, help="target dataset id/name: report what would load where")
    p.add_argument("--plans", default="nnUNetPlans_MultiEncoder")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--trainer", default="nnUNetTrainerMultiEncoder")
    p.set_defaults(func=_weights_inspect)
    p = weights.add_parser("use", help="record FILE as the pretrained weights nnUNetTrainerMultiEncoderSSL takes for a "
                           "dataset, plans and configuration when nnUNetv2_train gets no -pretrained_weights")
    p.add_argument("dataset", help="dataset id or name (as for nnUNetv2_train)")
    p.add_argument("file", help="checkpoint_final.pth of a pretraining run (or any file -pretrained_weights takes)")
    p.add_argument("-p", "--plans", default="nnUNetPlans_MultiEncoder")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("--overwrite", action="store_true", help="replace another file recorded for the same key")
    p.set_defaults(func=_weights_use)

    p = sub.add_parser("predict", help="nnU-Net prediction from a subset of the modalities (multi-encoder models)")
    p.add_argument("-i", required=True, help="input folder: {case}_{channel:04d} files of the present modalities")
    p.add_argument("-o", required=True, help="output folder")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-f", nargs="+", default=["0"], help="folds")
    p.add_argument("-tr", default="nnUNetTrainerMultiEncoderModalityDropout")
    p.add_argument("-p", default="nnUNetPlans_MultiEncoder")
    p.add_argument("--modalities", required=True, help="present modalities, e.g. T1,FLAIR")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"])
    p.add_argument("-npp", type=int, default=1, help="processes for preprocessing/export")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_predict)

    proxy = sub.add_parser("proxy", help="offline few-shot benchmark on proxy data built from the MNI152 template "
                           "(needs pip install 'nnunetv2-ext[proxy]')").add_subparsers(dest="proxy_command",
                                                                                   required=True)
    p = proxy.add_parser("make", help="write the proxy cohorts (healthy T1+FLAIR; 4-modality tumour cases) as "
                         "nnU-Net raw datasets under OUT/nnUNet_raw")
    p.add_argument("--out", required=True, help="benchmark folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm (default 2.0, the template's)")
    p.add_argument("--n-pretrain", type=int, default=24, help="healthy pretraining cases (default 24)")
    p.add_argument("--n-target", type=int, default=16, help="labelled training pool (default 16)")
    p.add_argument("--n-test", type=int, default=12, help="held-out test cases (default 12)")
    p.add_argument("--pretrain-id", type=int, default=601)
    p.add_argument("--target-id", type=int, default=602)
    p.add_argument("--np", type=int, default=1, help="worker processes")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_proxy_make)

    p = proxy.add_parser("run", help="train every method on every few-shot level through nnU-Net and write the "
                         "tables, the few-shot curve and the paired comparison to OUT/results_<scale>; rerun to resume")
    p.add_argument("--out", required=True, help="benchmark folder written by `proxy make`")
    p.add_argument("--scale", choices=list(SCALES), default="cpu",
                   help="cpu: 2-core CPU in about an hour (default); cpu2d: nnU-Net's 2d configuration with long "
                   "pretraining, 2 labelled cases; gpu: nnU-Net's planned patch, longer schedule; smoke: a toy run "
                   "for tests")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of vanilla,scratch,ssl_vf,ssl_swin,ssl_cm and the ablations "
                   "ssl_vf_full,ssl_vf_sgd")
    p.add_argument("--n-labelled", default=None, help="comma-separated labelled-case levels, e.g. 2,4,8,16")
    p.add_argument("--repeats", type=int, default=None, help="random subsets per level")
    p.add_argument("--lanes", type=int, default=None, help="parallel training jobs")
    p.add_argument("--device", default=None, choices=["cpu", "cuda", "mps"])
    p.add_argument("--np", type=int, default=2, help="worker processes for scoring")
    p.add_argument("--background", action="store_true",
                   help="detach and log to OUT/proxy_run_<scale>.log (prints the pid and the log to follow)")
    p.set_defaults(func=_proxy_run)

    add_benchmark_parser(sub)

    p = sub.add_parser("trainer-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser("example-data", help="write a small synthetic BraTS-like dataset in nnU-Net raw format")
    p.add_argument("--raw", required=True, help="nnU-Net raw folder (e.g. $nnUNet_raw)")
    p.add_argument("--dataset-id", type=int, default=991)
    p.add_argument("--name", default="SyntheticBraTS")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48], metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_example_data)

    p = sub.add_parser("overview", help="a picture of a trained model on one case: each modality, reference and "
                       "prediction overlaid (WT/TC/ET) and the training curve", formatter_class=_Formatter)
    p.add_argument("-i", "--images", required=True, help="the cases' images ({case}_{channel:04d}), e.g. imagesTs")
    p.add_argument("--ref", required=True, help="reference labels, e.g. labelsTs")
    p.add_argument("--pred", required=True, help="the model's predictions (nnUNetv2_predict -o)")
    p.add_argument("-m", "--model", required=True,
                   help="the model folder ($nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>): its "
                   "dataset.json names the channels, fold_F/checkpoint_final.pth gives the training curve")
    p.add_argument("-f", default="0", help="the fold whose training curve is shown")
    p.add_argument("--case", default=None, help="case id (default: the first prediction)")
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
