"""Does the README's first command still train a model that works? Runs ``examples/quickstart.sh`` (by default in a
fresh clone of this checkout with its own venv, as a new user would), reads the Dice it prints for the test cases and
the stage times, appends the record to ``benchmarks/quickstart.json`` and exits 1 when a region falls below its floor
(WT 0.80, TC 0.60, ET 0.60: the quickstart's promise in the README).

    python benchmarks/quickstart_check.py                 # fresh clone of HEAD into a temporary folder
    python benchmarks/quickstart_check.py --in-place      # this checkout, its venv (faster: no install)
    python benchmarks/quickstart_check.py --overview-to docs/quickstart_overview.png   # the README's picture

Not a unit test: it takes minutes and its time depends on the machine; run it after changes to training, the
example data, planning or the trainers' defaults.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"WT": 0.80, "TC": 0.60, "ET": 0.60}
_DICE = re.compile(r"\((WT|TC|ET)\): Dice ([0-9.]+|nan)")
_TIMES = re.compile(r"Time: install (\d+) s, data \+ planning \+ preprocessing (\d+) s, training (\d+) s, "
                    r"prediction \+ evaluation (\d+) s; total (\d+) s")


def parse_quickstart_output(text: str) -> dict:
    """The test-case Dice per region and the stage times (seconds) the quickstart prints.

    Raises:
        ValueError: a region or the time line is missing (the quickstart did not get to its end).
    """
    dice = {region: float(value) for region, value in _DICE.findall(text)}
    times = _TIMES.search(text)
    if set(dice) != set(FLOORS) or times is None:
        raise ValueError("the quickstart's output lacks its Dice lines or its time line:\n" + text[-3000:])
    keys = ("install_s", "prepare_s", "train_s", "predict_evaluate_s", "total_s")
    return {"dice": dice, "times": dict(zip(keys, (int(t) for t in times.groups())))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--in-place", action="store_true", help="run in this checkout instead of a fresh clone")
    parser.add_argument("--record", default=str(REPO / "benchmarks" / "quickstart.json"),
                        help="JSON list the result is appended to ('' to not record)")
    parser.add_argument("--overview-to", default="",
                        help="copy the quickstart's overview.png here (e.g. docs/quickstart_overview.png, the README's "
                             "picture); '' to not copy")
    args = parser.parse_args(argv)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="quickstart_check_"))
    try:
        if args.in_place:
            workdir, env = REPO, dict(os.environ, QUICKSTART_DIR=str(tmp / "quickstart"))
        else:
            workdir = tmp / "clone"
            subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "NNUNETV2_EXT_VENV")}
            env["QUICKSTART_DIR"] = str(workdir / "quickstart")
        start, load_start = time.time(), os.getloadavg()[0]
        proc = subprocess.run(["bash", "examples/quickstart.sh"], cwd=workdir, env=env, capture_output=True,
                              text=True)
        wall = time.time() - start
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"quickstart failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        result = parse_quickstart_output(proc.stdout)
        overview = Path(env["QUICKSTART_DIR"]) / "overview.png"
        if args.overview_to and overview.is_file():
            shutil.copyfile(overview, args.overview_to)
        result.update(commit=commit, fresh_clone=not args.in_place, wall_s=round(wall, 1),
                      load_average_1min=[round(load_start, 1), round(os.getloadavg()[0], 1)],
                      overview_written=overview.is_file(), date=datetime.date.today().isoformat(),
                      machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU"
                      if not _has_cuda(workdir) else f"{platform.machine()}, CUDA")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("| region | Dice | floor |\n|---|---|---|")
    for region, floor in FLOORS.items():
        print(f"| {region} | {result['dice'][region]:.3f} | {floor:.2f} |")
    print("times (s): " + ", ".join(f"{k} {v}" for k, v in result["times"].items()) + f"; wall {result['wall_s']}")
    if args.record:
        path = Path(args.record)
        records = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(records + [result], indent=1) + "\n")
        print(f"recorded in {path}")
    failed = [r for r, floor in FLOORS.items() if not result["dice"][r] >= floor]
    if failed or not result["overview_written"]:
        print(f"below the floor: {', '.join(failed) or 'none'}; overview.png written: {result['overview_written']}",
              file=sys.stderr)
        return 1
    return 0


def _has_cuda(workdir: Path) -> bool:
    venv = workdir / ".venv" / "bin" / "python"
    python = str(venv) if venv.is_file() else sys.executable
    out = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                         text=True).stdout
    return out.strip() == "True"


if __name__ == "__main__":
    sys.exit(main())
