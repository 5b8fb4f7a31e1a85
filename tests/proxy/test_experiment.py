"""The proxy benchmark's plumbing without training: plans, splits, jobs and their resume states, the runner."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nnunetv2_ext.proxy import experiment as ex
from nnunetv2_ext.training import proxy as proxy_trainers

POOL = [f"ProxyTarget_train_{i:03d}" for i in range(16)]
TEST = [f"ProxyTarget_test_{i:03d}" for i in range(12)]
MANIFEST = {"pretrain_dataset": "Dataset601_ProxyPretrain", "target_dataset": "Dataset602_ProxyTarget",
            "target_train_cases": POOL, "test_cases": TEST, "pretrain_cases": ["a", "b"], "spec": {"seed": 0}}


def _planned_config() -> dict:
    """A 3d_fullres configuration as nnU-Net plans it for 2 mm brains (6 stages, 32..320 features)."""
    n = 6
    return {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [96, 112, 96], "median_image_size_in_voxels": [80, 100, 85],
            "spacing": [2.0, 2.0, 2.0], "normalization_schemes": ["ZScoreNormalization"] * 4,
            "use_mask_for_norm": [True] * 4, "resampling_fn_data": "resample_data_or_seg_to_shape",
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"n_stages": n, "features_per_stage": [32, 64, 128, 256, 320, 320],
                                             "conv_op": "torch.nn.modules.conv.Conv3d",
                                             "kernel_sizes": [[3, 3, 3]] * n,
                                             "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                                             "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1),
                                             "conv_bias": True,
                                             "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                             "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                             "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                             "nonlin_kwargs": {"inplace": True}},
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


def test_cpu_configuration_has_the_scales_spacing_patch_and_widths():
    config = ex.proxy_configuration(_planned_config(), ex.SCALES["cpu"])
    kwargs = config["architecture"]["arch_kwargs"]
    assert config["spacing"] == [4.0, 4.0, 4.0] and config["patch_size"] == [32, 32, 32]
    assert kwargs["n_stages"] == 4 and kwargs["features_per_stage"] == [16, 32, 64, 128]
    assert len(kwargs["strides"]) == len(kwargs["kernel_sizes"]) == len(kwargs["n_conv_per_stage"]) == 4
    assert len(kwargs["n_conv_per_stage_decoder"]) == 3 and config["batch_size"] == 2


def test_gpu_configuration_keeps_what_nnunet_planned():
    planned = _planned_config()
    config = ex.proxy_configuration(planned, ex.SCALES["gpu"])
    assert config["spacing"] == planned["spacing"] and config["patch_size"] == planned["patch_size"]
    assert config["architecture"] == planned["architecture"]


def test_proxy_plans_share_one_topology_and_the_multi_encoder_plans(tmp_path):
    for name, channels in (("Dataset601_ProxyPretrain", {"0": "T1", "1": "FLAIR"}),
                           ("Dataset602_ProxyTarget", {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"})):
        folder = tmp_path / name
        folder.mkdir()
        planned = _planned_config()
        if name.startswith("Dataset601"):
            planned["patch_size"] = [112, 128, 112]  # the pretraining dataset planned differently
        (folder / "nnUNetPlans.json").write_text(json.dumps({"plans_name": "nnUNetPlans", "dataset_name": name,
                                                             "configurations": {"3d_fullres": planned}}))
        (folder / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0}}))
    scale = ex.SCALES["cpu"]
    ex.write_proxy_plans(tmp_path, ["Dataset601_ProxyPretrain", "Dataset602_ProxyTarget"], "Dataset602_ProxyTarget",
                         scale)
    vanilla, me = ex.plans_names(scale)
    configs = [json.loads((tmp_path / d / f"{p}.json").read_text())["configurations"]["3d_fullres"]
               for d in ("Dataset601_ProxyPretrain", "Dataset602_ProxyTarget") for p in (vanilla, me)]
    assert all(c["patch_size"] == [32, 32, 32] and c["data_identifier"] == f"{vanilla}_3d_fullres" for c in configs)
    assert configs[1]["architecture"]["arch_kwargs"]["encoder_width"] == 0.5
    assert configs[1]["architecture"]["arch_kwargs"]["modality_names"] == ["T1", "FLAIR"]
    assert configs[3]["architecture"]["arch_kwargs"]["modality_names"] == ["T1", "T1Gd", "T2", "FLAIR"]
    assert configs[0]["architecture"] == configs[2]["architecture"]


def test_splits_hold_out_the_test_cases_and_draw_the_harness_subsets(tmp_path):
    folds = ex.write_proxy_splits(tmp_path, MANIFEST, ex.SCALES["cpu"], seed=0)
    splits = json.loads((tmp_path / "splits_final.json").read_text())
    levels = sorted({(e["n_labelled"], e["subset"]) for e in folds["folds"]})
    assert levels == [(n, s) for n in (2, 4, 8) for s in range(3)] + [(16, 0)]
    for entry in folds["folds"]:
        split = splits[entry["fold"]]
        assert len(split["train"]) == entry["n_labelled"] and set(split["train"]) <= set(POOL)
        assert split["val"] == TEST
    ssl = splits[folds["ssl_fold"]]
    assert ssl["train"] == POOL and set(ssl["val"]) <= set(POOL)
    assert all(not set(s["train"]) & set(TEST) for s in splits)
    # subsets of one level differ; the same seed gives the same subsets
    twos = [tuple(splits[e["fold"]]["train"]) for e in folds["folds"] if e["n_labelled"] == 2]
    assert len(set(twos)) == 3
    other = tmp_path / "again"
    other.mkdir()
    ex.write_proxy_splits(other, MANIFEST, ex.SCALES["cpu"], seed=0)
    assert json.loads((other / "splits_final.json").read_text()) == splits
    # written once: a resumed benchmark keeps its folds, and refuses other levels or repeats instead of ignoring them
    assert ex.write_proxy_splits(tmp_path, MANIFEST, ex.SCALES["cpu"], seed=1) == folds
    for changed in (replace(ex.SCALES["cpu"], repeats=5), replace(ex.SCALES["cpu"], n_labelled=(2, 16))):
        with pytest.raises(ValueError, match="already holds a benchmark with levels"):
            ex.write_proxy_splits(tmp_path, MANIFEST, changed, seed=0)


def test_levels_outside_the_pool_are_refused(tmp_path):
    with pytest.raises(ValueError, match="1..16"):
        ex.write_proxy_splits(tmp_path, MANIFEST, replace(ex.SCALES["cpu"], n_labelled=(2, 32)), seed=0)


def test_jobs_chain_pretraining_before_fine_tuning_and_every_trainer_exists(tmp_path):
    scale = ex.SCALES["cpu"]
    (tmp_path / "pp").mkdir()
    folds = ex.write_proxy_splits(tmp_path / "pp", MANIFEST, scale, seed=0)
    jobs = ex.build_jobs(tmp_path, MANIFEST, folds, scale, scale.methods)
    names = [j.name for j in jobs]
    assert names[:4] == ["ssl_vf/stage1", "ssl_vf/stage2", "ssl_swin/stage1", "ssl_swin/stage2"]
    assert len(jobs) == 4 + 4 * 10
    by_name = {j.name: j for j in jobs}
    stage2 = by_name["ssl_vf/stage2"]
    assert stage2.cmd[stage2.cmd.index("-pretrained_weights") + 1] == \
        str(by_name["ssl_vf/stage1"].fold_dir / "checkpoint_final.pth")
    fine = by_name["ssl_vf/n2_s1"]
    assert fine.deps == ["ssl_vf/stage2"]
    assert fine.cmd[fine.cmd.index("-pretrained_weights") + 1] == str(stage2.fold_dir / "checkpoint_final.pth")
    assert by_name["vanilla/n16_s0"].cmd[by_name["vanilla/n16_s0"].cmd.index("-p") + 1] == "nnUNetPlans_proxy_cpu"
    # each method writes into its own nnUNet_results, so both SSL methods can share the fine-tuning trainer
    assert by_name["ssl_vf/n2_s0"].fold_dir != by_name["ssl_swin/n2_s0"].fold_dir
    for job in jobs:
        trainer = job.cmd[job.cmd.index("-tr") + 1]
        assert hasattr(proxy_trainers, trainer), trainer


def test_job_state_follows_the_files(tmp_path):
    job = ex.Job("m/n2_s0", ["true"], tmp_path, tmp_path / "fold_3")
    assert job.state() == "new"
    job.fold_dir.mkdir()
    (job.fold_dir / "checkpoint_latest.pth").touch()
    assert job.state() == "continue"
    (job.fold_dir / "checkpoint_final.pth").touch()
    assert job.state() == "validate"
    (job.fold_dir / "validation").mkdir()
    (job.fold_dir / "validation" / "summary.json").touch()
    assert job.state() == "done"
    pretraining = ex.Job("m/stage1", ["true"], tmp_path, tmp_path / "fold_all", needs_validation=False)
    pretraining.fold_dir.mkdir()
    (pretraining.fold_dir / "checkpoint_final.pth").touch()
    assert pretraining.state() == "done"


def _script(tmp_path: Path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(body)
    return [sys.executable, str(path)]


def test_runner_resumes_with_continue_and_blocks_the_dependants_of_a_failure(tmp_path):
    made = tmp_path / "fold_a"
    ok = _script(tmp_path, "ok", f"import pathlib, sys; p = pathlib.Path({str(made)!r}); p.mkdir(exist_ok=True); "
                                 f"(p / 'checkpoint_final.pth').write_text(' '.join(sys.argv[1:]))")
    fail = _script(tmp_path, "fail", "import sys; print('boom'); sys.exit(3)")
    jobs = [ex.Job("a/stage1", ok + ["-pretrained_weights", "x/checkpoint_final.pth"], tmp_path, made,
                   needs_validation=False),
            ex.Job("b/stage1", fail, tmp_path, tmp_path / "fold_b", needs_validation=False),
            ex.Job("b/n2_s0", ok, tmp_path, tmp_path / "fold_c", deps=["b/stage1"])]
    (tmp_path / "fold_a").mkdir()
    (tmp_path / "fold_a" / "checkpoint_latest.pth").touch()  # an interrupted run: continued, not restarted
    lines = []
    status = ex.Runner(jobs, {}, tmp_path / "logs", lanes=2, echo=lines.append).run()
    assert status == {"a/stage1": "ok", "b/stage1": "failed", "b/n2_s0": "failed"}
    assert (made / "checkpoint_final.pth").read_text() == "--c"  # no -pretrained_weights with --c
    text = "\n".join(lines)
    assert "FAILED b/stage1 (exit 3)" in text and "boom" in text and "blocked b/n2_s0" in text
    assert (tmp_path / "logs" / "b__stage1.log").read_text().count("boom") == 1


def test_run_without_proxy_data_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="proxy make"):
        ex.run_benchmark(tmp_path)


def test_unknown_scale_and_method_are_refused(tmp_path):
    (tmp_path / "proxy_manifest.json").write_text(json.dumps(MANIFEST))
    with pytest.raises(ValueError, match="scale"):
        ex.run_benchmark(tmp_path, scale="huge")
    with pytest.raises(ValueError, match="unknown method"):
        ex.run_benchmark(tmp_path, methods=["ssl_magic"])
    with pytest.raises(ValueError, match="nnUNetTrainerProxyVolumeFusionSGD_smoke"):  # an ablation of cpu2d only
        ex.run_benchmark(tmp_path, scale="smoke", methods=["scratch", "ssl_vf_sgd"])


def test_threshold_baseline_is_a_scored_row_of_the_tables(tmp_path):
    """``proxy run``'s extra row: thresholds fitted on the pool, the test cases predicted and scored like a method's
    fold, and the row in the written table under its label."""
    from nnunetv2_ext.proxy.analysis import score_runs, write_results
    from nnunetv2_ext.proxy.anatomy import ProxySpec, make_proxy
    from nnunetv2_ext.proxy.threshold_baseline import LABEL, METHOD

    manifest = make_proxy(tmp_path, ProxySpec(seed=1, resolution=6.0, n_pretrain=2, n_target=2, n_test=2))
    folds = {"pool": manifest["target_train_cases"], "test_cases": manifest["test_cases"]}
    run = ex.threshold_baseline_run(tmp_path, manifest, folds)
    assert (run.method, run.n_labelled, run.subset) == (METHOD, 2, 0)
    raw = tmp_path / "nnUNet_raw" / manifest["target_dataset"]
    assert sorted(p.name for p in (Path(run.fold_dir) / "validation").glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in manifest["test_cases"])
    scores = score_runs([run], raw / "labelsTr", raw / "dataset.json")
    assert set(scores[run]["cases"]) == set(manifest["test_cases"]) and list(scores[run]["mean"]) == ["WT", "TC", "ET"]
    write_results(scores, tmp_path / "results", {METHOD: LABEL}, comparisons=())
    assert LABEL in (tmp_path / "results" / "table.md").read_text()


@pytest.mark.parametrize("scale_name", sorted(ex.SCALES))
def test_every_scale_builds_every_method_once_with_existing_trainers(tmp_path, scale_name):
    scale = ex.SCALES[scale_name]
    (tmp_path / "pp").mkdir()
    folds = ex.write_proxy_splits(tmp_path / "pp", MANIFEST, scale, seed=0)
    methods = ex.SCALES["cpu2d"].methods  # the ranking set: every scale runs all of it (ablations: cpu2d only)
    jobs = ex.build_jobs(tmp_path, MANIFEST, folds, scale, methods)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))  # no stage or fine-tune twice
    n_runs = len(folds["folds"])
    for key in methods:
        method = ex.METHODS[key]
        own_stages = [n for n in names if n.startswith(f"{key}/stage")]
        expected = 0 if method.pretext is None or method.pretrained_by else (2 if method.two_stage else 1)
        assert len(own_stages) == expected, key
        fine = [j for j in jobs if j.name.startswith(f"{key}/n")]
        assert len(fine) == n_runs, key
        if method.pretext is not None:  # every fine-tune reuses the one pretraining of its method
            assert {tuple(j.deps) for j in fine} == {(f"{method.pretrained_by or key}/stage2",)}
    for job in jobs:
        trainer = job.cmd[job.cmd.index("-tr") + 1]
        assert hasattr(proxy_trainers, trainer), trainer


def test_cpu2d_is_the_fixed_ranking_protocol():
    scale = ex.SCALES["cpu2d"]
    assert scale.methods == ("vanilla", "scratch", "ssl_vf", "ssl_swin", "ssl_cm", "ssl_mg", "ssl_mim", "ssl_ps")
    assert scale.n_labelled == (2, 8) and scale.repeats == 3 and scale.configuration == "2d"
    fine_tune = proxy_trainers.nnUNetTrainerProxyMultiEncoderSSL_cpu2d
    pretrain = proxy_trainers.nnUNetTrainerProxyVolumeFusion_cpu2d
    assert fine_tune.num_epochs * fine_tune.num_iterations_per_epoch == 500
    assert pretrain.num_epochs * pretrain.num_iterations_per_epoch == 1000
