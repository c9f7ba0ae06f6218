"""Network architectures, by name.

``ResEncL`` is the Residual Encoder U-Net of nnU-Net v2 / nnssl (dynamic-network-architectures'
``ResidualEncoderUNet``) with the exact configuration of the public OpenMind checkpoints. The smaller presets are
the same class with fewer stages and channels: they share every code path (checkpoint layout, freezing, sparse
pretraining) and exist for CPU users and tests; their names say so.

Example::

    network = build_network("ResEncL", in_channels=1, num_classes=3)
"""

from __future__ import annotations

import copy

from sslseg.errors import UserError

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


def import_resenc():
    try:
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    except ImportError:
        raise UserError(
            "the package dynamic-network-architectures is missing; install it without its optional timm "
            "dependency: pip install --no-deps 'dynamic-network-architectures>=0.4,<0.5'"
        ) from None
    return ResidualEncoderUNet


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


def build_network(name: str, in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False):
    """A freshly initialised network of a named architecture."""
    return build_resenc(architecture_kwargs(name), in_channels, num_classes, deep_supervision)


def total_stride(config: dict) -> list:
    """Product of the strides per axis: patch sizes must be multiples of it."""
    product = [1, 1, 1]
    for stride in config["strides"]:
        stride = [stride] * 3 if isinstance(stride, int) else stride
        product = [a * b for a, b in zip(product, stride)]
    return product


# --- specs: how a saved model or checkpoint says which network to rebuild -------------------------------------
# A spec is JSON: {"family": "ResEnc", "name": "ResEncL", "config": {ResidualEncoderUNet kwargs}}. Other families
# (e.g. MIS-FM's FMUNet) register a builder and their encoder/decoder split here.

_FAMILIES = {}


def register_family(family: str, builder, encoder_prefixes, decoder_prefixes):
    """``builder(config, in_channels, num_classes)``; prefixes name the state_dict parts (see split_parameters)."""
    _FAMILIES[family] = (builder, tuple(encoder_prefixes), tuple(decoder_prefixes))


# The decoder of a ResidualEncoderUNet holds a reference to the encoder (``decoder.encoder``), so
# ``decoder.parameters()`` includes the encoder's; the trainable decoder parts are named explicitly.
register_family(
    "ResEnc",
    lambda config, in_channels, num_classes: build_resenc(config, in_channels, num_classes),
    encoder_prefixes=("encoder.",),
    decoder_prefixes=("decoder.stages.", "decoder.transpconvs.", "decoder.seg_layers."),
)


def _family(family: str):
    if family not in _FAMILIES:
        import sslseg.backbones  # noqa: F401  (registers the MIS-FM FMUNet family)
    if family not in _FAMILIES:
        raise UserError(f"unknown network family {family!r} (known: {', '.join(_FAMILIES)})")
    return _FAMILIES[family]


def spec_for(name: str) -> dict:
    return {"family": "ResEnc", "name": name, "config": architecture_kwargs(name)}


def build_from_spec(spec: dict, in_channels: int, num_classes: int):
    return _family(spec.get("family", "ResEnc"))[0](spec["config"], in_channels, num_classes)


def split_parameters(network, spec: dict):
    """``(encoder, decoder)`` lists of ``(name, parameter)``; the encoder includes the stem. Every parameter is in
    exactly one list (an error otherwise, so that a frozen phase never silently trains an unlisted part)."""
    _, encoder_prefixes, decoder_prefixes = _family(spec.get("family", "ResEnc"))
    encoder, decoder = [], []
    for name, parameter in network.named_parameters():
        if name.startswith(encoder_prefixes):
            encoder.append((name, parameter))
        elif name.startswith(decoder_prefixes):
            decoder.append((name, parameter))
        else:
            raise RuntimeError(f"parameter {name} is neither encoder nor decoder for family {spec.get('family')}")
    return encoder, decoder
