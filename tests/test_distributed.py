"""Tests for nnunetv2_ext.distributed: the torchrun environment, and data parallelism on 2 Gloo processes on the CPU:
one DDP step on a batch split over the ranks is one single-process step on the whole batch (multi-encoder with every
fusion and a modality-dropout presence mask, and SegResNet), and NT-Xent over the gathered embeddings is the
single-process NT-Xent of the concatenated batch, gradients included."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist
from torch import nn

from nnunetv2_ext.distributed import TorchrunEnv, all_gather_rows, torchrun_env

WORLD = 2
BATCH = 4  # global batch: rows 0-1 on rank 0, 2-3 on rank 1
# modality-dropout masks (sample x encoder): rank 1's two samples both lack modality 0, so encoder 0 gets no gradient
# signal from rank 1 at all (it stays in the graph, multiplied by zero)
PRESENT = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float64)
# NT-Xent: 5 samples split 3 + 2, as nnU-Net splits an odd global batch
NT_XENT_ROWS = (3, 2)
LR = 0.1


def _networks():
    from nnunetv2_ext.architectures.fusion import FUSION_MODES
    from nnunetv2_ext.architectures.monai_backbones import SegResNetBackbone
    from nnunetv2_ext.architectures.multi_encoder import MultiEncoderUNet

    kwargs = dict(input_channels=4, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv2d, kernel_sizes=3,
                  strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=1, num_classes=3, n_conv_per_stage_decoder=1,
                  conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
    for fusion in FUSION_MODES:
        yield f"multi_encoder_{fusion}", (lambda f=fusion: MultiEncoderUNet(**kwargs, fusion=f)), True
    yield "segresnet", (lambda: SegResNetBackbone(4, 3, spatial_dims=2, init_filters=8, blocks_down=(1, 1, 1))), False


def _loss(output) -> torch.Tensor:
    """A mean over the samples (as nnU-Net's losses are), so DDP's mean of the ranks' gradients is the gradient of
    the whole batch's loss; every deep-supervision output counts."""
    outputs = output if isinstance(output, (list, tuple)) else [output]
    return sum(((o - 0.3) ** 2).mean() + o.tanh().mean() for o in outputs)


def _step(net: nn.Module, x: torch.Tensor, present) -> nn.Module:
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    _loss(net(x) if present is None else net(x, present)).backward()
    optimizer.step()
    return net


def _worker(rank: int, init_file: str, results: dict) -> None:
    from nnunetv2_ext.pretext.swin_proxies import nt_xent, swin_proxy_losses

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = {}
        local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        x = torch.randn(BATCH, 4, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        for name, build, takes_mask in _networks():
            torch.manual_seed(0)
            net = build().double()
            reference = copy.deepcopy(net)
            ddp = nn.parallel.DistributedDataParallel(net)  # CPU: no device ids; find_unused_parameters False
            present = PRESENT if takes_mask else None
            optimizer = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
            loss = _loss(ddp(x[local], present[local]) if takes_mask else ddp(x[local]))
            loss.backward()
            no_grad = [n for n, p in net.named_parameters() if p.grad is None]
            optimizer.step()
            _step(reference, x, present)
            deviation = max(float((a - b).abs().max()) for a, b in
                            zip(reference.state_dict().values(), net.state_dict().values()))
            # a second DDP step: DDP (find_unused_parameters=False) raises here had the first left a parameter out
            optimizer.zero_grad()
            _loss(ddp(x[local], present[local]) if takes_mask else ddp(x[local])).backward()
            out[name] = {"no_grad": no_grad, "deviation": deviation, "n_params": sum(1 for _ in net.parameters()),
                         "weights": [p.detach().clone() for p in net.parameters()]}
        # NT-Xent with negatives from the global batch, rows split 3 + 2
        g = torch.Generator().manual_seed(5)
        z1, z2 = torch.randn(sum(NT_XENT_ROWS), 8, generator=g), torch.randn(sum(NT_XENT_ROWS), 8, generator=g)
        lo, hi = sum(NT_XENT_ROWS[:rank]), sum(NT_XENT_ROWS[:rank + 1])
        l1, l2 = z1[lo:hi].clone().requires_grad_(), z2[lo:hi].clone().requires_grad_()
        n = hi - lo
        image = torch.zeros(2 * n, 1, 4, 4)
        _, parts = swin_proxy_losses(image, torch.zeros(2 * n, 4), torch.cat([l1, l2]), image,
                                     torch.zeros(2 * n, dtype=torch.long), gather=all_gather_rows)
        parts["contrastive"].backward()
        r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        single = nt_xent(r1, r2)
        single.backward()
        out["nt_xent"] = {"loss": float(parts["contrastive"]), "single": float(single),
                          # a rank's rows receive the sum over the ranks of d(global loss)/d(rows): W x the gradient
                          "grad_deviation": max(float((l1.grad / WORLD - r1.grad[lo:hi]).abs().max()),
                                                float((l2.grad / WORLD - r2.grad[lo:hi]).abs().max()))}
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The outcomes of ``_worker`` on 2 Gloo processes, by rank."""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path_factory.mktemp("gloo") / "init"), results), nprocs=WORLD, join=True)
    return dict(results)


def test_ddp_step_equals_single_process_step(two_ranks):
    """float64: the ranks' step on their halves (DDP averages the gradients) is the step on the whole batch."""
    for name, _, _ in _networks():
        for rank in range(WORLD):
            result = two_ranks[rank][name]
            assert result["no_grad"] == [], f"rank {rank}, {name}: no gradient for {result['no_grad']}"
            assert result["n_params"] > 10
            assert result["deviation"] < 1e-12, f"rank {rank}, {name}: {result['deviation']}"
        # and after a second step both ranks still hold the same weights
        for a, b in zip(two_ranks[0][name]["weights"], two_ranks[1][name]["weights"]):
            assert torch.equal(a, b), name


def test_nt_xent_over_gathered_embeddings_equals_single_process(two_ranks):
    for rank in range(WORLD):
        result = two_ranks[rank]["nt_xent"]
        assert result["loss"] == pytest.approx(result["single"], abs=1e-6)
        assert result["grad_deviation"] < 1e-6


def test_all_gather_rows_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert all_gather_rows(x) is x


def test_torchrun_env():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == \
        TorchrunEnv(rank=3, local_rank=1, world_size=4, local_world_size=2)
    with pytest.raises(ValueError, match="LOCAL_RANK, WORLD_SIZE not"):
        torchrun_env({"RANK": "0"})
    with pytest.raises(ValueError, match="expected integers"):
        torchrun_env({"RANK": "a", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="inconsistent"):
        torchrun_env({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
