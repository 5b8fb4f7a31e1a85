"""``nnunetv2_ext.run.train`` under torchrun on the CPU (Gloo): two "nodes" on this machine (two torchrun agents,
``--nnodes 2 --nproc_per_node 1``, node ranks 0 and 1, rendezvous at 127.0.0.1) train a ``_debug`` trainer on the
example data with the plans' batch of 2 split 1 + 1; both ranks end with the same weights, only rank 0 writes the
run's files, the checkpoint predicts with ``nnUNetv2_predict`` and ``--c`` resumes an interrupted run the same way.
Volume Fusion with a per-process batch of 1 is refused."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

from tests.conftest import NnUNetEnv, assert_valid_predictions, console_script

REPO = Path(__file__).resolve().parents[2]
TRAINER = "nnUNetTrainerMultiEncoder_debug"
PLANS = "nnUNetPlans_MultiEncoder"
DIGEST = re.compile(r"nnunetv2_ext_train: rank (\d) epoch (\d+) weights sha256 ([0-9a-f]{64})")
# nnU-Net's on_train_start copies these into the model folder on every DDP worker (not only rank 0)
COPIED_BY_EVERY_WORKER = {"plans.json", "dataset.json", "dataset_fingerprint.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(example: NnUNetEnv, results: Path) -> Dict[str, str]:
    return {**example.env, "nnUNet_results": str(results), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), example.env.get("PYTHONPATH", "")])}


def _torchrun(example: NnUNetEnv, results_per_node: List[Path], *train_args: str,
              timeout: int = 600) -> List[subprocess.CompletedProcess]:
    """One torchrun agent per node (node_rank 0, 1, ...) of ``--nproc_per_node 1``; their outputs once all exited."""
    port = str(_free_port())
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(len(results_per_node)), "--nproc_per_node",
         "1", "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
         "-m", "nnunetv2_ext.run.train", *train_args],
        env=_env(example, results), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, results in enumerate(results_per_node)]
    outputs = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=timeout)
            outputs.append(subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    return outputs


def _check_ok(outputs: List[subprocess.CompletedProcess]) -> None:
    for rank, out in enumerate(outputs):
        assert out.returncode == 0, f"node {rank} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"


def _digests(outputs: List[subprocess.CompletedProcess]) -> Dict[int, tuple]:
    found = {}
    for out in outputs:
        for rank, epoch, digest in DIGEST.findall(out.stdout):
            found[int(rank)] = (int(epoch), digest)
    return found


def test_two_nodes_train_predict_and_resume(preprocessed_example: NnUNetEnv, tmp_path: Path):
    example = preprocessed_example
    shared, node1_only = tmp_path / "results", tmp_path / "results_node1"
    args = (str(example.dataset_id), "3d_fullres", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu")

    # node 1 gets a results folder of its own for the first run: what it writes there, it wrote itself
    outputs = _torchrun(example, [shared, node1_only], *args)
    _check_ok(outputs)
    assert "worker 0 batch_size 1" in outputs[0].stdout and "worker 1 batch_size 1" in outputs[1].stdout
    digests = _digests(outputs)
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    written_by_node1 = {p.name for p in node1_only.rglob("*") if p.is_file()}
    assert written_by_node1 <= COPIED_BY_EVERY_WORKER, written_by_node1
    fold = shared / example.dataset_name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    assert len(list(fold.glob("training_log_*.txt"))) == 1
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "torchrun worker: rank 0 of 2" in log and "backend gloo" in log

    pred = tmp_path / "pred"
    example.run(console_script("nnUNetv2_predict"), "-i", str(example.raw / "imagesTs"), "-o", str(pred),
                "-d", str(example.dataset_id), "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-p", PLANS,
                "-device", "cpu", "-npp", "1", "-nps", "1", env={"nnUNet_results": str(shared)})
    assert_valid_predictions(pred, example.raw / "imagesTs")

    # an interrupted run: the final checkpoint turned into the "latest" one of the end of epoch 2 of 3
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 2
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    outputs = _torchrun(example, [shared, shared], *args, "--c")
    _check_ok(outputs)
    digests = _digests(outputs)
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests
    assert digests[0][0] == 3  # trained epoch index 2 only, on both ranks, and finished
    assert "Epoch 2" in outputs[0].stdout and "Epoch 0" not in outputs[0].stdout
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()


def test_volume_fusion_refuses_a_per_process_batch_of_one(preprocessed_example: NnUNetEnv, tmp_path: Path):
    example = preprocessed_example
    outputs = _torchrun(example, [tmp_path / "results"] * 2, str(example.dataset_id), "3d_fullres", "all", "-tr",
                        "nnUNetTrainerVolumeFusion_debug", "-p", PLANS, "-device", "cpu", timeout=300)
    for out in outputs:
        assert out.returncode != 0
    stderr = "".join(out.stderr for out in outputs)
    assert "the batch size per process must be >= 2, it is 1" in stderr and "over 2 process(es)" in stderr, \
        stderr[-4000:]
