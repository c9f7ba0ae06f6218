"""Masked image modelling: S3D (sparse, SparK-style) and MAE (the plain dense variant), after Wald et al.,
"Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025 (arXiv:2410.23132; code: MIC-DKFZ/nnssl),
who adapt SparK (Tian et al., ICLR 2023, arXiv:2301.03580) to the ResEnc U-Net.

- Masks are blocky: a grid with one cell per ``block`` voxels, where ``block`` is the network's total stride (so the
  bottleneck sees exactly one value per cell); the mask ratio is drawn per batch from U[0.6, 0.9].
- S3D: the encoder is made sparse (:mod:`sslseg.pretraining.sparse`); before the decoder, masked positions of every
  skip are filled with a learnable mask token of that stage (shape 1xCx1x1x1), then a 3x3x3 "densification" conv
  per stage except the full-resolution one. The decoder is the ResidualEncoderUNet's own (dense) decoder.
- MAE: the input's masked blocks are zeroed and the dense network runs unchanged.
- Loss: L2 on masked voxels only, in z-score space (the input patches are z-scored volumes).

Example::

    model = MaskedImageModel(build_network("ResEncT-test", 1, 1), sparse=True)
    grid = random_block_mask(batch=2, grid_shape=(8, 8, 8), ratio=0.75, generator=torch.Generator())
    loss = masked_l2_loss(model(image, grid), image, expand_mask(grid, image.shape[2:]))
"""

from __future__ import annotations

import torch
from torch import nn

from sslseg.pretraining.sparse import MaskContext, densify, sparsify

MASK_RATIO_RANGE = (0.6, 0.9)


def random_block_mask(batch: int, grid_shape, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``(B, 1, *grid_shape)`` bool, True = visible; ``round(ratio * cells)`` cells masked per sample (at least one
    visible and one masked cell)."""
    cells = int(torch.tensor(grid_shape).prod())
    masked = min(max(int(round(ratio * cells)), 1), cells - 1)
    scores = torch.rand(batch, cells, generator=generator)
    order = scores.argsort(dim=1)
    visible = torch.ones(batch, cells, dtype=torch.bool)
    visible.scatter_(1, order[:, :masked], False)
    return visible.view(batch, 1, *grid_shape)


def draw_mask_ratio(generator: torch.Generator) -> float:
    low, high = MASK_RATIO_RANGE
    return float(low + (high - low) * torch.rand((), generator=generator))


def expand_mask(grid: torch.Tensor, shape) -> torch.Tensor:
    """Block grid -> voxel mask of spatial ``shape`` (bool, True = visible)."""
    mask = grid
    for axis, size in enumerate(shape):
        mask = mask.repeat_interleave(int(size) // mask.shape[2 + axis], dim=2 + axis)
    return mask


def masked_l2_loss(prediction: torch.Tensor, target: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked voxels only (visible voxels contribute nothing, not even to the mean)."""
    hidden = (~visible.bool()).to(prediction.dtype).expand_as(prediction)
    squared = (prediction.float() - target.float()) ** 2 * hidden.float()
    return squared.sum() / hidden.float().sum().clamp_min(1.0)


class MaskedImageModel(nn.Module):
    """A ResidualEncoderUNet (``num_classes`` = input channels) trained to reconstruct masked blocks.

    ``self.network`` keeps the plain ResidualEncoderUNet key names; the S3D extras (``mask_tokens``,
    ``densify``) live beside it and are not exported as network weights.
    """

    def __init__(self, network: nn.Module, sparse: bool = True):
        super().__init__()
        self.network = network
        self.sparse = sparse
        # With deep supervision off only the last seg layer is used; the others get no gradient, which DDP rejects.
        for layer in network.decoder.seg_layers[:-1]:
            layer.requires_grad_(False)
        if sparse:
            self.context = sparsify(network.encoder, MaskContext())
            channels = list(network.encoder.output_channels)
            tokens = []
            for c in channels:
                token = nn.Parameter(torch.zeros(1, c, 1, 1, 1))
                nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
                tokens.append(token)
            self.mask_tokens = nn.ParameterList(tokens)
            # stage 0 is the full-resolution one: no densification there
            self.densify = nn.ModuleList(
                [nn.Identity()] + [nn.Conv3d(c, c, 3, padding=1) for c in channels[1:]]
            )

    def forward(self, image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        visible = expand_mask(grid, image.shape[2:]).to(image.dtype)
        if not self.sparse:
            return self.network(image * visible)
        with self.context.masked(grid):
            skips = self.network.encoder(image * visible)
            filled = []
            for stage, skip in enumerate(skips):
                mask = self.context.mask_like(skip)
                token = self.mask_tokens[stage].to(skip.dtype)
                filled.append(self.densify[stage](skip * mask + token * (1 - mask)))
        return self.network.decoder(filled)

    def dense_network(self) -> nn.Module:
        """A plain ResidualEncoderUNet with these weights (for export); this model stays sparse."""
        import copy

        network = copy.deepcopy(self.network)
        densify(network)
        return network
