"""Smoke runs of the benchmark scripts on the CPU with tiny settings: they run end to end and print what they promise.
No timing is asserted (CPU wall clock on a shared machine says nothing about the GPU)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
VARIANTS = ("vanilla", "ME full separate", "ME full grouped", "ME half separate", "ME half grouped")
# nnU-Net accumulates sliding-window logits in fp16, so the two encoder paths differ by its rounding only
MAX_RELATIVE_LOGIT_DIFF = 5e-3


def run(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=BENCHMARKS.parent)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def table_rows(stdout: str) -> dict:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in VARIANTS:
            rows[cells[0]] = cells
    return rows


def test_multi_encoder_speed_cpu_smoke(tmp_path):
    out = tmp_path / "speed.json"
    proc = run("multi_encoder_speed.py", "--device", "cpu", "--patch", "32", "32", "32", "--features", "8", "16",
               "32", "--iters", "3", "--case-shape", "40", "40", "40",
               "--warmup", "1", "--predict-warmup", "0", "--threads", "1", "--json", str(out))
    rows = table_rows(proc.stdout)
    assert list(rows) == list(VARIANTS), proc.stdout
    for name, cells in rows.items():
        assert "skipped" not in cells, f"{name} was skipped:\n{proc.stdout}"
        assert float(cells[1]) > 0 and float(cells[8]) > 0  # train ms, predict s
    diffs = dict(re.findall(r"max abs logit diff \(grouped - separate\), (\w+ width): .*relative ([0-9.e+-]+)\)",
                            proc.stdout))
    assert set(diffs) == {"full width", "half width"}, proc.stdout
    assert all(float(d) < MAX_RELATIVE_LOGIT_DIFF for d in diffs.values()), diffs

    result = json.loads(out.read_text())
    params = {name: row["params"] for name, row in result["rows"].items()}
    assert params["ME full grouped"] == params["ME full separate"] > 2 * params["vanilla"]
    assert params["ME half grouped"] == params["ME half separate"]
    assert 0.8 < params["ME half separate"] / params["vanilla"] < 1.25  # half-width encoders: about vanilla's size


def test_volume_fusion_overhead_cpu_smoke():
    proc = run("volume_fusion_overhead.py", "--device", "cpu", "--patch", "16", "16", "16", "--features", "4", "8",
               "--iters", "2", "--warmup", "1")
    assert "overhead" in proc.stdout and "supervised step" in proc.stdout, proc.stdout


def test_quickstart_check_reads_what_the_quickstart_prints():
    """The quickstart check parses the Dice and time lines examples/quickstart.sh prints (the run itself takes
    minutes: benchmarks/quickstart_check.py, not CI)."""
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("quickstart_check", BENCHMARKS / "quickstart_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    script = (BENCHMARKS.parent / "examples" / "quickstart.sh").read_text()
    assert "whole tumour (WT)" in script and "Time: install" in script
    out = ("   whole tumour (WT): Dice 0.912  (test cases)\n    tumour core (TC): Dice 0.801  (test cases)\n"
           "enhancing tumour (ET): Dice 0.755  (test cases)\nTime: install 80 s, data + planning + preprocessing 40 s, "
           "training 200 s, prediction + evaluation 20 s; total 340 s\n")
    parsed = check.parse_quickstart_output(out)
    assert parsed["dice"] == {"WT": 0.912, "TC": 0.801, "ET": 0.755} and parsed["times"]["total_s"] == 340
    with pytest.raises(ValueError, match="Dice lines"):
        check.parse_quickstart_output(out.replace("(ET)", "(XX)"))


def test_scale_data_path_table_and_slopes():
    """The scaling table of benchmarks/scale_data_path.py from recorded stage results (a run itself takes minutes even
    at tiny sizes: nnU-Net's fingerprint draws 1e8 samples whatever the cohort): linear time has exponent 1."""
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("scale_data_path", BENCHMARKS / "scale_data_path.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    per_1000, exponent = scale.slope_and_exponent([250, 1000, 4000], [5.0, 20.0, 80.0])
    assert per_1000 == pytest.approx(20.0) and exponent == pytest.approx(1.0)
    assert scale.slope_and_exponent([250, 4000], [30.0, 30.0])[1] == pytest.approx(0.0)
    results = {n: {stage: {"wall_s": n / 100, "peak_mb": 100.0} for stage in scale.STAGES} for n in (250, 1000)}
    lines = scale.table(results, subset=250).splitlines()
    assert lines[0].startswith("| stage | N=250: s / peak MB | N=1000: s / peak MB |")
    assert lines[2] == "| import | 2.5 / 100 | 10.0 / 100 | 10.0 | 1.00 |"
    assert lines[-1].startswith("| fingerprint of 250 random cases |")
