"""The one import of dynamic-network-architectures' ResidualEncoderUNet (Isensee et al., nnU-Net ResEnc presets),
shared by the 3D (``resenc``) and slice-wise (``slicewise``) builders, with a one-line error where it is missing."""

from __future__ import annotations

from sslseg.errors import UserError


def import_resenc():
    try:
        from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    except ImportError:
        raise UserError(
            "the package dynamic-network-architectures is missing; install it without its optional timm "
            "dependency: pip install --no-deps 'dynamic-network-architectures>=0.4,<0.5'"
        ) from None
    return ResidualEncoderUNet
