"""The preprocessing and patch plan of a fine-tuning run: target spacing, intensity normalisation, patch and batch.

Rules, in order of precedence:

- spacing: the starting network's plan (a backbone's pretraining spacing, or a fine-tuned model's), else the median
  spacing of the training cases (nnU-Net's default target, Isensee et al., Nature Methods 2021);
- normalisation: a fine-tuned model's own (its weights expect it), else CT clipping for CT data and per-case z-score
  otherwise (nnU-Net's two schemes);
- patch: an explicit ``patch_size`` (a multiple of the network's total stride), a fine-tuned model's own patch, the
  preset's fixed patch, else the data's median shape rounded up to the stride and capped by the plan's
  (recommended) patch and the preset's maximum;
- batch: an explicit ``batch_size``, else the preset's.

The result is a small ``Plan``; fitting it into GPU memory (sslseg.finetuning.memory) may shrink patch and batch
afterwards.

Example::

    plan = make_plan(geometries, modality="MR", in_channels=1, stride=[4, 4, 4], preset=get_preset("cpu"))
    plan.patch_size, plan.preprocessor().to_dict()
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslseg.errors import UserError
from sslseg.preprocessing import DEFAULT_CT_RANGE, Preprocessor, choose_patch_size


@dataclass(frozen=True)
class Plan:
    spacing: list  # [x, y, z] mm
    normalization: str  # "zscore" or "ct"
    in_channels: int
    patch_size: list  # [z, y, x] voxels
    batch_size: int
    stride: list  # the network's total stride per axis [z, y, x]
    intensity_range: list = tuple(DEFAULT_CT_RANGE)  # CT clipping window

    def preprocessor(self) -> Preprocessor:
        return Preprocessor(spacing=list(self.spacing), normalization=self.normalization,
                            in_channels=self.in_channels, intensity_range=list(self.intensity_range))


def make_plan(train_geometries, modality: str, in_channels: int, stride, preset, network_plan=None,
              inherited=None, patch_size=None, batch_size=None) -> Plan:
    """The plan from the training cases' geometries (sslseg.imageio.Geometry), the dataset's modality ("CT" or
    other), the starting network's total stride and plan (``network_plan``: {"spacing", "patch_size" or
    "recommended_patch_size"}), and ``inherited``: a fine-tuned model's (Preprocessor, patch) to continue from."""
    network_plan = network_plan or {}
    if inherited is not None:
        preprocessor, model_patch = inherited
        spacing, normalization = [float(s) for s in preprocessor.spacing], preprocessor.normalization
        intensity_range = list(preprocessor.intensity_range)
    else:
        spacing, normalization = target_spacing(train_geometries, network_plan), \
            "ct" if modality == "CT" else "zscore"
        intensity_range, model_patch = list(DEFAULT_CT_RANGE), None
    shapes = [resampled_shape(g, spacing) for g in train_geometries]
    patch = choose_patch(shapes, stride, preset, network_plan, patch_size, model_patch)
    return Plan(spacing=spacing, normalization=normalization, in_channels=int(in_channels), patch_size=patch,
                batch_size=int(batch_size or preset.batch_size), stride=list(stride),
                intensity_range=intensity_range)


def target_spacing(train_geometries, network_plan: dict) -> list:
    """The plan's spacing, else the median spacing of the training cases."""
    if network_plan.get("spacing"):
        return [float(s) for s in network_plan["spacing"]]
    return np.median(np.asarray([g.spacing for g in train_geometries]), axis=0).tolist()


def resampled_shape(geometry, spacing) -> tuple:
    return Preprocessor(spacing=spacing).target_geometry(geometry).shape


def choose_patch(shapes, stride, preset, network_plan: dict, patch_size=None, model_patch=None) -> list:
    """Patch [z, y, x]: explicit, a fine-tuned model's, the preset's, or from the data (see the module docstring)."""
    if patch_size:
        patch = [int(p) for p in patch_size]
        if any(p % s for p, s in zip(patch, stride)):
            raise UserError(f"patch size {patch} must be a multiple of the network's total stride {stride}")
        return patch
    if model_patch:
        return [int(p) for p in model_patch]
    if preset.patch_size:
        return list(preset.patch_size)
    return choose_patch_size(shapes, stride, network_plan.get("patch_size") or
                             network_plan.get("recommended_patch_size"), preset.max_patch_size)
