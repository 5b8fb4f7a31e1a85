"""The missing-modality benchmark on the CPU proxy: protocol and results in benchmarks/MISSING_MODALITY.md.

    nnunetv2_ext proxy make --out DIR --np 2 --n-pretrain 2
    python benchmarks/missing_modality_proxy.py --out DIR --results benchmarks/missing_modality

Rerunning resumes (finished trainings and subsets are kept). ``--suffix smoke`` runs the whole pipeline with the toy
trainers on ``--n-test`` test cases.
"""
from __future__ import annotations

import argparse

from nnunetv2_ext.proxy.missing_modality import METHODS, SCALE, run_missing_modality_proxy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder of `nnunetv2_ext proxy make`")
    parser.add_argument("--results", required=True, help="folder for the tables, heat map and run.json")
    parser.add_argument("--suffix", default=SCALE, choices=[SCALE, "smoke"], help="trainer schedule")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=None, help="benchmark only the first N test cases")
    parser.add_argument("--report-only", action="store_true", help="write the tables of what is finished")
    args = parser.parse_args()
    written = run_missing_modality_proxy(args.out, args.results, args.suffix, args.methods.split(","), args.lanes,
                                         args.n_test, args.report_only, echo=lambda line: print(line, flush=True))
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
