"""Loading nnssl-format checkpoints (the OpenMind ResEnc-L releases and ``sslseg pretrain`` output).

The format, as read here (checked against MIC-DKFZ/nnssl and the Hugging Face releases):

- ``checkpoint_final.pth``: a dict with ``network_weights`` (state_dict of a ResidualEncoderUNet, decoder
  included; names may carry DDP ``module.`` or ``torch.compile`` ``_orig_mod.`` prefixes), ``trainer_name``,
  ``init_args``, optionally ``nnssl_adaptation_plan`` and, in raw training checkpoints, ``optimizer_state``,
  ``grad_scaler_state``, ``logging``, ``current_epoch``, ``spark_weights`` (ignored).
- the adaptation plan (from the dict, else ``adaptation_plan.json`` beside the file, else the catalog):
  ``architecture_plans: {arch_class_name: "ResEncL" | a sslseg preset | "ResidualEncoderUNet", arch_kwargs}``,
  ``pretrain_plan`` (nnssl's Plan: ``configurations.<name>.{spacing (array order), patch_size,
  normalization_schemes}``; sslseg adds ``spacing`` [x, y, z], ``normalization``, ``patch_size``, ``method``,
  ``modality``), ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``, ``key_to_encoder``
  ("encoder.stages"), ``key_to_stem`` ("encoder.stem"), ``keys_to_in_proj``.

Loading: the encoder (stem + stages) is transferred, as in nnssl's fine-tuning; the decoder and the segmentation
head start fresh (``load_decoder=True`` also takes the pretrained decoder where shapes match). The parts are those
of the ResEnc family's weight layout (``sslseg.networks.resenc.LAYOUT``), whose ``decoder.encoder.*`` duplicates
are ignored. SparK-converted (S3D) checkpoints keep the trained tensors under
``all_modules.*`` and stale ones under ``conv.*``/``norm.*``: when the two differ, ``all_modules.*`` is used and
the report says so.
"""

from __future__ import annotations

import json
import os

from sslseg.errors import UserError
from sslseg.networks import ARCHITECTURES, architecture_kwargs, build_from_spec, layout_of

from .report import LoadReport
from .transfer import check_encoder, transfer

FORMAT = "nnssl"
_NORMALIZATION = {"zscorenormalization": "zscore", "ctnormalization": "ct", "zscore": "zscore", "ct": "ct",
                  "noNormalization".lower(): "none", "rescaleto01normalization": "rescale01"}
_RESENC_KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage",
                "n_conv_per_stage_decoder", "conv_bias")


def is_nnssl(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("network_weights"), dict)


def strip_prefixes(state: dict) -> dict:
    """Drop DDP/compile wrappers from tensor names."""
    result = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        result[key] = value
    return result


def find_plan(checkpoint: dict, path: str, fallback: dict = None):
    """``(plan, where)``: the adaptation plan from the checkpoint, the JSON file beside it, or ``fallback``."""
    plan = checkpoint.get("nnssl_adaptation_plan")
    if isinstance(plan, dict) and plan:
        return plan, "checkpoint"
    beside = os.path.join(os.path.dirname(os.path.abspath(path)), "adaptation_plan.json")
    if os.path.isfile(beside):
        try:
            with open(beside, encoding="utf-8") as stream:
                return json.load(stream), beside
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read {beside}: {error}") from None
    if fallback:
        return fallback, "catalog"
    raise UserError(
        f"{path} has no adaptation plan (neither `nnssl_adaptation_plan` in the checkpoint nor adaptation_plan.json "
        "beside it), so the architecture is unknown. Put the adaptation_plan.json that came with the checkpoint "
        "next to it."
    )


def network_spec(adaptation_plan: dict) -> dict:
    """The sslseg network spec (family ResEnc) an adaptation plan describes."""
    arch = adaptation_plan.get("architecture_plans") or {}
    name = arch.get("arch_class_name") or "ResEncL"
    kwargs = arch.get("arch_kwargs")
    if isinstance(kwargs, dict) and kwargs:
        missing = [key for key in _RESENC_KEYS if key not in kwargs and key != "conv_bias"]
        if missing:
            raise UserError(f"the adaptation plan's arch_kwargs lack {', '.join(missing)}")
        config = {key: kwargs[key] for key in _RESENC_KEYS if key in kwargs}
        config["n_conv_per_stage_decoder"] = list(config["n_conv_per_stage_decoder"])
        config.setdefault("conv_bias", True)
        short = name.split(".")[-1]
        return {"family": "ResEnc", "name": short if short != "ResidualEncoderUNet" else "ResEnc-custom",
                "config": _jsonable(config)}
    if name in ARCHITECTURES:
        return {"family": "ResEnc", "name": name, "config": architecture_kwargs(name)}
    raise UserError(
        f"architecture {name!r} of this checkpoint is not supported (sslseg loads ResidualEncoderUNet backbones: "
        f"{', '.join(ARCHITECTURES)} or explicit arch_kwargs); Primus/transformer checkpoints are not supported yet"
    )


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value


