"""Where a fine-tuning run starts: a freshly initialised network (training from scratch), a pretrained backbone
(sslseg.backbones: the encoder's weights, decoder and head fresh, as in nnssl fine-tuning), or a fine-tuned model
(sslseg.model_folder: every weight, the segmentation head replaced when the label count differs, and its
preprocessing plan).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sslseg.errors import UserError


@dataclass
class Start:
    network: object  # torch.nn.Module on the CPU
    spec: dict  # the network spec (sslseg.networks) written to model.json
    plan: dict  # the starting network's preprocessing plan hints: spacing, (recommended) patch size
    backbone: dict | None  # provenance of the pretrained backbone behind it (model.json "backbone"); None: scratch
    from_scratch: bool  # True: nnU-Net's from-scratch recipe (no warm-ups)
    inherited: tuple | None = None  # (Preprocessor, patch) of a fine-tuned model, kept as they are
    initial_model: dict | None = None  # provenance of the fine-tuned model continued from (model.json)

    @property
    def stride(self) -> list:
        """The network's total stride: patch sizes must be multiples of it."""
        from sslseg.networks import total_stride

        return total_stride(self.spec["config"]) if "strides" in self.spec.get("config", {}) else [16, 16, 16]


def from_scratch(arch, default_arch: str, num_classes: int, in_channels: int) -> Start:
    """A freshly initialised network: ``arch`` (a name or a spec), else ``default_arch`` (the preset's)."""
    from sslseg.networks import build_from_spec, spec_for

    spec = arch if isinstance(arch, dict) else spec_for(arch or default_arch)
    return Start(build_from_spec(spec, in_channels, num_classes), spec, {}, None, from_scratch=True)


def from_backbone(backbone, num_classes: int, in_channels: int, reporter) -> Start:
    """The network of a backbone (a name, checkpoint file or pretraining folder) with its pretrained weights."""
    from sslseg.backbones import load_backbone

    network, report = load_backbone(backbone, num_classes, in_channels)
    provenance = report.to_dict() if hasattr(report, "to_dict") else {"name": str(backbone)}
    provenance.setdefault("source", str(backbone))
    summary = report.summary() if hasattr(report, "summary") else str(provenance)
    for line in str(summary).splitlines():
        reporter.log(line)
    return Start(network, report.spec, dict(getattr(report, "plan", {}) or {}), provenance, from_scratch=False)


def from_model(model, num_classes: int, in_channels: int, reporter) -> Start:
    """A fine-tuned model (``sslseg.model_folder.Model``) to continue from: its network with every weight, a fresh
    segmentation head when ``num_classes`` differs from the model's, and its preprocessing plan."""
    from sslseg.networks import build_from_spec, layout_of

    if in_channels != model.in_channels:
        raise UserError(f"--init-model {model.path} takes {model.in_channels} input channel(s); the data have "
                        f"{in_channels}")
    spec = model.meta["network"]
    network = build_from_spec(spec, in_channels, num_classes)
    state = model.network.state_dict()
    replaced = num_classes != model.num_classes
    if replaced:
        layout = layout_of(spec)
        state = {key: tensor for key, tensor in state.items() if layout.part_of(key) != "head"}
    missing, unexpected = network.load_state_dict(state, strict=not replaced)
    if unexpected or any(layout_of(spec).part_of(key) != "head" for key in missing):
        raise UserError(f"--init-model {model.path}: its weights do not fit its network spec")
    old, new = model.num_classes - 1, num_classes - 1
    head = f"replaced ({old} -> {new} labels, initialised afresh)" if replaced else "kept"
    reporter.log(f"continuing from the model {model.path}: every weight loaded, segmentation head {head}")
    initial = {"path": model.path, "name": os.path.basename(model.path.rstrip("/\\")),
               "network": spec.get("name"), "labels": model.labels, "head": "replaced" if replaced else "kept",
               "created": model.meta.get("created"), "backbone": (model.meta.get("backbone") or {}).get("name"),
               "validation_mean_dice": (model.meta.get("validation") or {}).get("mean_dice")}
    slice_axis = spec.get("config", {}).get("slice_axis")  # a slice-wise (2D) model stays slice-wise
    hints = {} if slice_axis is None else {"slice_axis": int(slice_axis)}
    return Start(network, spec, hints, model.meta.get("backbone"), from_scratch=False,
                 inherited=(model.preprocessor, model.patch_size), initial_model=initial)
