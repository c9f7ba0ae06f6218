"""The finished backbone in the nnssl checkpoint format (CONTRACTS "Backbones"): ``checkpoint_final.pth`` with
``network_weights`` (a plain ResidualEncoderUNet state_dict including the decoder), ``nnssl_adaptation_plan``,
``trainer_name`` and ``init_args``, plus ``adaptation_plan.json`` beside it. Both are written atomically, so a
folder never holds a partial final checkpoint.

The adaptation plan keeps nnssl's keys (``architecture_plans``, ``pretrain_plan``, ``pretrain_num_input_channels``,
``recommended_downstream_patchsize``, ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``) and adds
``arch_kwargs`` (the exact ResidualEncoderUNet configuration, so small presets rebuild too) and, in
``pretrain_plan``, sslseg's own fields: ``spacing`` [x, y, z] mm, ``normalization``, ``patch_size`` [z, y, x],
``method`` ("S3D" | "MAE" | "VolF"), ``in_channels``, ``modality``.
"""

from __future__ import annotations

import json
import os

import torch

METHOD_NAMES = {"s3d": "S3D", "mae": "MAE", "volf": "VolF"}
TRAINER_NAMES = {"s3d": "sslseg.S3DTrainer", "mae": "sslseg.MAETrainer", "volf": "sslseg.VolumeFusionTrainer"}
KEYS_TO_IN_PROJ = ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]


def adaptation_plan(method: str, arch: str, arch_kwargs: dict, patch, spacing, in_channels: int = 1,
                    modality: str = None, extra: dict = None) -> dict:
    """``patch`` in array order (z, y, x); ``spacing`` in (x, y, z) mm."""
    pretrain_plan = {
        "method": METHOD_NAMES[method],
        "spacing": [float(s) for s in spacing],
        "normalization": "zscore",
        "patch_size": [int(p) for p in patch],
        "in_channels": int(in_channels),
        "modality": modality,
        # nnssl's own plan layout (spacing/patch in array order, normalisation by scheme name)
        "configurations": {
            "onemmiso": {
                "spacing": [float(s) for s in reversed(list(spacing))],
                "patch_size": [int(p) for p in patch],
                "normalization_schemes": ["ZScoreNormalization"],
            }
        },
    }
    if extra:
        pretrain_plan.update(extra)
    return {
        "architecture_plans": {"arch_class_name": arch, "arch_kwargs": arch_kwargs},
        "pretrain_plan": pretrain_plan,
        "pretrain_num_input_channels": int(in_channels),
        "recommended_downstream_patchsize": [int(p) for p in patch],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
    }


def atomic_torch_save(obj, path: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    partial = os.path.join(directory, f".partial-{os.getpid()}-{os.path.basename(path)}")
    torch.save(obj, partial)
    os.replace(partial, path)


def atomic_json(obj, path: str):
    partial = os.path.join(os.path.dirname(os.path.abspath(path)), f".partial-{os.getpid()}-{os.path.basename(path)}")
    with open(partial, "w", encoding="utf-8") as stream:
        json.dump(obj, stream, indent=2)
        stream.write("\n")
    os.replace(partial, path)


def write_final(out_dir: str, network, method: str, plan: dict, init_args: dict) -> str:
    """Write ``checkpoint_final.pth`` + ``adaptation_plan.json``; returns the checkpoint path."""
    weights = {k: v.detach().to("cpu", torch.float32).clone() for k, v in network.state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "nnssl_adaptation_plan": plan,
        "trainer_name": TRAINER_NAMES[method],
        "init_args": init_args,
    }
    path = os.path.join(out_dir, "checkpoint_final.pth")
    atomic_json(plan, os.path.join(out_dir, "adaptation_plan.json"))
    atomic_torch_save(checkpoint, path)
    return path
