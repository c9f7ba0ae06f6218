"""Builders for the backbone tests: checkpoints with the real published key layouts (no tests in this file).

- nnssl: a ResidualEncoderUNet state_dict from dynamic-network-architectures (all names, aliases shared as in a
  real ``torch.save``), ``nnssl_adaptation_plan`` / ``adaptation_plan.json`` like the Hugging Face releases;
- S3D: the same, but ``all_modules.*`` hold different ("trained") tensors than the stale ``conv.*``/``norm.*``;
- MIS-FM: a ``model_state_dict`` written from the published FMUNet layout (names and shapes spelled out here,
  independently of sslseg's FMUNet code).
"""

import json
import os

import torch

from sslseg.networks import architecture_kwargs, build_network


def resenc_state(arch="ResEncT-test", seed=0, num_classes=1, dtype=None):
    """A pretrained-looking ResidualEncoderUNet state_dict (random but seeded), aliases kept shared."""
    torch.manual_seed(seed)
    network = build_network(arch, in_channels=1, num_classes=num_classes)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)   # differ from any fresh init
    state = network.state_dict()
    if dtype is not None:
        converted = {}
        state = {key: converted.setdefault(id(value), value.to(dtype)) for key, value in state.items()}
    return state


def adaptation_plan(arch="ResEncT-test", kwargs=True, patch=(64, 64, 64), spacing_zyx=(1.0, 1.0, 1.0)):
    """An adaptation plan in nnssl's layout (as in the Hugging Face adaptation_plan.json)."""
    return {
        "architecture_plans": {"arch_class_name": arch, "arch_kwargs": architecture_kwargs(arch) if kwargs else None,
                               "arch_kwargs_requiring_import": None},
        "pretrain_plan": {
            "dataset_name": "Dataset745_OpenNeuro_v2", "plans_name": "nnsslPlans",
            "configurations": {"onemmiso": {"spacing": list(spacing_zyx), "patch_size": list(patch),
                                            "normalization_schemes": ["ZScoreNormalization"]}},
        },
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": list(patch),
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
    }


def write_nnssl(folder, state, plan=None, plan_in_dict=True, plan_file=False, trainer="BaseMAETrainer_BS8_1000ep",
                extra=None):
    os.makedirs(folder, exist_ok=True)
    checkpoint = {"network_weights": state, "trainer_name": trainer, "init_args": {"plan": "...", "fold": 0}}
    if plan is not None and plan_in_dict:
        checkpoint["nnssl_adaptation_plan"] = plan
    checkpoint.update(extra or {})
    path = os.path.join(str(folder), "checkpoint_final.pth")
    torch.save(checkpoint, path)
    if plan is not None and plan_file:
        with open(os.path.join(str(folder), "adaptation_plan.json"), "w") as stream:
            json.dump(plan, stream)
    return path


def sparkify(state, seed=1):
    """An S3D-like state: every conv./norm. tensor that has an all_modules. alias gets a distinct, different
    all_modules copy (the trained one); conv./norm. keep the stale values. Returns (state, trained)."""
    generator = torch.Generator().manual_seed(seed)
    result, trained = {}, {}
    for key, value in state.items():
        result[key] = value.clone()
    for key in list(result):
        for old, new in ((".conv.", ".all_modules.0."), (".norm.", ".all_modules.1.")):
            if old in key and key.replace(old, new) in result:
                alias = key.replace(old, new)
                fresh = result[key] + torch.randn(result[key].shape, generator=generator)
                result[alias] = fresh
                trained[key] = fresh
    return result, trained


def misfm_state(widths=(4, 8, 16, 32, 64), depth=2, pretext_classes=5, seed=0):
    """A state_dict in the layout of MIS-FM's published fmunet_abk1k_volf.pt (PyMIC FMUNet, res_mode 0)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"project.weight": (widths[0], 1, 3, 3, 3), "project.bias": (widths[0],)}

    def norm(prefix, channels):
        shapes[f"{prefix}.weight"] = (channels,)
        shapes[f"{prefix}.bias"] = (channels,)

    def conv(prefix, out_channels, in_channels, kernel=3):
        shapes[f"{prefix}.weight"] = (out_channels, in_channels, kernel, kernel, kernel)
        shapes[f"{prefix}.bias"] = (out_channels,)

    def residual(prefix, channels):
        for j in range(depth):
            norm(f"{prefix}.conv_list.{j}.0", channels)          # InstanceNorm3d(affine)
            conv(f"{prefix}.conv_list.{j}.3", channels, channels)  # after LeakyReLU (1) and Dropout (2)

    for i, width in enumerate(widths):
        residual(f"encoder.en_conv{i}", width)
        residual(f"decoder.de_conv{i}", width)
    for i in range(len(widths) - 1):
        norm(f"encoder.down{i}.down.0", widths[i])
        conv(f"encoder.down{i}.down.2", widths[i + 1], widths[i])
        norm(f"decoder.upcat{i}.up.0", widths[i + 1])
        conv(f"decoder.upcat{i}.up.2", widths[i], widths[i + 1], kernel=1)
        norm(f"decoder.upcat{i}.conv.0", 2 * widths[i])
        conv(f"decoder.upcat{i}.conv.2", widths[i], 2 * widths[i])
        norm(f"out_layers.{i}.0", widths[i])
        conv(f"out_layers.{i}.2", pretext_classes, widths[i])
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
