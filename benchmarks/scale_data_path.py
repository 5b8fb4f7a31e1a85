"""How the data path of a pretraining cohort scales: wall time and peak memory of each stage at several cohort sizes.

For each size N it writes N synthetic unlabeled T1 + FLAIR cases (``--shape``, default 32^3) and runs, as a user would:

    nnunetv2_ext unlabeled-dataset      (import: checks and copies every case)
    nnUNetv2_extract_fingerprint -np 1  (nnU-Net's fingerprint, every case)
    nnUNetv2_plan_experiment
    nnUNetv2_preprocess -c 3d_fullres -np 1
    nnunetv2_ext fingerprint --max-cases M   (the bounded path: the fingerprint of M random cases)

Each stage runs in its own process; "peak MB" is the largest resident set of that process and its children
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a small wrapper process: the biggest single process, not a sum).
The table gives per stage the time and memory at each size, the seconds per 1,000 cases (least-squares slope) and
the exponent b of time ~ N^b between the smallest and largest size (1 = linear). Results in docs/scale.md.

    nice -n 5 python benchmarks/scale_data_path.py --sizes 250 1000 4000 --json benchmarks/scale_data_path.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

# run by the wrapper process: the command's wall time and the peak RSS (kB on Linux) of its process tree
_MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + '.log', 'w')).returncode
wall = time.perf_counter() - t0
json.dump({'rc': rc, 'wall_s': wall, 'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss},
          open(sys.argv[1], 'w'))
"""
FIRST_ID = 700
STAGES = ("import", "fingerprint", "plan", "preprocess", "fingerprint (subset)")


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def measure(cmd: Sequence[str], env: Dict[str, str], record: Path) -> dict:
    """Run ``cmd`` under the measuring wrapper; its wall time (s) and peak RSS (MB). Raises on a non-zero exit."""
    subprocess.run([sys.executable, "-c", _MEASURE, str(record), *cmd], env=env, check=True)
    result = json.loads(record.read_text())
    if result["rc"] != 0:
        log = Path(str(record) + ".log").read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {result['rc']}:\n{log}")
    return {"wall_s": result["wall_s"], "peak_mb": result["peak_kb"] / 1024}


def run_size(n: int, dataset_id: int, work: Path, shape, subset: int, env: Dict[str, str]) -> Dict[str, dict]:
    from nnunetv2_ext.data.synthetic import make_unlabeled_images

    scans = work / f"scans_{n}"
    t0 = time.perf_counter()
    make_unlabeled_images(scans, n, shape=tuple(shape), seed=n, modalities=("T1", "FLAIR"), overwrite=True)
    generate = time.perf_counter() - t0
    d = str(dataset_id)
    commands = {
        "import": [_script("nnunetv2_ext"), "unlabeled-dataset", "--images", str(scans), "--modalities", "T1,FLAIR",
                   "--dataset-id", d, "--name", f"Scale{n}", "--overwrite"],
        "fingerprint": [_script("nnUNetv2_extract_fingerprint"), "-d", d, "-np", "1", "--clean"],
        "plan": [_script("nnUNetv2_plan_experiment"), "-d", d],
        "preprocess": [_script("nnUNetv2_preprocess"), "-d", d, "-c", "3d_fullres", "-np", "1"],
        "fingerprint (subset)": [_script("nnunetv2_ext"), "fingerprint", "-d", d, "--max-cases", str(subset),
                                 "-np", "1"],
    }
    results = {"generate": {"wall_s": generate, "peak_mb": math.nan}}
    for stage, cmd in commands.items():
        results[stage] = measure(cmd, env, work / f"{n}_{stage.split()[0]}_{len(results)}.json")
        print(f"N={n} {stage}: {results[stage]['wall_s']:.1f} s, {results[stage]['peak_mb']:.0f} MB", flush=True)
    return results


def slope_and_exponent(sizes: Sequence[int], seconds: Sequence[float]):
    """Seconds per 1,000 cases (least-squares line through the points) and b of time ~ N^b (first to last size)."""
    per_1000 = float(np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)[0] * 1000) \
        if len(sizes) > 1 else math.nan
    exponent = math.log(seconds[-1] / seconds[0]) / math.log(sizes[-1] / sizes[0]) \
        if len(sizes) > 1 and seconds[0] > 0 else math.nan
    return per_1000, exponent


def table(results: Dict[int, Dict[str, dict]], subset: int) -> str:
    sizes = sorted(results)
    head = "| stage | " + " | ".join(f"N={n}: s / peak MB" for n in sizes) + " | s per 1,000 cases | b (time ~ N^b) |"
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    for stage in STAGES:
        seconds = [results[n][stage]["wall_s"] for n in sizes]
        per_1000, exponent = slope_and_exponent(sizes, seconds)
        cells = [f"{results[n][stage]['wall_s']:.1f} / {results[n][stage]['peak_mb']:.0f}" for n in sizes]
        name = stage if stage != "fingerprint (subset)" else f"fingerprint of {subset} random cases"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {per_1000:.1f} | {exponent:.2f} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000], help="cohort sizes")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], help="case shape (z y x)")
    parser.add_argument("--subset", type=int, default=250, help="cases of the bounded fingerprint (--max-cases)")
    parser.add_argument("--work", default=None, help="folder for the data (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="scale_data_path_") as tmp:
        work = Path(args.work or tmp)
        env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                   nnUNet_results=str(work / "results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        for sub in ("raw", "preprocessed", "results"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        results = {n: run_size(n, FIRST_ID + i, work, args.shape, args.subset, env)
                   for i, n in enumerate(sorted(args.sizes))}
    print(table(results, args.subset))
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "subset": args.subset,
                                               "results": {str(n): r for n, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
