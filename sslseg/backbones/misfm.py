"""MIS-FM (PyMIC) checkpoints: ``{"model_state_dict": ..., ...}`` as saved by PyMIC, read into the FMUNet family
of ``sslseg.networks`` (spec ``{"family": "FMUNet", ...}``; its weight layout names the parts).
FMUNet loads encoder and decoder (as PyMIC's ``ckpt_init_mode`` does), with a new head for the target classes.
PCT-Net (Swin blocks, fixed input size) is recognised and refused with a clear message: not supported yet.
"""

from __future__ import annotations

from sslseg.errors import UserError
from sslseg.networks import build_from_spec, layout_of

from .report import LoadReport
from .transfer import check_encoder, transfer

FORMAT = "misfm"
FAMILY = "FMUNet"


def is_misfm(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_state_dict"), dict)


def infer_config(state: dict) -> dict:
    """FMUNet widths and depth from the state_dict itself (the published file: [32, 64, 128, 256, 512], depth 2)."""
    widths = []
    level = 0
    while f"encoder.en_conv{level}.conv_list.0.3.weight" in state:
        widths.append(int(state[f"encoder.en_conv{level}.conv_list.0.3.weight"].shape[0]))
        level += 1
    depth = 0
    while f"encoder.en_conv0.conv_list.{depth}.3.weight" in state:
        depth += 1
    return {"feature_chns": widths, "dropout": 0.2, "depth": depth, "deep_supervision": False}


def load(checkpoint: dict, path: str, name: str, num_classes: int, in_channels: int = 1,
         load_decoder: bool = True, catalog_entry: dict = None):
    from .catalog import plan_from_entry
    from .nnssl import strip_prefixes

    state = strip_prefixes(checkpoint["model_state_dict"])
    if "project.weight" not in state or "encoder.en_conv0.conv_list.0.3.weight" not in state:
        # PCT-Net (MIS-FM net/pct_net.py): embeddings.*, pyramid_ct.* (Swin blocks), pred_heads.*
        if any(key.startswith(("embeddings.", "pyramid_ct.", "pred_heads.")) for key in state) or \
                (catalog_entry and catalog_entry.get("architecture") == "PCTNet"):
            raise UserError(f"{path} looks like a MIS-FM PCT-Net checkpoint; PCT-Net (Swin blocks, fixed input size) "
                            "is not supported yet. Use the FMUNet checkpoint or a ResEnc-L backbone.")
        raise UserError(f"{path} has a model_state_dict but not the FMUNet layout (no project.* / "
                        "encoder.en_conv0.*); only MIS-FM's FMUNet is supported")
    config = infer_config(state)
    if len(config["feature_chns"]) < 2 or config["depth"] < 1:
        raise UserError(f"{path}: incomplete FMUNet state_dict")
    spec = {"family": FAMILY, "name": "FMUNet", "config": config}
    if catalog_entry:
        plan = plan_from_entry(catalog_entry)
    else:
        # MIS-FM's published FMUNet is pretrained on CT, clipped to [-1000, 1000] HU and mapped to [-1, 1] (PyMIC)
        plan = {"spacing": None, "normalization": "ct", "intensity_range": [-1000.0, 1000.0],
                "patch_size": [64, 128, 128], "in_channels": int(state["project.weight"].shape[1]), "method": "VolF",
                "modality": None}
    plan["in_channels"] = int(state["project.weight"].shape[1])
    network = build_from_spec(spec, in_channels, num_classes)
    report = LoadReport(name=name, source=path, format=FORMAT, spec=spec, plan=plan, num_classes=num_classes,
                        in_channels=in_channels)
    load_parts = {"stem", "encoder"} | ({"decoder"} if load_decoder else set())
    # the pretext's deep-supervision outputs (out_layers.1-3) have no counterpart in a single-output network
    layout = layout_of(spec)
    heads = len(network.out_layers)
    extra = [key for key in state if layout.part_of(key) == "head" and int(key.split(".")[1]) >= heads]
    state = {key: value for key, value in state.items() if key not in set(extra)}
    transfer(network, state, report, layout, load_parts)
    report.head.skipped += len(extra)
    report.parameters = sum(p.numel() for p in network.parameters())
    head_in_checkpoint = sorted({key.split(".")[1] for key in state if layout.part_of(key) == "head"})
    report.notes.append(f"new segmentation head (out_layers.0) for {num_classes} classes; the checkpoint's "
                        f"out_layers {', '.join(head_in_checkpoint) or '-'} (pretext classes) are not used")
    if plan.get("spacing") is None:
        report.notes.append("pretraining spacing not published: use the target data's own spacing")
    check_encoder(report, hint="Is this the MIS-FM FMUNet checkpoint?")
    return network, report
