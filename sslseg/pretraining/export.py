"""The finished backbone in the nnssl checkpoint format (github.com/MIC-DKFZ/nnssl, the format of the public
OpenMind checkpoints): ``checkpoint_final.pth`` with ``network_weights`` (a plain ResidualEncoderUNet state_dict
including the decoder), ``nnssl_adaptation_plan``, ``trainer_name`` and ``init_args``, plus ``adaptation_plan.json``
beside it. Both are written atomically (:mod:`sslseg.atomic`), so a folder never holds a partial final checkpoint.

The adaptation plan keeps nnssl's keys (``architecture_plans``, ``pretrain_plan``, ``pretrain_num_input_channels``,
``recommended_downstream_patchsize``, ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj``) and adds
``arch_kwargs`` (the exact ResidualEncoderUNet configuration, so small presets rebuild too) and, in
``pretrain_plan``, sslseg's own fields: ``spacing`` [x, y, z] mm, ``normalization``, ``patch_size`` [z, y, x],
``method`` ("S3D" | "MAE" | "VolF"), ``in_channels``, ``modality``.

Example::

    plan = adaptation_plan("S3D", "ResEncS-cpu", arch_kwargs, patch=(64, 64, 64), spacing=(1, 1, 1))
    write_final("/runs/s3d", network, "sslseg.S3DTrainer", plan, init_args={})
"""

from __future__ import annotations

import os

import torch

from sslseg.atomic import torch_save_atomic, write_json_atomic

KEYS_TO_IN_PROJ = ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]


def adaptation_plan(method_name: str, arch: str, arch_kwargs: dict, patch, spacing, in_channels: int = 1,
                    modality: str = None, extra: dict = None) -> dict:
    """``method_name`` as the plan records it ("S3D", "MAE", "VolF"); ``patch`` in array order (z, y, x);
    ``spacing`` in (x, y, z) mm."""
    pretrain_plan = {
        "method": method_name,
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


def write_final(out_dir: str, network, trainer_name: str, plan: dict, init_args: dict) -> str:
    """Write ``checkpoint_final.pth`` + ``adaptation_plan.json``; returns the checkpoint path."""
    weights = {k: v.detach().to("cpu", torch.float32).clone() for k, v in network.state_dict().items()}
    checkpoint = {
        "network_weights": weights,
        "nnssl_adaptation_plan": plan,
        "trainer_name": trainer_name,
        "init_args": init_args,
    }
    path = os.path.join(out_dir, "checkpoint_final.pth")
    write_json_atomic(plan, os.path.join(out_dir, "adaptation_plan.json"))
    torch_save_atomic(checkpoint, path)
    return path
