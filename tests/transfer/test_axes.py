"""permute_spatial_axes / apply_axis_order: MONAI's (C, X, Y, Z) <-> nnU-Net's (C, Z, Y, X), checked on known
answers and by equivariance (the permuted module on the permuted input computes the permuted output)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunetv2_ext.transfer.axes import apply_axis_order, permute_spatial_axes, unpermuted_spatial_keys
from nnunetv2_ext.transfer.checkpoint import ExternalWeights


def test_permutation_on_a_known_asymmetric_kernel():
    kernel = torch.arange(2 * 3 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 3, 4)
    state = {"conv.weight": kernel, "conv.bias": torch.arange(2.0), "lin.weight": torch.randn(4, 5),
             "one.weight": torch.randn(2, 3, 1, 1, 1)}
    out, permuted = permute_spatial_axes(state, "monai", "nnunet")
    assert permuted == ["conv.weight"]
    assert out["conv.weight"].shape == (2, 3, 4, 3, 2)
    for o, i, a, b, c in np.ndindex(*out["conv.weight"].shape):
        assert out["conv.weight"][o, i, a, b, c] == kernel[o, i, c, b, a]
    for k in ("conv.bias", "lin.weight", "one.weight"):
        assert torch.equal(out[k], state[k])
    assert torch.equal(permute_spatial_axes(out, "nnunet", "monai")[0]["conv.weight"], kernel)
    same, none = permute_spatial_axes(state, "nnunet", "nnunet")
    assert none == [] and same is not state and all(same[k] is state[k] for k in state)
    with pytest.raises(ValueError, match="axis order"):
        permute_spatial_axes(state, "monai", "xyz")


def test_relative_position_bias_table_offsets_reversed():
    w, heads = 3, 2  # window 3: offsets -2..2 per axis, a (5*5*5, heads) table
    table = torch.randn((2 * w - 1) ** 3, heads)
    out, permuted = permute_spatial_axes({"attn.relative_position_bias_table": table}, "monai", "nnunet")
    grid, new = table.reshape(5, 5, 5, heads), out["attn.relative_position_bias_table"].reshape(5, 5, 5, heads)
    for a, b, c in np.ndindex(5, 5, 5):
        assert torch.equal(new[a, b, c], grid[c, b, a])
    assert permuted == ["attn.relative_position_bias_table"]
    pos = {"vit.pos_embed": torch.randn(1, 27, 4), "vit.cls_pos_embed": torch.randn(1, 28, 4)}
    out, permuted = permute_spatial_axes(pos, "monai", "nnunet")
    assert permuted == ["vit.pos_embed"]
    assert torch.equal(out["vit.pos_embed"].reshape(3, 3, 3, 4), pos["vit.pos_embed"].reshape(3, 3, 3, 4)
                       .permute(2, 1, 0, 3))
    assert unpermuted_spatial_keys(out, permuted) == []


@pytest.mark.parametrize("merging, cls_name", [("merging", "PatchMerging"), ("mergingv2", "PatchMergingV2")])
def test_patch_merging_is_equivariant_after_permutation(merging, cls_name):
    swin_unetr = pytest.importorskip("monai.networks.nets.swin_unetr")
    from tests.transfer.test_formats import randomize

    cls = getattr(swin_unetr, cls_name)
    torch.manual_seed(0)
    a, b = randomize(cls(dim=3), seed=1), cls(dim=3)
    state = {f"downsample.{k}": v for k, v in a.state_dict().items()}
    out, permuted = permute_spatial_axes(state, "monai", "nnunet", merging=merging)
    assert len(permuted) == 3
    b.load_state_dict({k[len("downsample."):]: v for k, v in out.items()})
    x = torch.randn(2, 4, 6, 8, 3)  # (B, D, H, W, C), MONAI's channels-last layout inside the Swin ViT
    with torch.no_grad():
        torch.testing.assert_close(b(x.permute(0, 3, 2, 1, 4)), a(x).permute(0, 3, 2, 1, 4))


def test_permuted_swin_vit_computes_the_same_on_permuted_input():
    """The Swin ViT (patch embedding, window attention with relative position bias, shifted windows, patch merging):
    f'(x permuted) == f(x) permuted at every stage. Window 2, so that no stage shrinks its window (MONAI then indexes
    its relative position table with the first n entries of the full window, which no permutation can make
    axis-symmetric); depth 2 in the first stages for shifted windows. (SwinUNETR's convolutional encoder/decoder
    blocks are plain kernels: test_permutation_on_a_known_asymmetric_kernel.)"""
    SwinTransformer = pytest.importorskip("monai.networks.nets.swin_unetr").SwinTransformer
    from tests.transfer.test_formats import randomize

    kw = dict(in_chans=2, embed_dim=12, window_size=(2, 2, 2), patch_size=(2, 2, 2), depths=(2, 2, 1, 1),
              num_heads=(3, 6, 12, 24))
    torch.manual_seed(0)
    a, b = randomize(SwinTransformer(**kw), seed=9).double().eval(), SwinTransformer(**kw).double().eval()
    b.load_state_dict(permute_spatial_axes(a.state_dict(), "monai", "nnunet")[0])
    x = torch.randn(1, 2, 32, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ya, yb = a(x), b(x.permute(0, 1, 4, 3, 2))
        assert len(ya) == 5
        for stage_a, stage_b in zip(ya, yb):
            torch.testing.assert_close(stage_b, stage_a.permute(0, 1, 4, 3, 2))
        b.load_state_dict(a.state_dict())  # and without the permutation the outputs differ: the test can fail
        assert (b(x.permute(0, 1, 4, 3, 2))[4] - ya[4].permute(0, 1, 4, 3, 2)).abs().max() > 1e-2


def test_apply_axis_order_notes_and_leaves_its_input_alone():
    kernel = torch.arange(24, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    w = ExternalWeights(state={"conv.weight": kernel}, format="monai_swin", axis_order="monai", notes=["read"])
    out = apply_axis_order(w, "nnunet")
    assert out.axis_order == "nnunet" and out.permuted_keys == ["conv.weight"]
    assert out.state["conv.weight"].shape == (1, 1, 4, 3, 2)
    assert out.notes[0] == "read"
    assert "permuted from monai (C, X, Y, Z) to nnunet (C, Z, Y, X) in 1 tensors" in out.notes[1]
    assert w.notes == ["read"] and w.axis_order == "monai" and w.state["conv.weight"] is kernel  # input unchanged
    kept = apply_axis_order(w, None)
    assert kept.state["conv.weight"] is kernel and "NOT permuted" in kept.notes[-1] and w.notes == ["read"]
    assert apply_axis_order(w, "monai") is w
    with pytest.raises(ValueError, match="merging must be one of"):
        apply_axis_order(w, "nnunet", merging="v3")