def plan_fields(adaptation_plan: dict, checkpoint: dict, catalog_plan: dict = None) -> dict:
    """The LoadReport plan: spacing [x, y, z] mm, normalization, patch_size [z, y, x], in_channels, method,
    modality; sslseg's explicit fields first, then nnssl's Plan, then the catalog."""
    pretrain = adaptation_plan.get("pretrain_plan") or {}
    catalog_plan = catalog_plan or {}
    configurations = pretrain.get("configurations") or {}
    configuration = next(iter(configurations.values()), {}) if isinstance(configurations, dict) else {}
    spacing = pretrain.get("spacing")
    if spacing is None and configuration.get("spacing") is not None:
        spacing = list(reversed([float(s) for s in configuration["spacing"]]))   # nnssl: array order (z, y, x)
    normalization = pretrain.get("normalization")
    if normalization is None and configuration.get("normalization_schemes"):
        scheme = str(configuration["normalization_schemes"][0])
        normalization = _NORMALIZATION.get(scheme.lower(), scheme)
    patch = adaptation_plan.get("recommended_downstream_patchsize") or pretrain.get("patch_size") \
        or configuration.get("patch_size")
    in_channels = adaptation_plan.get("pretrain_num_input_channels") or pretrain.get("in_channels") or 1
    method = (pretrain.get("method") or catalog_plan.get("method")
              or _method_from_trainer(checkpoint.get("trainer_name")))
    return {
        "spacing": [float(s) for s in spacing] if spacing is not None else catalog_plan.get("spacing"),
        "normalization": normalization or catalog_plan.get("normalization") or "zscore",
        "patch_size": [int(p) for p in patch] if patch else catalog_plan.get("patch_size"),
        "in_channels": int(in_channels),
        "method": method,
        "modality": pretrain.get("modality") or catalog_plan.get("modality"),
    }


def _method_from_trainer(trainer) -> str:
    name = str(trainer or "").lower()
    if "spark" in name or "s3d" in name:
        return "S3D"
    if "volumefusion" in name or "volf" in name or "_vf" in name:
        return "VolF"
    if "mae" in name:
        return "MAE"
    return "unknown"


def prefer_all_modules(names, tensors):
    for name in names:
        if ".all_modules." in name:
            return name
    return names[0]


def load(checkpoint: dict, path: str, name: str, num_classes: int, in_channels: int = 1,
         load_decoder: bool = False, catalog_entry: dict = None):
    """``(network, report)`` from an nnssl checkpoint dict already read safely from ``path``."""
    from .catalog import plan_from_entry

    catalog_plan = plan_from_entry(catalog_entry) if catalog_entry else None
    fallback = {"architecture_plans": {"arch_class_name": catalog_entry["architecture"]}} if catalog_entry else None
    adaptation_plan, plan_source = find_plan(checkpoint, path, fallback)
    spec = network_spec(adaptation_plan)
    plan = plan_fields(adaptation_plan, checkpoint, catalog_plan)
    state = strip_prefixes(checkpoint["network_weights"])
    if not state:
        raise UserError(f"{path}: network_weights is empty")
    network = build_from_spec(spec, in_channels, num_classes)
    report = LoadReport(name=name, source=path, format=FORMAT, spec=spec, plan=plan, num_classes=num_classes,
                        in_channels=in_channels, trainer=checkpoint.get("trainer_name"))
    layout = layout_of(spec)
    in_proj = tuple(adaptation_plan.get("keys_to_in_proj") or layout.in_proj)
    load_parts = {"stem", "encoder"} | ({"decoder"} if load_decoder else set())
    differing = transfer(network, state, report, layout, load_parts, prefer=prefer_all_modules, in_proj=in_proj)
    report.parameters = sum(p.numel() for p in network.parameters())
    if differing:
        used = sorted({".all_modules." in chosen for _, chosen in differing})
        report.quirks["sparse_converted"] = {
            "differing_tensors": len(differing),
            "used": "all_modules" if used == [True] else "mixed",
        }
        report.notes.append(
            f"SparK-converted (S3D) checkpoint: {len(differing)} tensors differ between conv./norm. and "
            "all_modules. names; the trained all_modules.* tensors were used"
        )
    else:
        report.quirks["sparse_converted"] = {"differing_tensors": 0, "used": "identical"}
    report.notes.append(f"adaptation plan from {plan_source}")
    if not load_decoder:
        report.notes.append("decoder and segmentation head start fresh (encoder transfer, as in nnssl fine-tuning)")
    if in_channels != plan["in_channels"]:
        if report.stem.adapted:
            report.notes.append(f"stem weights replicated for {in_channels} input channels (divided by {in_channels})")
    check_encoder(report, hint="Is this checkpoint the architecture its plan names "
                               f"({spec['name']})?")
    return network, report
