"""The missing-modality subcommands of ``nnunetv2_ext`` (parsing and dispatch only; the work is in
:mod:`nnunetv2_ext.evaluation.missing_modality` and :mod:`nnunetv2_ext.data.splits`):

- ``nnunetv2_ext benchmark missing-modality``: Dice per non-empty subset of a model's modalities, the table and the
  heat map;
- ``nnunetv2_ext splits case-lists``: fold 0 and a test list from the user's train / val / test case lists (the
  RFNet / mmFormer BraTS 2018 protocol).

``nnunetv2_ext.cli`` registers them with :func:`add_parser` and :func:`add_case_lists_parser`.
"""
from __future__ import annotations

import argparse


def _benchmark(args: argparse.Namespace) -> None:
    from nnunetv2_ext.evaluation.missing_modality import regions_of, run_missing_modality
    from nnunetv2_ext.inference.subset_predict import model_folder_from_args

    if args.m is None and args.d is None:
        raise ValueError("name the model: -m MODEL_FOLDER, or -d DATASET with -tr / -p / -c")
    folder = args.m or model_folder_from_args(args.d, args.tr, args.p, args.c)
    result = run_missing_modality(folder, args.i, args.ref, args.o, folds=args.f, checkpoint=args.chk,
                                  device=args.device, use_mirroring=not args.disable_tta,
                                  num_processes_eval=args.np, num_processes_export=args.nps,
                                  cases_file=args.cases, echo=lambda line: print(line, flush=True))
    average, regions = result["table"][-1], regions_of(result["table"])
    print(result["model"].note)
    print(f"{average['subset']}: " + ", ".join(f"{g} {100 * average[f'{g}_dice']:.2f}" for g in regions) +
          f" (Dice %); predicted now: {len(result['predicted'])} subset(s)")
    for name, path in result["files"].items():
        print(f"{name}: {path}")


def add_parser(subparsers, formatter_class=argparse.ArgumentDefaultsHelpFormatter) -> argparse.ArgumentParser:
    """Register ``benchmark missing-modality`` under the ``nnunetv2_ext`` subcommands (``formatter_class``: the
    CLI's); return the ``benchmark`` parser."""
    text = "benchmarks of a trained model"
    benchmark = subparsers.add_parser("benchmark", help=text, description=text, formatter_class=formatter_class)
    sub = benchmark.add_subparsers(dest="benchmark_command", required=True)
    text = ("Dice per non-empty subset of the modalities (15 for BraTS: the RFNet / mmFormer table), their average "
            "and a heat map")
    p = sub.add_parser("missing-modality", help=text, description=text, formatter_class=formatter_class)
    p.add_argument("-i", required=True, help="images folder, CASE_XXXX files of every modality (e.g. imagesTs)")
    p.add_argument("--ref", required=True, help="reference labels folder (e.g. labelsTs); may hold more cases")
    p.add_argument("-o", required=True, help="output folder (predictions per subset, scores, table, heat map); "
                   "rerun to resume: finished subsets are kept")
    p.add_argument("-m", default=None, help="trained model folder TRAINER__PLANS__CONFIGURATION (or -d/-tr/-p/-c)")
    p.add_argument("-d", default=None, help="dataset id or name")
    p.add_argument("-tr", default="nnUNetTrainerMultiEncoderModalityDropout", help="trainer (with -d)")
    p.add_argument("-p", default="nnUNetPlans_MultiEncoder", help="plans identifier (with -d)")
    p.add_argument("-c", default="3d_fullres", help="configuration (with -d)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds (several are averaged)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name in each fold folder")
    p.add_argument("--cases", default=None, help="case list file (one id a line, e.g. the test_cases.txt of "
                   "`nnunetv2_ext splits case-lists`): only those cases of -i")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                   help="as nnUNetv2_predict's (cuda without CUDA is refused before anything is written)")
    p.add_argument("-np", type=int, default=1, help="processes scoring the cases (as nnUNetv2_evaluate_folder's)")
    p.add_argument("-nps", type=int, default=1, help="processes exporting segmentations (1: in this process, the "
                   "model loaded once for every subset)")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    p.set_defaults(func=_benchmark)
    return benchmark


def _case_lists(args: argparse.Namespace) -> None:
    from nnunetv2_ext.data.splits import dataset_case_ids, write_case_list_splits
    from nnunetv2_ext.io_utils import preprocessed_dataset_folder

    written = write_case_list_splits(preprocessed_dataset_folder(args.dataset), args.train, args.val, args.test,
                                     dataset_case_ids(args.dataset), args.overwrite)
    print(f"wrote {written['splits']}: fold 0 trains on {written['n_train']} cases, validates on {written['n_val']}")
    if written["test_cases"]:
        print(f"wrote {written['test_cases']}: {written['n_test']} test cases (benchmark missing-modality --cases)")
    if written["n_unused"]:
        print(f"{written['n_unused']} case(s) of the dataset are in no list")


def add_case_lists_parser(splits_subparsers, formatter_class=argparse.ArgumentDefaultsHelpFormatter) -> None:
    """Register ``splits case-lists`` under the ``nnunetv2_ext splits`` subcommands (``formatter_class``: the
    CLI's)."""
    text = ("fold 0 and a test list from train / val / test case-list files (the RFNet / mmFormer BraTS 2018 "
            "protocol); one case id a line")
    p = splits_subparsers.add_parser("case-lists", help=text, description=text, formatter_class=formatter_class)
    p.add_argument("-d", "--dataset", dest="dataset", required=True, help="dataset id or name (preprocessed: the "
                   "split goes into nnU-Net's splits_final.json)")
    p.add_argument("--train", required=True, help="training cases, one id a line ('#' comments)")
    p.add_argument("--val", required=True, help="validation cases (nnU-Net's fold-0 validation)")
    p.add_argument("--test", default=None, help="test cases: written to test_cases.txt beside splits_final.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing splits_final.json")
    p.set_defaults(func=_case_lists)
