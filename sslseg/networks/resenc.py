"""The ResEnc family: the Residual Encoder U-Net of nnU-Net v2 / nnssl (dynamic-network-architectures'
``ResidualEncoderUNet``), by name.

``ResEncL`` has the exact configuration of the public OpenMind checkpoints (Wald et al., "Revisiting MAE
pre-training for 3D medical image segmentation"; Isensee et al. 2024, "nnU-Net Revisited"). The smaller sizes are
the same class with fewer stages and channels: they share every code path (checkpoint layout, freezing, sparse
pretraining) and exist for CPU users and tests; their names say so. torch is imported only when a network is
built.

A network planned from the data (``sslseg.finetuning.planning``) is a named size with its own per-stage kernels and
strides (``planned_spec``); ``step_cost`` estimates what one training sample costs on it, so that plans for
different shapes can be held to the same compute budget.

Example::

    network = build_network("ResEncL", in_channels=1, num_classes=3)
    spec = planned_spec("ResEncXS-cpu", kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3]],
                        strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
"""

from __future__ import annotations

import copy
import math

from sslseg.errors import UserError
from sslseg.networks.dna import import_resenc

from .layout import WeightLayout

FAMILY = "ResEnc"

# dynamic-network-architectures' ResidualEncoderUNet: key_to_stem "encoder.stem", key_to_encoder "encoder.stages",
# keys_to_in_proj as below; its decoder (UNetResDecoder) holds stages, transpconvs, seg_layers and a reference to
# the encoder, so every encoder tensor is listed a second time under ``decoder.encoder``.
LAYOUT = WeightLayout(
    stem=("encoder.stem",),
    encoder=("encoder.stages",),
    decoder=("decoder.stages", "decoder.transpconvs"),
    head=("decoder.seg_layers",),
    in_proj=("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"),
    aliases=(("decoder.encoder", "encoder"),),
)

_RESENC_L = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1] * 5,
    "conv_bias": True,
}

# name -> (description, ResidualEncoderUNet keyword arguments besides channels/classes/ops)
ARCHITECTURES = {
    "ResEncL": ("Residual Encoder U-Net L (nnU-Net v2 / nnssl, ~102 M parameters); GPU", _RESENC_L),
    "ResEncS-cpu": (
        "small ResEnc U-Net for CPU fine-tuning (4 stages, 24-192 channels, ~5.5 M parameters)",
        {
            "n_stages": 4,
            "features_per_stage": [24, 48, 96, 192],
            "kernel_sizes": [[3, 3, 3]] * 4,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
            "n_blocks_per_stage": [1, 2, 2, 2],
            "n_conv_per_stage_decoder": [1] * 3,
            "conv_bias": True,
        },
    ),
    "ResEncXS-cpu": (
        "extra-small ResEnc U-Net, the cost of a MONAI DynUNet with 16-128 filters (4 stages, ~1.3 M parameters); "
        "the cpu fine-tuning preset's network from scratch, and small CPU pretraining runs",
        {
            "n_stages": 4,
            "features_per_stage": [16, 32, 64, 128],
            "kernel_sizes": [[3, 3, 3]] * 4,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
            "n_blocks_per_stage": [1, 1, 1, 1],
            "n_conv_per_stage_decoder": [1] * 3,
            "conv_bias": True,
        },
    ),
    "ResEncT-test": (
        "tiny ResEnc U-Net for tests only (3 stages, 8-32 channels)",
        {
            "n_stages": 3,
            "features_per_stage": [8, 16, 32],
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 2,
            "n_blocks_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1] * 2,
            "conv_bias": True,
        },
    ),
}


