"""The proxy benchmark end to end at a toy scale: `nnunetv2_ext proxy make` -> `proxy run --scale smoke` (nnU-Net's
fingerprint, plans, preprocessing, Volume Fusion stages 1 and 2, fine-tuning of two methods on a few-shot subset,
final validation on the held-out test cases) -> results whose numbers come from the written predictions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.conftest import NnUNetEnv, console_script, nnunet_environment


def _dice(ref: np.ndarray, pred: np.ndarray) -> float:
    denominator = ref.sum() + pred.sum()
    return 1.0 if denominator == 0 else float(2 * np.logical_and(ref, pred).sum() / denominator)


def test_proxy_make_then_smoke_run_then_resume(tmp_path: Path):
    env = nnunet_environment(tmp_path / "unused")  # PATH, discovery; the benchmark sets its own nnU-Net folders
    runner = NnUNetEnv(tmp_path, env, 0, "")
    ext = console_script("nnunetv2_ext")
    out = tmp_path / "proxy"
    runner.run(ext, "proxy", "make", "--out", str(out), "--resolution", "6", "--n-pretrain", "2", "--n-target", "3",
               "--n-test", "2", "--seed", "3")
    manifest = json.loads((out / "proxy_manifest.json").read_text())

    proc = runner.run(ext, "proxy", "run", "--out", str(out), "--scale", "smoke", "--np", "1", timeout=1500)
    assert "start ssl_vf/stage1" in proc.stdout and "ok ssl_vf/n2_s0" in proc.stdout, proc.stdout
    results_dir = out / "results_smoke"
    results = json.loads((results_dir / "results.json").read_text())
    for name in ("table.md", "curve.png", "paired.md"):
        assert (results_dir / name).is_file(), name
    assert (results_dir / "curve.png").read_bytes().startswith(b"\x89PNG")
    table = (results_dir / "table.md").read_text()
    assert "Multi-encoder, from scratch" in table and "Volume Fusion" in table

    # the fine-tuned SSL model loaded every encoder from stage 2, which loaded T1 and FLAIR from stage 1
    target = manifest["target_dataset"]
    ssl_dirs = list((out / "nnUNet_results" / "ssl_vf" / target)
                    .glob("nnUNetTrainerProxyMultiEncoderSSL_smoke__*/fold_*"))
    assert len(ssl_dirs) == 1
    report = json.loads((ssl_dirs[0] / "transfer_report.json").read_text())
    first_convs = [e for e in report["entries"] if (e["target_key"] or "").endswith("stages.0.0.convs.0.conv.weight")
                   and e["target_key"].startswith("encoder.encoders.")]
    assert len(first_convs) == 4 and all(e["action"] == "loaded" for e in first_convs)

    # the scores are those of the predictions on disk: recompute the whole-tumour Dice of one run by hand
    gt_dir = out / "nnUNet_raw" / target / "labelsTr"
    scratch = list((out / "nnUNet_results" / "scratch" / target).glob("*__*/fold_*"))
    assert len(scratch) == 1
    predictions = sorted((scratch[0] / "validation").glob("*.nii.gz"))
    assert sorted(p.name[:-7] for p in predictions) == sorted(manifest["test_cases"])
    by_hand = []
    for p in predictions:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(p))) > 0
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_dir / p.name))) > 0
        by_hand.append(_dice(ref, pred))
    run = next(r for r in results["runs"] if r["method"] == "scratch")
    assert np.isclose(run["mean"]["WT"]["dice"], np.mean(by_hand))

    # no method trained on a test case
    splits = json.loads((out / "nnUNet_preprocessed" / target / "splits_final.json").read_text())
    for split in splits:
        assert not set(split["train"]) & set(manifest["test_cases"])

    # running it again resumes: nothing is retrained
    again = runner.run(ext, "proxy", "run", "--out", str(out), "--scale", "smoke", "--np", "1")
    assert " start " not in again.stdout and "(4 already done)" in again.stdout, again.stdout
