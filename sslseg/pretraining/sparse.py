"""Sparse convolution and normalisation for S3D: masked image modelling on a CNN as in SparK (Tian et al., "Designing
BERT for Convolutional Networks: Sparse and Hierarchical Masked Modeling", ICLR 2023, arXiv:2301.03580).

The encoder of the real ``ResidualEncoderUNet`` is converted in place: each ``Conv3d`` re-applies the visibility
mask to its output and each ``InstanceNorm3d`` takes its statistics over visible voxels only. The conversion swaps
the modules' classes rather than replacing modules, so parameters stay the same objects under the same
ResidualEncoderUNet key names. (Replacing modules would leave ``...convs.0.conv`` and ``...convs.0.all_modules.0``
as two different tensors in the state_dict, the quirk of nnssl's S3D checkpoints.)

The mask comes from a shared :class:`MaskContext` as a block grid ``(B, 1, gz, gy, gx)``; every layer expands it to
its own resolution. Because the blocks are aligned to the network's total stride, each feature map's shape is an
integer multiple of the grid and no pooling window or strided conv output straddles a block border.

Example::

    context = sparsify(network.encoder)
    with context.masked(block_mask):
        skips = network.encoder(image * context.mask_like(image))
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class MaskContext:
    """The current visibility mask (True = visible), shared by all sparse layers of one encoder."""

    def __init__(self):
        self.grid = None
        self._cache = {}

    @contextlib.contextmanager
    def masked(self, grid: torch.Tensor):
        self.grid, self._cache = grid.bool(), {}
        try:
            yield self
        finally:
            self.grid, self._cache = None, {}

    def mask_like(self, x: torch.Tensor) -> torch.Tensor:
        """The mask at ``x``'s resolution as ``x``'s dtype, shape ``(B, 1, z, y, x)``."""
        if self.grid is None:
            raise RuntimeError("a sparse layer ran outside MaskContext.masked(...)")
        key = (tuple(x.shape[2:]), x.dtype, x.device)
        if key not in self._cache:
            mask = self.grid
            for axis, size in enumerate(x.shape[2:]):
                cells = mask.shape[2 + axis]
                if size % cells:
                    raise RuntimeError(f"feature size {tuple(x.shape[2:])} is not a multiple of the mask grid "
                                       f"{tuple(self.grid.shape[2:])}")
                mask = mask.repeat_interleave(size // cells, dim=2 + axis)
            self._cache[key] = mask.to(device=x.device, dtype=x.dtype)
        return self._cache[key]


class SparseConv3d(nn.Conv3d):
    """A Conv3d whose output is zero at masked positions (the bias would otherwise fill them)."""

    mask_context: MaskContext

    def forward(self, x):
        out = super().forward(x)
        return out * self.mask_context.mask_like(out)


class SparseInstanceNorm3d(nn.InstanceNorm3d):
    """Instance normalisation with statistics over visible voxels only; masked voxels stay zero. The statistics
    accumulate in float32, the full-size tensors keep the input's dtype (bf16/fp16 under autocast: half the memory
    of float32 copies; on float32 inputs every operation is the same as in float32 throughout)."""

    mask_context: MaskContext

    def forward(self, x):
        dims, dtype = (2, 3, 4), x.dtype
        mask = self.mask_context.mask_like(x)
        count = mask.sum(dim=dims, keepdim=True, dtype=torch.float32).clamp_min(1.0)
        mean = (x * mask).sum(dim=dims, keepdim=True, dtype=torch.float32) / count
        mean = mean.to(dtype)
        # x - mean twice, not shared: the same autograd graph (so the same float32 gradients) as before
        var = (((x - mean) * mask) ** 2).sum(dim=dims, keepdim=True, dtype=torch.float32) / count  # biased
        out = (x - mean) * torch.rsqrt(var + self.eps).to(dtype)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1, 1).to(dtype) + self.bias.view(1, -1, 1, 1, 1).to(dtype)
        return out * mask


_SPARSE = {nn.Conv3d: SparseConv3d, nn.InstanceNorm3d: SparseInstanceNorm3d}
_DENSE = {sparse: dense for dense, sparse in _SPARSE.items()}


def sparsify(module: nn.Module, context: MaskContext = None) -> MaskContext:
    """Convert every Conv3d / InstanceNorm3d under ``module`` in place; returns the shared mask context."""
    context = context or MaskContext()
    converted = 0
    for sub in module.modules():
        sparse_class = _SPARSE.get(type(sub))
        if sparse_class is not None:
            sub.__class__ = sparse_class
            sub.mask_context = context
            converted += 1
        elif isinstance(sub, (nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)):
            raise NotImplementedError(f"sparse {type(sub).__name__} is not implemented (ResEnc uses InstanceNorm)")
    if not converted:
        raise RuntimeError("nothing to sparsify: no Conv3d/InstanceNorm3d found")
    return context


def densify(module: nn.Module) -> nn.Module:
    """Undo :func:`sparsify` in place (plain dense layers with the same parameters)."""
    for sub in module.modules():
        dense_class = _DENSE.get(type(sub))
        if dense_class is not None:
            sub.__class__ = dense_class
            del sub.mask_context
    return module
