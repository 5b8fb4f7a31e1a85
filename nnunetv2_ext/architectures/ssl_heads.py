"""Self-supervision heads on a dynamic-network-architectures U-Net: the network of the Swin UNETR proxy tasks (Tang et
al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image Analysis", CVPR 2022, arXiv:2111.14791;
MONAI Pretrain ``SSLHead``), with the U-Net's own decoder as the reconstruction head.

:func:`with_ssl_heads` wraps any U-Net whose ``encoder`` returns its skips and whose ``decoder(skips)`` returns the
image (``PlainConvUNet``, ``ResidualEncoderUNet``, ``MultiEncoderUNet``); the wrapper's state dict is the U-Net's
(``encoder.*``, ``decoder.*``) plus ``ssl_heads.*``.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Tuple, cast

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn

from nnunetv2_ext.pretext.swin_proxies import N_ROTATIONS, PROJECTION_DIM


class SSLOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C_in, *spatial): the decoder's image
    rotation_logits: torch.Tensor  # (B, 4)
    projection: torch.Tensor  # (B, projection_dim): the contrastive embedding


class SSLHeads(nn.Module):
    """Rotation and contrastive heads on the bottleneck (Tang et al. 2022; MONAI Pretrain ``SSLHead``:
    ``rotation_head = Linear(dim, 4)``, ``contrastive_head = Linear(dim, 512)``, each reading one Swin token).

    A convolutional bottleneck has no tokens; both heads read its average over a ``grid``^D grid of cells (D spatial
    axes), flattened. Not one global average: after nnU-Net's InstanceNorm every channel has mean 0 and variance 1
    before the last nonlinearity, so global means are nearly the same for every image (cosine similarity 0.999
    between two unrelated inputs of the untrained multi-encoder), and a global average cannot see where things are,
    which is what a rotation changes; the cells keep the coarse layout. ``grid=1`` gives the global average.

    Args:
        in_channels: channels of the bottleneck (the encoder's last ``output_channels``).
        spatial_dims: 2 or 3.
        grid: cells per axis of the average pooling.
        n_rotations: rotation classes (4: k x 90 deg).
        projection_dim: size of the contrastive embedding.
    """

    def __init__(self, in_channels: int, spatial_dims: int = 3, grid: int = 2, n_rotations: int = N_ROTATIONS,
                 projection_dim: int = PROJECTION_DIM):
        super().__init__()
        if spatial_dims not in (2, 3) or grid < 1:
            raise ValueError(f"SSLHeads needs spatial_dims 2 or 3 and grid >= 1, got {spatial_dims} and {grid}")
        self.grid = grid
        self.spatial_dims = spatial_dims
        features = in_channels * grid ** spatial_dims
        self.rotation = nn.Linear(features, n_rotations)
        self.contrastive = nn.Linear(features, projection_dim)

    def forward(self, bottleneck: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pool = F.adaptive_avg_pool3d if self.spatial_dims == 3 else F.adaptive_avg_pool2d
        pooled = pool(bottleneck, self.grid).flatten(1)
        return self.rotation(pooled), self.contrastive(pooled)


class SSLWrapper(nn.Module):
    """A dynamic-network-architectures U-Net (``encoder`` returning the skips, ``decoder(skips)``) plus SSL heads.

    The backbone's ``encoder`` and ``decoder`` are registered here under the same names, so the state dict keys are
    the backbone's own (``encoder.*``, ``decoder.*``) plus ``ssl_heads.*``, which the weight transfer reports as
    ``ignored`` when fine-tuning. The attributes the transfer reads from a target network (``encoder_groups``,
    ``modality_names``, ``keys_to_in_proj``, ...) are copied, so a wrapper can also receive pretrained weights
    (two-stage pretraining). ``forward`` returns an :class:`SSLOutput`; the reconstruction is the decoder output.
    """
    TRANSFER_ATTRIBUTES = ("encoder_groups", "modality_names", "keys_to_in_proj", "key_to_encoder", "key_to_stem",
                           "fusion", "encoder_type")

    def __init__(self, network: nn.Module, heads: nn.Module):
        super().__init__()
        missing = [a for a in ("encoder", "decoder") if not isinstance(getattr(network, a, None), nn.Module)]
        if missing:
            raise ValueError(f"SSL heads need a U-Net with an `encoder` returning its skips and a `decoder(skips)` "
                             f"(dynamic-network-architectures style); {type(network).__name__} has no {missing}")
        self.encoder = cast(nn.Module, network.encoder)  # both modules, checked above
        self.decoder = cast(nn.Module, network.decoder)
        self.ssl_heads = heads
        self.backbone_class = type(network).__name__
        for name in self.TRANSFER_ATTRIBUTES:
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))

    def forward(self, x: torch.Tensor) -> SSLOutput:
        skips = self.encoder(x)
        rotation, projection = self.ssl_heads(skips[-1])
        return SSLOutput(self.decoder(skips), rotation, projection)


def with_ssl_heads(network: nn.Module, grid: int = 2, n_rotations: int = N_ROTATIONS,
                   projection_dim: int = PROJECTION_DIM) -> SSLWrapper:
    """``network`` (a U-Net, see :class:`SSLWrapper`) with :class:`SSLHeads` on its bottleneck, sized from the
    encoder's interface (``output_channels``, ``conv_op``)."""
    encoder: Any = getattr(network, "encoder", None)
    if not hasattr(encoder, "output_channels") or not hasattr(encoder, "conv_op"):
        raise ValueError(f"SSL heads are sized from the encoder's `output_channels` and `conv_op` "
                         f"(dynamic-network-architectures encoders); {type(network).__name__}'s encoder has "
                         f"{'none' if encoder is None else 'not both'}")
    heads = SSLHeads(int(encoder.output_channels[-1]), convert_conv_op_to_dim(encoder.conv_op), grid, n_rotations,
                     projection_dim)
    return SSLWrapper(network, heads)
