"""Reading a checkpoint file into a network, by its layout (nnssl, a bare state_dict, MIS-FM), and checking that a
file is a usable backbone. Shared by loading (``api``) and downloading (``download``), which must not import each
other.

Example::

    from sslseg.backbones.reading import validate_checkpoint
    report = validate_checkpoint("checkpoint_final.pth", "my-s3d")     # UserError unless it is a usable backbone
"""

from __future__ import annotations

from sslseg.errors import UserError

from .safe_load import RefusedCheckpoint, load_checkpoint

# what each detected layout counts as, against the format a catalog entry names
FORMAT_OF = {"nnssl": "nnssl", "state_dict": "nnssl", "misfm": "misfm"}


def detect_format(checkpoint) -> str:
    from . import misfm, nnssl

    if nnssl.is_nnssl(checkpoint):
        return "nnssl"
    if misfm.is_misfm(checkpoint):
        return "misfm"
    if isinstance(checkpoint, dict) and checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
        return "state_dict"
    return "unknown"


def read_checkpoint(path: str):
    """Safely read a checkpoint. When the plain weights-only load stops at a NumPy global (PyMIC/MIS-FM store
    scores as NumPy scalars, nnssl training logs may too), it is retried once with the NumPy allow-list."""
    try:
        return load_checkpoint(path)
    except RefusedCheckpoint as error:
        if error.global_name.startswith("numpy"):
            return load_checkpoint(path, allow_numpy=True)
        raise


def build_loaded(checkpoint, path, name, num_classes, in_channels, load_decoder, entry):
    """Build the network for a checkpoint already read safely, by its layout."""
    from . import misfm, nnssl

    kind = detect_format(checkpoint)
    if kind == "misfm":
        return misfm.load(checkpoint, path, name, num_classes, in_channels,
                          load_decoder=True if load_decoder is None else bool(load_decoder), catalog_entry=entry)
    if kind == "unknown":
        keys = ", ".join(map(str, list(checkpoint)[:8])) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UserError(f"{path} is not a checkpoint format sslseg knows (nnssl `network_weights` or MIS-FM "
                        f"`model_state_dict`); it holds: {keys}")
    wrapped = checkpoint if kind == "nnssl" else {"network_weights": checkpoint}
    network, report = nnssl.load(wrapped, path, name, num_classes, in_channels, load_decoder=bool(load_decoder),
                                 catalog_entry=entry)
    if kind == "state_dict":
        report.notes.append("bare state_dict read as nnssl network_weights")
    return network, report


def validate_checkpoint(path: str, name: str, entry: dict = None, plan: dict = None):
    """The LoadReport of ``path`` as backbone ``name``: it must load with the safe loader, have the format the
    catalog ``entry`` names (when given) and load its encoder completely. ``plan``: the adaptation plan that came
    with the file, used when the checkpoint carries none. Raises UserError otherwise."""
    checkpoint = read_checkpoint(path)
    kind = detect_format(checkpoint)
    if entry is not None and kind != "unknown" and FORMAT_OF[kind] != entry["format"]:
        raise UserError(f"{path} is a {FORMAT_OF[kind]} checkpoint, but {name} is published in the "
                        f"{entry['format']} format")
    if plan is not None and kind in ("nnssl", "state_dict"):
        checkpoint = dict(checkpoint) if kind == "nnssl" else {"network_weights": checkpoint}
        if not isinstance(checkpoint.get("nnssl_adaptation_plan"), dict):
            checkpoint["nnssl_adaptation_plan"] = plan
    _, report = build_loaded(checkpoint, path, name, 2, 1, None, entry)
    return report
