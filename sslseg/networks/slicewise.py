"""The slice-wise (2D) configuration of the ResEnc family: a 2D ``ResidualEncoderUNet`` (dynamic-network-
architectures builds it with ``conv_op=nn.Conv2d``) that takes and returns the 3D tensors of every other network.

A spec's config names ``slice_axis`` (the array axis it slices along, 0 = z) and holds 2D kernels and strides (the
two in-plane axes, in array order). ``forward`` folds the slices of a ``[b, c, z, y, x]`` input into the batch,
runs the 2D network and unfolds every output (each deep-supervision level too) to ``[b, k, z, y, x]``: sampling,
the loss, validation and MONAI's sliding window see a 3D network whose patch is one slice thick, so training and
prediction share every code path with the 3D configuration (nnU-Net's 2D configuration, Isensee et al., Nature
Methods 2021, trains and predicts slice by slice in the same way). The weights keep the 3D network's names.

Example::

    config = slice_config(architecture_kwargs("ResEncXS-cpu"), slice_axis=0)  # 3D kernels -> in-plane 2D ones
    network = build_slicewise(config, in_channels=1, num_classes=4)
    network(torch.zeros(2, 1, 1, 128, 160)).shape  # [2, 4, 1, 128, 160]
"""

from __future__ import annotations

import functools


def in_plane(values, slice_axis: int) -> list:
    """A [z, y, x] triple without the slice axis."""
    return [int(v) for axis, v in enumerate(values) if axis != slice_axis]


def with_slice_axis(values, slice_axis: int, fill: int = 1) -> list:
    """An in-plane pair as a [z, y, x] triple, ``fill`` along the slice axis."""
    values = [int(v) for v in values]
    return values[:slice_axis] + [fill] + values[slice_axis:]


def slice_config(config3d: dict, slice_axis: int) -> dict:
    """The 2D config of a 3D-form config (kernels and strides [z, y, x]; the slice axis's are dropped)."""
    return dict(config3d, slice_axis=int(slice_axis),
                kernel_sizes=[in_plane(k, slice_axis) for k in config3d["kernel_sizes"]],
                strides=[in_plane(s, slice_axis) for s in config3d["strides"]])


def as_3d(config: dict) -> dict:
    """The 3D-form config of a slice-wise one (kernel and stride 1 along the slice axis), for costs and strides."""
    axis = int(config["slice_axis"])
    return {key: value for key, value in config.items() if key != "slice_axis"} | {
        "kernel_sizes": [with_slice_axis(k, axis) for k in config["kernel_sizes"]],
        "strides": [with_slice_axis(s, axis) for s in config["strides"]]}


def is_slicewise(config: dict) -> bool:
    return config.get("slice_axis") is not None


@functools.lru_cache(maxsize=1)
def slicewise_class():
    """The 2D ResidualEncoderUNet subclass whose ``forward`` folds slices into the batch (built on first use, so
    that importing this module imports no torch)."""
    from .dna import import_resenc

    base = import_resenc()

    class SliceWiseResEncUNet(base):
        """A 2D ResidualEncoderUNet applied to every slice along ``slice_axis`` of a 5D input."""

        slice_axis = 0

        def forward(self, x):
            if x.dim() == 4:
                return super().forward(x)
            dim = 2 + self.slice_axis
            batch, slices = x.shape[0], x.shape[dim]
            folded = x.movedim(dim, 1).reshape(batch * slices, *x.shape[1:dim], *x.shape[dim + 1:])
            outputs = super().forward(folded)

            def unfold(y):
                return y.reshape(batch, slices, *y.shape[1:]).movedim(1, dim)

            return [unfold(y) for y in outputs] if isinstance(outputs, (list, tuple)) else unfold(outputs)

    return SliceWiseResEncUNet


def build_slicewise(config: dict, in_channels: int, num_classes: int, deep_supervision: bool = False):
    """A slice-wise network from its config (2D kernels and strides, ``slice_axis``)."""
    import torch

    network = slicewise_class()(
        input_channels=in_channels, n_stages=config["n_stages"], features_per_stage=config["features_per_stage"],
        conv_op=torch.nn.Conv2d, kernel_sizes=config["kernel_sizes"], strides=config["strides"],
        n_blocks_per_stage=config["n_blocks_per_stage"], num_classes=num_classes,
        n_conv_per_stage_decoder=config["n_conv_per_stage_decoder"], conv_bias=config.get("conv_bias", True),
        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
        dropout_op_kwargs=None, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision)
    network.slice_axis = int(config["slice_axis"])
    return network
