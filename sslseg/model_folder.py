"""A fine-tuned model is one folder: ``model.json`` (everything needed to use it and to know where it came from) and
``model.pt`` (the network's weights, a plain state_dict loaded with ``torch.load(weights_only=True)``).

``model.json`` holds: ``format``, ``sslseg_version``, ``created``, ``network`` (the architecture spec that rebuilds
it, see sslseg.networks), ``in_channels``, ``channel_names``, ``labels`` ([{value, name, color}], background
excluded; output class i+1 is ``labels[i]``), ``preprocessing`` (spacing [x, y, z] mm, normalisation, intensity
range), ``patch_size`` [z, y, x], ``backbone`` (provenance from the backbone loader, or null when trained from
scratch), ``recipe`` (preset, optimiser, schedule and step counts), ``training`` (train/validation cases, device,
duration), ``validation`` (Dice per label of the kept weights), ``versions`` (packages).

A model folder is written to a hidden sibling and renamed into place only when complete, so a cancelled or failed
run never leaves a half-written model. ``pack_model`` makes one ``.sslmodel`` file (a zip of the two files) to
share; ``load_model`` reads folders and packed files alike.

Example::

    model = load_model("models/hippocampus")
    model.labels        # [{"value": 1, "name": "Anterior", "color": [...]}, ...]
    pack_model("models/hippocampus", "hippocampus.sslmodel")
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import time
import zipfile
from dataclasses import dataclass

import numpy as np

from sslseg.errors import UserError
from sslseg.preprocessing import Preprocessor

MODEL_JSON = "model.json"
WEIGHTS = "model.pt"
FORMAT = "sslseg-model/1"
PACKED_SUFFIX = ".sslmodel"

# Distinct colours for labels that come without one (0..1 RGB; the first entries follow Slicer's generic
# anatomy colours for tissue-like structures).
PALETTE = [
    [0.502, 0.682, 0.502], [0.945, 0.839, 0.569], [0.694, 0.478, 0.396], [0.435, 0.722, 0.824],
    [0.847, 0.396, 0.310], [0.867, 0.510, 0.396], [0.565, 0.933, 0.565], [0.753, 0.408, 0.345],
    [0.863, 0.961, 0.078], [0.306, 0.247, 0.000], [1.000, 0.980, 0.863], [0.902, 0.863, 0.275],
]


def default_color(index: int) -> list:
    return list(PALETTE[index % len(PALETTE)])


def package_versions() -> dict:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("sslseg", "torch", "monai", "numpy", "SimpleITK", "dynamic-network-architectures"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


@dataclass
class Model:
    meta: dict
    network: object  # torch.nn.Module, eval mode, on the CPU when loaded
    path: str | None = None

    @property
    def labels(self) -> list:
        return self.meta["labels"]

    @property
    def in_channels(self) -> int:
        return int(self.meta["in_channels"])

    @property
    def num_classes(self) -> int:
        return len(self.labels) + 1

    @property
    def patch_size(self) -> list:
        return list(self.meta["patch_size"])

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor.from_dict({**self.meta["preprocessing"], "in_channels": self.in_channels})

    def label_values_array(self) -> np.ndarray:
        """Output class index -> label value written to files."""
        return np.asarray([0] + [int(label["value"]) for label in self.labels], dtype=np.int64)

    def summary(self) -> str:
        names = ", ".join(f"{l['value']}={l['name']}" for l in self.labels)
        backbone = (self.meta.get("backbone") or {}).get("name") or "none (from scratch)"
        dice = (self.meta.get("validation") or {}).get("mean_dice")
        dice_text = f", validation mean Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
        return (f"{self.meta['network'].get('name', 'network')} from backbone {backbone}; labels {names}; "
                f"patch {self.patch_size}{dice_text}")


# --- reading -------------------------------------------------------------------------------------------------

def _check_meta(meta: dict, where: str) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{where} is not an sslseg model (model.json format {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT})")
    for key in ("network", "labels", "in_channels", "preprocessing", "patch_size"):
        if key not in meta:
            raise UserError(f"{where}: model.json lacks {key!r}")
    return meta


def _load_weights(stream, where: str):
    import torch

    try:
        state = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"cannot load the weights of {where}: {error}") from None
    if not isinstance(state, dict):
        raise UserError(f"{where}: the weights file does not hold a state_dict")
    return state


def load_model(path) -> Model:
    """Load a model folder or a packed ``.sslmodel`` file; the network is rebuilt from the spec in model.json and
    its weights loaded safely (``weights_only=True``)."""
    from sslseg.networks import build_from_spec

    path = os.fspath(path)
    if os.path.isdir(path):
        json_path = os.path.join(path, MODEL_JSON)
        if not os.path.isfile(json_path):
            raise UserError(f"{path} is not a model folder (no {MODEL_JSON})")
        try:
            with open(json_path, encoding="utf-8") as stream:
                meta = json.load(stream)
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read {json_path}: {error}") from None
        _check_meta(meta, path)
        weights_path = os.path.join(path, WEIGHTS)
        if not os.path.isfile(weights_path):
            raise UserError(f"{path}: the weights file {WEIGHTS} is missing")
        state = _load_weights(weights_path, path)
    elif os.path.isfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                meta = json.loads(archive.read(MODEL_JSON).decode("utf-8"))
                _check_meta(meta, path)
                state = _load_weights(io.BytesIO(archive.read(WEIGHTS)), path)
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is not a packed sslseg model ({error})") from None
    else:
        raise UserError(f"model not found: {path}")
    network = build_from_spec(meta["network"], int(meta["in_channels"]), len(meta["labels"]) + 1)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"{path}: the weights do not fit the architecture in model.json ({str(error)[:300]})") from None
    network.eval()
    return Model(meta=meta, network=network, path=os.path.abspath(path))


# --- writing -------------------------------------------------------------------------------------------------

def save_model(out, meta: dict, state_dict) -> str:
    """Write a model folder at ``out`` atomically: a hidden sibling is filled, then renamed into place. An existing
    model folder at ``out`` is replaced; any other non-empty folder is refused."""
    import torch

    out = os.path.abspath(os.fspath(out))
    check_output_folder(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        meta = {"format": FORMAT, **meta}
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        meta.setdefault("versions", package_versions())
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, os.path.join(temporary, WEIGHTS))
        with open(os.path.join(temporary, MODEL_JSON), "w", encoding="utf-8") as stream:
            json.dump(meta, stream, indent=1)
        if os.path.isdir(out) and os.listdir(out):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(temporary, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.isdir(out):
                os.rmdir(out)
            os.replace(temporary, out)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out


def check_output_folder(out) -> None:
    """Refuse an output path that would overwrite something that is not a model (checked before training)."""
    out = os.fspath(out)
    if os.path.isfile(out):
        raise UserError(f"--out {out} is a file; give a folder for the model")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MODEL_JSON)):
        raise UserError(f"--out {out} is a non-empty folder that is not an sslseg model; choose a new or empty folder")


def pack_model(folder, file=None) -> str:
    """Pack a model folder into one ``.sslmodel`` file (a zip of model.json and model.pt); returns its path."""
    folder = os.path.abspath(os.fspath(folder))
    load_model(folder)  # refuse to pack something that does not load
    file = os.fspath(file) if file else folder.rstrip(os.sep) + PACKED_SUFFIX
    temporary = f"{file}.partial-{os.getpid()}"
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(os.path.join(folder, MODEL_JSON), MODEL_JSON)
        archive.write(os.path.join(folder, WEIGHTS), WEIGHTS)
    os.replace(temporary, file)
    return file


def unpack_model(file, folder) -> str:
    """Unpack a ``.sslmodel`` file into a model folder (checked by loading it first)."""
    load_model(file)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(os.fspath(file)) as archive:
        for member in (MODEL_JSON, WEIGHTS):
            archive.extract(member, scratch)  # fixed member names: no path traversal
        with open(os.path.join(scratch, MODEL_JSON), encoding="utf-8") as stream:
            meta = json.load(stream)
        import torch

        state = torch.load(os.path.join(scratch, WEIGHTS), map_location="cpu", weights_only=True)
        meta = {k: v for k, v in meta.items() if k != "format"}
        return save_model(folder, meta, state)