def architecture_kwargs(name: str) -> dict:
    """The ResidualEncoderUNet configuration of a named architecture (JSON-serialisable)."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return copy.deepcopy(ARCHITECTURES[name][1])


def spec_for(name: str) -> dict:
    """The network spec (see ``sslseg.networks``) of a named architecture."""
    return {"family": FAMILY, "name": name, "config": architecture_kwargs(name)}


def build_resenc(config: dict, in_channels: int, num_classes: int, deep_supervision: bool = False):
    """Build a ResidualEncoderUNet from a JSON-style configuration (as in ``ARCHITECTURES`` or an nnssl plan)."""
    import torch

    ResidualEncoderUNet = import_resenc()
    return ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=config["n_stages"],
        features_per_stage=config["features_per_stage"],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=config["kernel_sizes"],
        strides=config["strides"],
        n_blocks_per_stage=config["n_blocks_per_stage"],
        num_classes=num_classes,
        n_conv_per_stage_decoder=config["n_conv_per_stage_decoder"],
        conv_bias=config.get("conv_bias", True),
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )


def build(config: dict, in_channels: int, num_classes: int):
    """The family's builder for ``sslseg.networks.build_from_spec`` (a config naming ``slice_axis``: the slice-wise
    2D network of ``sslseg.networks.slicewise``)."""
    from .slicewise import build_slicewise, is_slicewise

    if is_slicewise(config):
        return build_slicewise(config, in_channels, num_classes)
    return build_resenc(config, in_channels, num_classes)


def build_network(name: str, in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False):
    """A freshly initialised network of a named architecture."""
    return build_resenc(architecture_kwargs(name), in_channels, num_classes, deep_supervision)


def total_stride(config: dict) -> list:
    """Product of the strides per axis [z, y, x]: patch sizes must be multiples of it."""
    from .slicewise import as_3d, is_slicewise

    config = as_3d(config) if is_slicewise(config) else config
    product = [1, 1, 1]
    for stride in config["strides"]:
        stride = [stride] * 3 if isinstance(stride, int) else stride
        product = [a * b for a, b in zip(product, stride)]
    return product


def planned_spec(base: str, kernel_sizes, strides, slice_axis: int | None = None) -> dict:
    """The spec of a named size (its widths and blocks per stage) with planned per-stage ``kernel_sizes`` and
    ``strides`` ([z, y, x] each, stage 0 first; as many stages as given, at most the named size's). Keeps the named
    size's name when the plan is its own configuration. ``slice_axis``: the slice-wise 2D network of that size
    (``sslseg.networks.slicewise``; kernels and strides along the slice axis are dropped)."""
    config = architecture_kwargs(base)
    stages = len(strides)
    if slice_axis is not None and stages > config["n_stages"]:
        config = deeper(config, stages)
    if not 2 <= stages <= config["n_stages"] or len(kernel_sizes) != stages:
        raise ValueError(f"{base}: a plan needs 2..{config['n_stages']} stages with one kernel and stride each")
    planned = dict(config, n_stages=stages, features_per_stage=config["features_per_stage"][:stages],
                   kernel_sizes=[[int(k) for k in kernel] for kernel in kernel_sizes],
                   strides=[[int(s) for s in stride] for stride in strides],
                   n_blocks_per_stage=config["n_blocks_per_stage"][:stages],
                   n_conv_per_stage_decoder=config["n_conv_per_stage_decoder"][:stages - 1])
    if slice_axis is not None:
        from .slicewise import slice_config

        return {"family": FAMILY, "name": f"{base}-2d", "config": slice_config(planned, slice_axis)}
    return {"family": FAMILY, "name": base if planned == config else f"{base}-planned", "config": planned}


def deeper(config: dict, stages: int) -> dict:
    """``config`` with more stages, each as wide and as deep as its last (a slice-wise network's extra stages:
    in 2D they cost little and widen the field of view)."""
    extra = stages - config["n_stages"]
    return dict(config, n_stages=stages,
                features_per_stage=config["features_per_stage"] + [config["features_per_stage"][-1]] * extra,
                kernel_sizes=config["kernel_sizes"] + [config["kernel_sizes"][-1]] * extra,
                strides=config["strides"] + [config["strides"][-1]] * extra,
                n_blocks_per_stage=config["n_blocks_per_stage"] + [config["n_blocks_per_stage"][-1]] * extra,
                n_conv_per_stage_decoder=config["n_conv_per_stage_decoder"] + [1] * extra)


# Per output element of a convolution, the instance norm, the activation and the memory traffic of the training step
# cost about as much as this many multiply-accumulates (fitted to measured CPU step times of ResEnc networks with
# 16-128 channels, isotropic and in-plane kernels: the convolutions alone under-rate cheap in-plane stages).
ELEMENT_COST = 100


def step_cost(config: dict, patch, in_channels: int = 1) -> float:
    """Relative cost of one training sample of ``patch`` [z, y, x] on a ResidualEncoderUNet ``config``: the
    multiply-accumulates of every convolution (stem, residual blocks with their 1x1 projections, transposed
    convolutions, decoder blocks) plus ``ELEMENT_COST`` per output element. A slice-wise config costs what its
    3D form (kernel 1 along the slice axis) costs on a one-slice patch."""
    from .slicewise import as_3d, is_slicewise

    config = as_3d(config) if is_slicewise(config) else config
    macs, elements, sizes = _encoder_cost(config, [int(p) for p in patch], in_channels)
    widths, kernels = config["features_per_stage"], config["kernel_sizes"]
    for stage in range(len(widths) - 1, 0, -1):
        voxels, width, kernel = math.prod(sizes[stage - 1]), widths[stage - 1], math.prod(kernels[stage - 1])
        macs += voxels * widths[stage] * width  # transposed convolution, kernel = stride
        elements += 2 * voxels * width  # its output and the concatenated skip
        for block in range(config["n_conv_per_stage_decoder"][stage - 1]):
            inputs = 2 * width if block == 0 else width
            projection = inputs * width if inputs != width else 0
            macs += voxels * (inputs * width * kernel + width * width * kernel + projection)
            elements += voxels * width * (3 if projection else 2)
    return float(macs + ELEMENT_COST * elements)


def _encoder_cost(config: dict, size: list, in_channels: int):
    """(multiply-accumulates, output elements, feature-map size per stage) of the stem and the encoder."""
    widths, kernels, strides = config["features_per_stage"], config["kernel_sizes"], config["strides"]
    macs = math.prod(size) * in_channels * widths[0] * math.prod(kernels[0])
    elements, channels, sizes = math.prod(size) * widths[0], widths[0], []
    for stage, width in enumerate(widths):
        stride = [strides[stage]] * 3 if isinstance(strides[stage], int) else strides[stage]
        size = [max(1, s // st) for s, st in zip(size, stride)]
        sizes.append(size)
        voxels, kernel = math.prod(size), math.prod(kernels[stage])
        for block in range(config["n_blocks_per_stage"][stage]):
            downsampled = block == 0 and any(st != 1 for st in stride)
            projection = channels * width if channels != width or downsampled else 0
            macs += voxels * (channels * width * kernel + width * width * kernel + projection)
            elements += voxels * width * (3 if projection else 2)
            channels = width
    return macs, elements, sizes
