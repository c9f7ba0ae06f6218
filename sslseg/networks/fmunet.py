"""The FMUNet family: the 3D U-Net of MIS-FM / PyMIC (Wang et al., arXiv 2306.16925; openmedlab/MIS-FM), written
for sslseg with the parameter names of the published ``fmunet_abk1k_volf.pt`` state_dict so that the Volume Fusion
weights load one to one.

Structure (isotropic 3D mode, the published configuration): ``project`` (3x3x3 conv, in -> f0); encoder levels
``en_conv0-4`` (residual pre-activation blocks: InstanceNorm(affine) -> LeakyReLU -> Dropout -> 3x3x3 conv, twice,
each added to its input) with ``down0-3`` between them (norm -> LeakyReLU -> 3x3x3 conv, stride 2); decoder
``de_conv4`` on the bottleneck, then per level ``upcat3..0`` (norm -> LeakyReLU -> 1x1x1 conv to the skip's width ->
trilinear x2 upsampling; concatenated after the skip; norm -> LeakyReLU -> 3x3x3 conv) and ``de_conv3..0``;
``out_layers.i`` (norm -> LeakyReLU -> 3x3x3 conv to classes) per decoder level, of which sslseg uses level 0
(``out_layers.1-3`` only with ``deep_supervision``). Dropout (p on levels 2-4) has no parameters.
Default widths [32, 64, 128, 256, 512] (~47 M parameters with four output layers).
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import WeightLayout

FAMILY = "FMUNet"

# PyMIC's FMUNet modules; MIS-FM fine-tunes encoder and decoder (``ckpt_init_mode``) with a new head.
LAYOUT = WeightLayout(stem=("project",), encoder=("encoder",), decoder=("decoder",), head=("out_layers",),
                      in_proj=("project",))

DEFAULT_CONFIG = {"feature_chns": [32, 64, 128, 256, 512], "dropout": 0.2, "depth": 2, "deep_supervision": False}


def _pre_activation(channels: int):
    return [nn.InstanceNorm3d(channels, affine=True), nn.LeakyReLU()]


class ResidualLevel(nn.Module):
    """``depth`` x (norm -> LeakyReLU -> dropout -> conv) each with an identity shortcut (names: conv_list.i.{0,3})."""

    def __init__(self, channels: int, dropout: float, depth: int):
        super().__init__()
        self.conv_list = nn.ModuleList(
            nn.Sequential(*_pre_activation(channels), nn.Dropout(dropout), nn.Conv3d(channels, channels, 3, padding=1))
            for _ in range(depth)
        )

    def forward(self, x):
        for block in self.conv_list:
            x = x + block(x)
        return x


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.down = nn.Sequential(*_pre_activation(in_channels), nn.Conv3d(in_channels, out_channels, 3, padding=1,
                                                                            stride=2))

    def forward(self, x):
        return self.down(x)


class UpConcat(nn.Module):
    def __init__(self, low_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Sequential(*_pre_activation(low_channels), nn.Conv3d(low_channels, skip_channels, 1),
                                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True))
        self.conv = nn.Sequential(*_pre_activation(2 * skip_channels),
                                  nn.Conv3d(2 * skip_channels, out_channels, 3, padding=1))

    def forward(self, low, skip):
        return self.conv(torch.cat([skip, self.up(low)], dim=1))


class FMEncoder(nn.Module):
    def __init__(self, widths, dropout: float, depth: int):
        super().__init__()
        for level, width in enumerate(widths):
            setattr(self, f"en_conv{level}", ResidualLevel(width, dropout if level >= 2 else 0.0, depth))
        for level in range(len(widths) - 1):
            setattr(self, f"down{level}", Down(widths[level], widths[level + 1]))
        self.levels = len(widths)

    def forward(self, x):
        features = [self.en_conv0(x)]
        for level in range(1, self.levels):
            features.append(getattr(self, f"en_conv{level}")(getattr(self, f"down{level - 1}")(features[-1])))
        return features


class FMDecoder(nn.Module):
    def __init__(self, widths, dropout: float, depth: int):
        super().__init__()
        for level in range(len(widths) - 1):
            setattr(self, f"upcat{level}", UpConcat(widths[level + 1], widths[level], widths[level]))
        for level, width in enumerate(widths):
            setattr(self, f"de_conv{level}", ResidualLevel(width, dropout if level >= 2 else 0.0, depth))
        self.levels = len(widths)

    def forward(self, features):
        top = self.levels - 1
        x = getattr(self, f"de_conv{top}")(features[top])
        outputs = []
        for level in range(top - 1, -1, -1):
            x = getattr(self, f"de_conv{level}")(getattr(self, f"upcat{level}")(x, features[level]))
            outputs.append(x)
        return outputs[::-1]   # finest first


class FMUNet(nn.Module):
    """``FMUNet(in_channels, num_classes, config)``; ``forward`` returns the finest-level logits (a list, finest
    first, with ``config["deep_supervision"]`` in training mode)."""

    def __init__(self, in_channels: int, num_classes: int, config: dict = None):
        super().__init__()
        config = {**DEFAULT_CONFIG, **(config or {})}
        widths = list(config["feature_chns"])
        if len(widths) < 2:
            raise ValueError("FMUNet needs at least two levels")
        self.deep_supervision = bool(config.get("deep_supervision", False))
        self.project = nn.Conv3d(in_channels, widths[0], 3, padding=1)
        self.encoder = FMEncoder(widths, float(config["dropout"]), int(config["depth"]))
        self.decoder = FMDecoder(widths, float(config["dropout"]), int(config["depth"]))
        heads = len(widths) - 1 if self.deep_supervision else 1
        self.out_layers = nn.ModuleList(
            nn.Sequential(*_pre_activation(widths[i]), nn.Conv3d(widths[i], num_classes, 3, padding=1))
            for i in range(heads)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=1e-2)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        decoded = self.decoder(self.encoder(self.project(x)))
        if self.deep_supervision and self.training:
            return [head(features) for head, features in zip(self.out_layers, decoded)]
        return self.out_layers[0](decoded[0])


def build(config: dict, in_channels: int, num_classes: int) -> FMUNet:
    """The family's builder for ``sslseg.networks.build_from_spec``."""
    return FMUNet(in_channels, num_classes, config)
