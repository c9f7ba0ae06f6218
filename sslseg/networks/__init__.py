"""Network architectures: one module per family, each declaring the weight-name layout of its networks.

Map of the package:

- ``layout.py``: ``WeightLayout`` (the stem/encoder/decoder/head module paths of a family and its input
  projection) and ``PARTS``;
- ``resenc.py``: the ResEnc family, dynamic-network-architectures' ``ResidualEncoderUNet`` (nnU-Net v2 / nnssl) in
  named sizes: ``ResEncL`` (the public OpenMind checkpoints), ``ResEncS-cpu``, ``ResEncXS-cpu``, ``ResEncT-test``;
- ``fmunet.py``: the FMUNet family, MIS-FM's 3D U-Net with the parameter names of its published weights.

A saved model or checkpoint names its network with a JSON spec: ``{"family": "ResEnc" | "FMUNet", "name": ...,
"config": {family keyword arguments}}``. Each family module provides ``FAMILY``, ``LAYOUT`` and
``build(config, in_channels, num_classes)``; the families are listed here, once. Importing this package imports
neither torch nor a family's network code: that happens when a network is built (FMUNet's module on first use).

Example::

    from sslseg.networks import build_from_spec, spec_for, split_parameters
    spec = spec_for("ResEncL")
    network = build_from_spec(spec, in_channels=1, num_classes=3)
    encoder, decoder = split_parameters(network, spec)
"""

from __future__ import annotations

from sslseg.errors import UserError

from . import resenc
from .layout import PARTS, WeightLayout
from .resenc import (ARCHITECTURES, architecture_kwargs, build_network, build_resenc, import_resenc, spec_for,
                     total_stride)

__all__ = ["ARCHITECTURES", "FAMILIES", "PARTS", "WeightLayout", "architecture_kwargs", "build_from_spec",
           "build_network", "build_resenc", "family", "import_resenc", "layout_of", "spec_for", "split_parameters",
           "total_stride"]


def _fmunet():
    from . import fmunet   # torch and the FMUNet modules, only when an FMUNet is asked for

    return fmunet


# family name -> its module (a function, so that a family's code is imported on first use)
FAMILIES = {"ResEnc": lambda: resenc, "FMUNet": _fmunet}


def family(spec: dict):
    """The module of the family a spec names (``ResEnc`` when it names none)."""
    name = spec.get("family", resenc.FAMILY)
    if name not in FAMILIES:
        raise UserError(f"unknown network family {name!r} (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]()


def layout_of(spec: dict) -> WeightLayout:
    """The weight-name layout of the networks a spec describes."""
    return family(spec).LAYOUT


def build_from_spec(spec: dict, in_channels: int, num_classes: int):
    """A freshly initialised network as a spec describes it."""
    return family(spec).build(spec["config"], in_channels, num_classes)


def split_parameters(network, spec: dict):
    """``(encoder, decoder)`` lists of ``(name, parameter)``: the encoder with the stem, the decoder with the head.

    Parts come from the family's layout, never from ``network.decoder.parameters()`` (a ResidualEncoderUNet's
    decoder holds the encoder too). Every parameter is in exactly one list (an error otherwise, so that a frozen
    phase never silently trains an unlisted part)."""
    layout = layout_of(spec)
    encoder, decoder = [], []
    for name, parameter in network.named_parameters():
        part = layout.part_of(name)
        if part in ("stem", "encoder"):
            encoder.append((name, parameter))
        elif part in ("decoder", "head"):
            decoder.append((name, parameter))
        else:
            raise RuntimeError(f"parameter {name} is neither encoder nor decoder for family {spec.get('family')}")
    return encoder, decoder
