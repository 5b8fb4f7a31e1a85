"""Which pretraining checkpoint a fine-tuning run takes without -pretrained_weights: the convention search on fake
results trees, the record (`nnunetv2_ext weights use`), the precedence, the refusals and the SSL trainer's use of it."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnunetv2_ext import cli
from nnunetv2_ext.training import pretraining_lookup as lookup
from nnunetv2_ext.training.multi_encoder import nnUNetTrainerMultiEncoder, nnUNetTrainerMultiEncoderSSL

DATASET, PLANS, CONFIG = "Dataset991_X", "nnUNetPlans_MultiEncoder", "3d_fullres"


def _run(results: Path, trainer: str, fold="all", dataset=DATASET, plans=PLANS, config=CONFIG,
         checkpoint=lookup.CHECKPOINT) -> Path:
    """A fake nnU-Net run folder holding one (empty) checkpoint file; returns the checkpoint."""
    folder = results / dataset / f"{trainer}__{plans}__{config}" / f"fold_{fold}"
    folder.mkdir(parents=True)
    (folder / checkpoint).write_bytes(b"fake")
    return folder / checkpoint


def _find(results: Path):
    return lookup.find_pretraining_checkpoints(results, DATASET, PLANS, CONFIG)


def _resolve(results: Path):
    return lookup.resolve_pretraining_checkpoint(results, DATASET, PLANS, CONFIG, "nnUNetv2_train ... (this command)")


# ------------------------------------------------------------------------------------------------ convention


def test_nothing_found_in_an_empty_or_missing_results_folder(tmp_path):
    assert _find(tmp_path / "no_such_folder") == []
    (tmp_path / DATASET).mkdir()
    assert _find(tmp_path) == []


@pytest.mark.parametrize("trainer", ["nnUNetTrainerVolumeFusion", "nnUNetTrainerVolumeFusion_debug",
                                     "nnUNetTrainerSwinProxies_debug", "nnUNetTrainerCrossModality",
                                     "nnUNetTrainerProxyVolumeFusion_cpu", "nnUNetTrainerProxySwinProxies_gpu"])
def test_one_pretext_run_is_found(tmp_path, trainer):
    checkpoint = _run(tmp_path, trainer)
    assert _find(tmp_path) == [checkpoint]
    found = _resolve(tmp_path)
    assert found.path == checkpoint and found.found_by == "by convention"
    assert found.describe().startswith(f"Pretrained weights found by convention: {checkpoint} (the only pretext")
    assert f"{trainer}__{PLANS}__{CONFIG}, fold_all" in found.describe()


@pytest.mark.parametrize("where", [dict(dataset="Dataset992_UKB"), dict(plans="nnUNetPlans"), dict(config="2d"),
                                   dict(checkpoint="checkpoint_latest.pth")])
def test_runs_of_other_datasets_plans_configurations_or_unfinished_are_not_taken(tmp_path, where):
    _run(tmp_path, "nnUNetTrainerVolumeFusion", **where)
    assert _find(tmp_path) == []


@pytest.mark.parametrize("trainer", ["nnUNetTrainerMultiEncoder", "nnUNetTrainerMultiEncoderSSL_debug",
                                     "nnUNetTrainer", "nnUNetTrainerNoSuchTrainer", "nnUNetTrainerVolumeFusionX"])
def test_folders_of_non_pretext_or_unknown_trainers_are_not_taken(tmp_path, trainer):
    _run(tmp_path, trainer)
    (tmp_path / DATASET / f"not_a_run__{PLANS}").mkdir()
    (tmp_path / DATASET / f"stray__{PLANS}__{CONFIG}").write_text("a file, not a run folder")
    assert _find(tmp_path) == []


def test_pretext_trainers_are_this_packages_subclasses_of_the_three_pretexts():
    from nnunetv2_ext.training.volume_fusion import nnUNetTrainerVolumeFusion

    class nnUNetTrainerVolumeFusionElsewhere(nnUNetTrainerVolumeFusion):  # another package's: not resolvable by name
        pass

    names = lookup.pretext_trainer_names()
    assert {"nnUNetTrainerVolumeFusion", "nnUNetTrainerSwinProxies", "nnUNetTrainerCrossModality_debug",
            "nnUNetTrainerVolumeFusionBackbone_debug", "nnUNetTrainerProxyVolumeFusion_smoke"} <= names
    assert not names & {"nnUNetTrainerMultiEncoder", "nnUNetTrainerMultiEncoderSSL", "nnUNetTrainerVanilla",
                        "nnUNetTrainerVolumeFusionElsewhere"}


def test_a_new_pretext_trainer_needs_no_edit_of_the_lookup(tmp_path, monkeypatch):
    """Any PretextTrainerBase subclass a module of TRAINER_MODULES exports is a pretext trainer; what it does not
    export (a mixin, a helper class) is not."""
    import sys
    import types

    import nnunetv2_ext.training as training
    from nnunetv2_ext.training.pretext_base import PretextTrainerBase

    module = types.ModuleType("nnunetv2_ext.training.toy_pretext")
    module.nnUNetTrainerToyPretext = type("nnUNetTrainerToyPretext", (PretextTrainerBase,), {})
    module.nnUNetTrainerToyHelper = type("nnUNetTrainerToyHelper", (PretextTrainerBase,), {})
    module.__all__ = ["nnUNetTrainerToyPretext"]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(training, "TRAINER_MODULES", training.TRAINER_MODULES + (module.__name__,))
    names = lookup.pretext_trainer_names()
    assert "nnUNetTrainerToyPretext" in names and "nnUNetTrainerToyHelper" not in names
    checkpoint = _run(tmp_path, "nnUNetTrainerToyPretext")
    assert _find(tmp_path) == [checkpoint]


def test_the_lookup_module_imports_no_trainer_until_asked():
    """`nnunetv2_ext weights use` and the CLI import the lookup without torch or nnU-Net's trainer."""
    import subprocess
    import sys

    code = ("import sys, nnunetv2_ext.training.pretraining_lookup\n"
            "print(sorted(m for m in ('torch', 'nnunetv2', 'nnunetv2_ext.training.pretext_base') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_several_runs_are_all_found_sorted_and_refused_with_how_to_choose(tmp_path):
    swin = _run(tmp_path, "nnUNetTrainerSwinProxies", fold="0")
    vf = _run(tmp_path, "nnUNetTrainerVolumeFusion_debug")
    vf_fold1 = vf.parent.parent / "fold_1" / lookup.CHECKPOINT
    vf_fold1.parent.mkdir()
    vf_fold1.write_bytes(b"fake")
    assert _find(tmp_path) == [swin, vf_fold1, vf]  # sorted by path: every DDP rank sees the same list
    with pytest.raises(ValueError) as info:
        _resolve(tmp_path)
    message = str(info.value)
    assert all(f"    {c}\n" in message for c in (swin, vf, vf_fold1))
    assert "pass -pretrained_weights FILE" in message
    assert f"nnunetv2_ext weights use {DATASET} FILE -p {PLANS} -c {CONFIG}" in message


def test_nothing_found_is_refused_with_the_commands_to_run(tmp_path):
    _run(tmp_path, "nnUNetTrainerVolumeFusion", dataset="Dataset992_UKB")  # stage 1 alone does not count
    with pytest.raises(FileNotFoundError) as info:
        _resolve(tmp_path)
    message = str(info.value)
    assert f"nnUNetv2_train {DATASET} {CONFIG} all -tr nnUNetTrainerVolumeFusion -p {PLANS}" in message
    assert "\n    nnUNetv2_train ... (this command)\n" in message
    assert "pass -pretrained_weights FILE" in message


# ---------------------------------------------------------------------------------------------------- record


def test_recorded_checkpoint_takes_precedence_over_the_convention(tmp_path):
    _run(tmp_path, "nnUNetTrainerVolumeFusion")
    _run(tmp_path, "nnUNetTrainerSwinProxies")  # several by convention: the record decides
    chosen = _run(tmp_path, "nnUNetTrainerVolumeFusion", dataset="Dataset992_UKB")
    record = lookup.record_pretraining_checkpoint(tmp_path, DATASET, PLANS, CONFIG, chosen)
    assert record == tmp_path / DATASET / "nnunetv2_ext_pretraining.json"
    assert json.loads(record.read_text()) == {f"{PLANS}__{CONFIG}": str(chosen.resolve())}
    found = _resolve(tmp_path)
    assert found.path == chosen.resolve() and found.found_by == "by record"
    assert found.describe() == f"Pretrained weights found by record: {chosen.resolve()} (recorded in {record})"
    # the record is per plans and configuration
    assert lookup.recorded_checkpoint(tmp_path, DATASET, PLANS, "2d") is None


def test_recorded_file_that_is_gone_is_a_clear_error(tmp_path):
    checkpoint = _run(tmp_path, "nnUNetTrainerVolumeFusion")
    lookup.record_pretraining_checkpoint(tmp_path, DATASET, PLANS, CONFIG, checkpoint)
    checkpoint.unlink()
    with pytest.raises(FileNotFoundError) as info:
        _resolve(tmp_path)
    message = str(info.value)
    assert f"records {checkpoint.resolve()}" in message and "does not exist" in message
    assert f"nnunetv2_ext weights use {DATASET} FILE -p {PLANS} -c {CONFIG} --overwrite" in message
    assert "-pretrained_weights FILE" in message


def test_malformed_record_file_is_a_clear_error(tmp_path):
    (tmp_path / DATASET).mkdir()
    (tmp_path / DATASET / lookup.RECORD_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="should map '<plans>__<configuration>' to a checkpoint path"):
        _resolve(tmp_path)


# ------------------------------------------------------------------------------------------ `weights use` CLI


@pytest.fixture()
def results(tmp_path, monkeypatch):
    root = tmp_path / "results"
    (root / DATASET).mkdir(parents=True)
    monkeypatch.setenv("nnUNet_results", str(root))
    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    return root


def _record(root: Path) -> dict:
    return json.loads((root / DATASET / lookup.RECORD_FILE).read_text())


def test_weights_use_records_refuses_a_different_file_and_overwrites_on_request(results, tmp_path, capsys):
    first, second = tmp_path.resolve() / "a.pth", tmp_path.resolve() / "b.pth"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    assert cli.main(["weights", "use", "991", str(first), "-p", PLANS, "-c", CONFIG]) == 0  # id -> name
    assert f"recorded {first} for {DATASET}" in capsys.readouterr().out
    assert cli.main(["weights", "use", DATASET, str(first), "-c", "2d"]) == 0  # another key: both kept
    assert cli.main(["weights", "use", DATASET, str(first)]) == 0              # the same file again: fine
    assert _record(results) == {f"{PLANS}__{CONFIG}": str(first), f"{PLANS}__2d": str(first)}
    capsys.readouterr()

    assert cli.main(["weights", "use", DATASET, str(second)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunetv2_ext weights: error:") and f"already records {first}" in err
    assert "--overwrite" in err
    assert _record(results)[f"{PLANS}__{CONFIG}"] == str(first)

    assert cli.main(["weights", "use", DATASET, str(second), "--overwrite"]) == 0
    assert _record(results) == {f"{PLANS}__{CONFIG}": str(second), f"{PLANS}__2d": str(first)}
    assert not [p for p in (results / DATASET).iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()])
def test_weights_use_refuses_what_is_not_a_readable_file(results, tmp_path, capsys, make):
    target = tmp_path / "missing.pth"
    make(target)
    assert cli.main(["weights", "use", DATASET, str(target)]) == 2
    assert f"{target} is not a readable file" in capsys.readouterr().err
    assert not (results / DATASET / lookup.RECORD_FILE).exists()


def test_weights_use_without_nnunet_results_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("nnUNet_results", raising=False)
    (tmp_path / "a.pth").write_bytes(b"a")
    assert cli.main(["weights", "use", DATASET, str(tmp_path / "a.pth")]) == 2
    assert "nnUNet_results is not set" in capsys.readouterr().err


# --------------------------------------------------------------------------------- the SSL trainer's start


def _ssl_trainer(results: Path, monkeypatch, **state) -> SimpleNamespace:
    """An nnUNetTrainerMultiEncoderSSL with just what on_train_start reads (no dataset, no network); records what
    it logs and loads. The parent's on_train_start (nnU-Net's dataloaders, logs) is replaced by a marker."""
    calls = SimpleNamespace(log=[], loaded=[], parent_started=False)
    trainer = nnUNetTrainerMultiEncoderSSL.__new__(nnUNetTrainerMultiEncoderSSL)
    trainer.plans_manager = SimpleNamespace(dataset_name=DATASET, plans_name=PLANS)
    trainer.configuration_name, trainer.fold = CONFIG, 0
    trainer.output_folder_base = str(results / DATASET / f"nnUNetTrainerMultiEncoderSSL__{PLANS}__{CONFIG}")
    trainer.transfer_report, trainer.resumed = None, False
    trainer.__dict__.update(state)
    trainer.print_to_log_file = lambda *args, **kwargs: calls.log.append(" ".join(str(a) for a in args))
    trainer.load_pretrained_weights = calls.loaded.append

    def parent_on_train_start(self):
        calls.parent_started = True

    monkeypatch.setattr(nnUNetTrainerMultiEncoder, "on_train_start", parent_on_train_start)
    calls.trainer = trainer
    return calls


def test_ssl_trainer_loads_the_checkpoint_found_by_convention_and_logs_it(tmp_path, monkeypatch):
    checkpoint = _run(tmp_path, "nnUNetTrainerVolumeFusion_debug")
    calls = _ssl_trainer(tmp_path, monkeypatch)
    calls.trainer.on_train_start()
    assert calls.loaded == [str(checkpoint)] and calls.parent_started
    assert calls.log[0].startswith(f"Pretrained weights found by convention: {checkpoint} (")


def test_ssl_trainer_without_any_pretraining_refuses_before_starting(tmp_path, monkeypatch):
    calls = _ssl_trainer(tmp_path, monkeypatch)
    with pytest.raises(FileNotFoundError) as info:
        calls.trainer.on_train_start()
    assert "pass -pretrained_weights" in str(info.value)
    assert (f"nnUNetv2_train {DATASET} {CONFIG} 0 -tr nnUNetTrainerMultiEncoderSSL -p {PLANS}\n"
            in str(info.value))
    assert not calls.loaded and not calls.parent_started


@pytest.mark.parametrize("state", [dict(transfer_report="given by -pretrained_weights"), dict(resumed=True)])
def test_ssl_trainer_with_weights_given_or_resuming_does_no_lookup(tmp_path, monkeypatch, state):
    _run(tmp_path, "nnUNetTrainerVolumeFusion")
    _run(tmp_path, "nnUNetTrainerSwinProxies")  # the lookup would refuse: several
    calls = _ssl_trainer(tmp_path, monkeypatch, **state)
    calls.trainer.on_train_start()
    assert not calls.loaded and not calls.log and calls.parent_started
