"""A fine-tuned model is one folder: ``model.json`` (everything needed to use it and to know where it came from) and
``model.pt`` (the network's weights, a plain state_dict loaded with ``torch.load(weights_only=True)``).

``model.json`` holds: ``format``, ``sslseg_version``, ``created``, ``network`` (the architecture spec that rebuilds
it, see sslseg.networks), ``in_channels``, ``channel_names``, ``labels`` ([{value, name, color, terminology}],
background excluded; output class i+1 is ``labels[i]``; ``terminology``, optional, is Slicer's coded meaning of the
segment, see ``check_terminology``), ``preprocessing`` (spacing [x, y, z] mm, normalisation, intensity range),
``patch_size`` [z, y, x], ``backbone`` (provenance from the backbone loader, or null when trained from scratch),
``recipe`` (preset, optimiser, schedule and step counts), ``training`` (train/validation cases, device,
duration), ``validation`` (Dice per label of the kept weights), ``versions`` (packages).

A model folder is written to a hidden sibling and renamed into place only when complete, so a cancelled or failed
run never leaves a half-written model. ``pack_model`` makes one ``.sslmodel`` file (a zip of the two files) to
share; ``load_model`` reads folders and packed files alike, ``read_model_meta`` only their model.json.

Models come from other people, so reading one trusts nothing: model.json is checked field by field
(``check_model_meta``), a packed file must hold exactly the two members, as plain files under size caps (checked
before reading, and again while reading, against zip bombs), and the weights load with ``weights_only=True`` and
must fit the architecture model.json describes before any memory is allocated for it.

Example::

    model = load_model("models/hippocampus")
    model.labels        # [{"value": 1, "name": "Anterior", "color": [...]}, ...]
    pack_model("models/hippocampus", "hippocampus.sslmodel")
    read_model_meta("hippocampus.sslmodel")["labels"]   # checked, without loading the weights
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import stat
import tempfile
import time
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from sslseg import validation
from sslseg.atomic import (atomic_file, check_zip_file, partial_path, remove_quietly, save_torch, sync_file,
                           write_errors)
from sslseg.errors import UserError
from sslseg.preprocessing import MAX_CHANNELS, NORMALIZATIONS, Preprocessor

MODEL_JSON = "model.json"
WEIGHTS = "model.pt"
FORMAT = "sslseg-model/1"
PACKED_SUFFIX = ".sslmodel"
REQUIRED_KEYS = ("network", "labels", "in_channels", "preprocessing", "patch_size")
LABEL_KEYS = ("value", "name", "color", "terminology")
MAX_LABEL_VALUE = 255  # label maps are written as 8-bit images, as Slicer's label maps and nnU-Net's usually are
MAX_NAME_LENGTH = 200
# A Slicer terminology entry: 7 "~"-separated fields (context name, category, type, type modifier, anatomic context
# name, anatomic region, region modifier), each coded field "scheme^value^meaning", as Slicer's Terminologies
# module serialises it (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry). Real entries are a few hundred
# characters.
TERMINOLOGY_FIELDS = 7
MAX_TERMINOLOGY_LENGTH = 2000
TERMINOLOGY_EXAMPLE = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                       "Structure~SCT^5366009^Hippocampus~^^~Anatomic codes - DICOM master list~^^~^^")
# Caps on what a model file may hold, checked before reading (a zip bomb declares or inflates to far more).
MAX_META_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
MEMBER_CAPS = {MODEL_JSON: MAX_META_BYTES, WEIGHTS: MAX_WEIGHTS_BYTES}
CHUNK = 1 << 20

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

    @property
    def largest_component_values(self) -> list:
        """Label values whose prediction keeps only its largest component (``sslseg.postprocessing``)."""
        return list((self.meta.get("postprocessing") or {}).get("largest_component") or [])

    def label_values_array(self) -> np.ndarray:
        """Output class index -> label value written to files."""
        return np.asarray([0] + [int(label["value"]) for label in self.labels], dtype=np.int64)

    def summary(self) -> str:
        names = ", ".join(f"{l['value']}={l['name']}" for l in self.labels)
        backbone = (self.meta.get("backbone") or {}).get("name") or "none (from scratch)"
        dice = (self.meta.get("validation") or {}).get("mean_dice")
        dice_text = f", validation mean Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
        configuration = (self.meta.get("plan") or {}).get("configuration") or "3d"
        return (f"{self.meta['network'].get('name', 'network')} from backbone {backbone}; labels {names}; "
                f"configuration {configuration}, patch {self.patch_size}{dice_text}")


# --- checking model.json ---------------------------------------------------------------------------------------

def _kind(value) -> str:
    """A value's JSON type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _terminology_problem(entry: str) -> str | None:
    """Why ``entry`` is not a Slicer terminology entry string, or None. Slicer's reader needs exactly 7 fields, a
    context name, and a coded category and type; the other coded fields may be empty ("^^")."""
    if len(entry) > MAX_TERMINOLOGY_LENGTH or any(unicodedata.category(c) == "Cc" for c in entry):
        # written into a .seg.nrrd header line: a line break would end the header early
        return f"must be one line of at most {MAX_TERMINOLOGY_LENGTH} characters"
    if "|" in entry:
        return "must not contain '|' (it separates a segment's tags)"
    fields = entry.split("~")
    if len(fields) != TERMINOLOGY_FIELDS:
        return f"must have {TERMINOLOGY_FIELDS} '~'-separated fields (it has {len(fields)})"
    if not fields[0].strip():
        return "lacks the terminology context name (the first field)"
    for index, what in ((1, "category"), (2, "type"), (3, "type modifier"), (5, "anatomic region"),
                        (6, "anatomic region modifier")):
        parts = fields[index].split("^")
        if len(parts) != 3:
            return f"{what} must be 'scheme^value^meaning' (got {fields[index]!r:.60})"
        if index in (1, 2) and not (parts[0] and parts[1]):
            return f"{what} needs a coding scheme and a code value (got {fields[index]!r:.60})"
    return None


def check_terminology(entry, where: str) -> str:
    """Check a segment's terminology entry: one line in Slicer's serialised form, e.g. ``TERMINOLOGY_EXAMPLE``
    (context~category~type~type modifier~anatomic context~anatomic region~region modifier). Returns it."""
    if not isinstance(entry, str):
        raise UserError(f"{where}: terminology must be a string (got {_kind(entry)})")
    problem = _terminology_problem(entry)
    if problem:
        raise UserError(f"{where}: terminology {problem}; expected Slicer's form such as {TERMINOLOGY_EXAMPLE!r}")
    return entry


def _check_label(entry, at: str, strict_keys: bool) -> dict:
    if not isinstance(entry, dict):
        raise UserError(f"{at} must be an object {{\"value\", \"name\", \"color\"}} (got {_kind(entry)})")
    unknown = sorted(set(entry) - set(LABEL_KEYS))
    if strict_keys and unknown:
        raise UserError(f"{at} has unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(LABEL_KEYS)})")
    value = entry.get("value")
    if not _is_int(value) or not 1 <= value <= MAX_LABEL_VALUE:
        raise UserError(f"{at}: value must be a whole number from 1 to {MAX_LABEL_VALUE} (0 is the background), "
                        f"got {value!r}")
    checked = {"value": value}
    name = entry.get("name")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{at}: name must be a non-empty string (got {name!r})")
        if len(name) > MAX_NAME_LENGTH or any(unicodedata.category(c) == "Cc" for c in name):
            # names end up in .seg.nrrd headers, one key per line: a newline would corrupt the file
            raise UserError(f"{at}: name must be one line of at most {MAX_NAME_LENGTH} characters (got {name!r:.80})")
        checked["name"] = name
    color = entry.get("color")
    if color is not None:
        if not isinstance(color, (list, tuple)) or len(color) != 3 or \
                not all(_is_number(c) and 0.0 <= c <= 1.0 for c in color):
            raise UserError(f"{at}: color must be 3 numbers from 0 to 1 (red, green, blue), got {color!r:.80}")
        checked["color"] = [float(c) for c in color]
    if entry.get("terminology") is not None:
        checked["terminology"] = check_terminology(entry["terminology"], at)
    return checked


def check_labels(entries, where: str, strict_keys: bool = False) -> list:
    """Check a label list ``[{value, name, color, terminology}]`` (background excluded): values whole numbers in
    1..255, names non-empty one-line strings, colours 3 numbers in [0, 1], terminology (optional) a Slicer
    terminology entry string, no value or name twice. Returns checked copies (only the keys given). ``strict_keys``:
    refuse other keys (a typo such as "colour" would otherwise be ignored)."""
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{where} must be a non-empty list of {{\"value\", \"name\", \"color\"}} entries "
                        f"(got {_kind(entries) if entries != [] else 'an empty list'})")
    checked = [_check_label(entry, f"{where} entry {index + 1}", strict_keys) for index, entry in enumerate(entries)]
    for key in ("value", "name"):
        seen = [entry[key] for entry in checked if key in entry]
        twice = sorted({v for v in seen if seen.count(v) > 1}, key=str)
        if twice:
            raise UserError(f"{where}: {key} {twice[0]!r} is given more than once")
    return checked


def _check_preprocessing(pre, field) -> None:
    if not isinstance(pre, dict):
        raise UserError(f"{field('preprocessing')} must be an object (got {_kind(pre)})")
    spacing = pre.get("spacing")
    # an empty or null spacing (or null entries) keeps the input's own spacing, see sslseg.preprocessing
    if spacing not in (None, []) and (not isinstance(spacing, list) or len(spacing) != 3 or
                                      not all(s is None or (_is_number(s) and s > 0) for s in spacing)):
        raise UserError(f"{field('preprocessing.spacing')} must be 3 positive numbers in mm (got {spacing!r:.80})")
    normalization = pre.get("normalization", "zscore")
    if normalization not in NORMALIZATIONS:
        raise UserError(f"{field('preprocessing.normalization')}: unknown normalisation {normalization!r:.40} "
                        f"(known: {', '.join(NORMALIZATIONS)})")
    window = pre.get("intensity_range")
    if window is not None and (not isinstance(window, list) or len(window) != 2 or
                               not all(_is_number(v) for v in window) or window[0] >= window[1]):
        raise UserError(f"{field('preprocessing.intensity_range')} must be [low, high] numbers with low < high "
                        f"(got {window!r:.80})")


def _check_network(network, field) -> None:
    if not isinstance(network, dict):
        raise UserError(f"{field('network')} must be an object describing the architecture (got {_kind(network)})")
    if not isinstance(network.get("config"), dict):
        raise UserError(f"{field('network.config')} must be an object (got {_kind(network.get('config'))})")
    for key in ("family", "name"):
        if key in network and not isinstance(network[key], str):
            raise UserError(f"{field('network.' + key)} must be a string (got {_kind(network[key])})")


def _check_postprocessing(postprocessing, labels, field) -> None:
    """Optional (models from before it have none): ``largest_component`` lists some of the model's label values."""
    if postprocessing is None:
        return
    if not isinstance(postprocessing, dict):
        raise UserError(f"{field('postprocessing')} must be an object or null (got {_kind(postprocessing)})")
    values = postprocessing.get("largest_component") or []
    known = {label["value"] for label in labels}
    if not isinstance(values, list) or not all(_is_int(v) and v in known for v in values):
        raise UserError(f"{field('postprocessing.largest_component')} must list label values of the model "
                        f"({sorted(known)}) (got {values!r:.60})")


def check_model_meta(meta, where: str) -> dict:
    """Check a model.json (parsed) field by field; ``where`` names the model in messages. Returns ``meta``. Every
    problem is one UserError line naming the field, so a garbled file never becomes a traceback later."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"{where} is not an sslseg model (model.json format {found!r:.40}, expected {FORMAT})")
    for key in REQUIRED_KEYS:
        if key not in meta:
            raise UserError(f"{where}: model.json lacks {key!r}")

    def field(name):
        return f"{where}: model.json field {name!r}"

    _check_network(meta["network"], field)
    channels = meta["in_channels"]
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise UserError(f"{field('in_channels')} must be a whole number from 1 to {MAX_CHANNELS} "
                        f"(got {channels!r:.40})")
    check_labels(meta["labels"], field("labels"))
    patch = meta["patch_size"]
    if not isinstance(patch, list) or len(patch) != 3 or not all(_is_int(p) for p in patch):
        raise UserError(f"{field('patch_size')} must be 3 whole numbers (z, y, x) (got {patch!r:.80})")
    validation.patch_size(field("patch_size"), patch)
    _check_preprocessing(meta["preprocessing"], field)
    names = meta.get("channel_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise UserError(f"{field('channel_names')} must be a list of strings (got {names!r:.80})")
    for key in ("backbone", "recipe", "training", "validation", "versions"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise UserError(f"{field(key)} must be an object or null (got {_kind(meta[key])})")
    _check_postprocessing(meta.get("postprocessing"), meta["labels"], field)
    dice = (meta.get("validation") or {}).get("mean_dice")
    if dice is not None and not _is_number(dice):
        raise UserError(f"{field('validation.mean_dice')} must be a number or null (got {dice!r:.40})")
    return meta


# --- reading -------------------------------------------------------------------------------------------------

def _own_file(path: str, where: str, cap: int) -> None:
    """A model folder's member: a regular file of its own (a symbolic link could point anywhere) under ``cap``."""
    name = os.path.basename(path)
    if os.path.islink(path):
        raise UserError(f"{where}: {name} is a symbolic link; a model folder must hold its own files")
    if not os.path.isfile(path):
        raise UserError(f"{where}: the file {name} is missing" if not os.path.lexists(path) else
                        f"{where}: {name} is not a regular file")
    if os.path.getsize(path) > cap:
        raise UserError(f"{where}: {name} is larger than the {cap:,} bytes a model file may have")


def _read_folder(path: str, with_weights: bool):
    json_path = os.path.join(path, MODEL_JSON)
    if not os.path.lexists(json_path):
        raise UserError(f"{path} is not a model folder (no {MODEL_JSON})")
    _own_file(json_path, path, MAX_META_BYTES)
    with open(json_path, "rb") as stream:
        raw = stream.read(MAX_META_BYTES + 1)  # bounded even if the file grew since the size check
    if len(raw) > MAX_META_BYTES:
        raise UserError(f"{path}: {MODEL_JSON} is larger than the {MAX_META_BYTES:,} bytes a model file may have")
    meta = check_model_meta(validation.parse_json_bytes(raw, json_path, dict), path)
    if not with_weights:
        return meta, None
    weights_path = os.path.join(path, WEIGHTS)
    _own_file(weights_path, path, MAX_WEIGHTS_BYTES)
    return meta, _load_weights(weights_path, path)


def _packed_members(archive, path: str) -> dict:
    """The archive's two members, refused before anything is read unless they are exactly model.json and model.pt,
    plain files (no symbolic link, no encryption) whose declared sizes are under the caps (zip bombs)."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if sorted(names) != sorted(MEMBER_CAPS):
        shown = ", ".join(repr(n[:60]) for n in names[:6]) + (", ..." if len(names) > 6 else "")
        raise UserError(f"{path} is not a packed sslseg model: it must hold exactly {MODEL_JSON} and {WEIGHTS} "
                        f"(it holds {shown or 'nothing'})")
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"{path}: the member {info.filename} is a symbolic link; refused")
        if info.flag_bits & 0x1:
            raise UserError(f"{path}: the member {info.filename} is encrypted; refused")
        if info.file_size > MEMBER_CAPS[info.filename]:
            raise UserError(f"{path}: the member {info.filename} declares {info.file_size:,} bytes, more than the "
                            f"{MEMBER_CAPS[info.filename]:,} allowed; refused")
    return {info.filename: info for info in infos}


def _copy_member(archive, info, target, path: str) -> None:
    """Copy a member to ``target`` (a path or a binary stream), never more than its cap, whatever the header says."""
    cap = MEMBER_CAPS[info.filename]
    total = 0
    with archive.open(info) as source, (open(target, "wb") if isinstance(target, str) else
                                         contextlib.nullcontext(target)) as sink:
        while chunk := source.read(min(CHUNK, cap + 1 - total)):
            total += len(chunk)
            if total > cap:
                raise UserError(f"{path}: the member {info.filename} holds more than the {cap:,} bytes allowed; "
                                "refused")
            sink.write(chunk)


def _read_packed(path: str, with_weights: bool):
    try:
        with zipfile.ZipFile(path) as archive:
            members = _packed_members(archive, path)
            raw = io.BytesIO()
            _copy_member(archive, members[MODEL_JSON], raw, path)
            meta = check_model_meta(validation.parse_json_bytes(raw.getvalue(), f"{path}: {MODEL_JSON}", dict), path)
            if not with_weights:
                return meta, None
            with tempfile.TemporaryDirectory(prefix="sslseg-model-") as scratch:
                weights = os.path.join(scratch, WEIGHTS)
                _copy_member(archive, members[WEIGHTS], weights, path)
                return meta, _load_weights(weights, path)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise UserError(f"{path} is not a packed sslseg model (damaged or not a zip archive: "
                        f"{validation.one_line(error)[:200]})") from None


def _load_weights(path: str, where: str) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure; torch's own text would advise unsafe loading
        raise UserError(f"{where}: {WEIGHTS} is not a model this program can trust (damaged, or it holds more than "
                        "plain tensors); refused") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{where}: {WEIGHTS} does not hold a plain state_dict of tensors; refused")
    return state


def _read(path, with_weights: bool):
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_folder(path, with_weights)
    if os.path.isfile(path):
        return _read_packed(path, with_weights)
    raise UserError(f"model not found: {path}")


def read_model_meta(path) -> dict:
    """The checked model.json of a model folder or ``.sslmodel`` file, without loading the weights (cheap: for
    listing models and showing their labels)."""
    return _read(path, with_weights=False)[0]


def _build_network(meta: dict, state: dict, where: str):
    """The network of model.json with ``state`` loaded. It is first built on torch's ``meta`` device (no memory) and
    its tensor shapes compared with the weights', so a garbled architecture never allocates before it is refused."""
    import torch

    from sslseg.networks import build_from_spec

    args = (meta["network"], meta["in_channels"], len(meta["labels"]) + 1)
    try:
        with torch.device("meta"):
            probe = build_from_spec(*args)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a garbled spec breaks, it is a bad file
        raise UserError(f"{where}: the network in model.json cannot be built ({type(error).__name__}: "
                        f"{validation.one_line(error)[:200]})") from None
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                  f"{wrong[0]} has shape {list(found[wrong[0]])}, the architecture needs {list(expected[wrong[0]])}")
        raise UserError(f"{where}: the weights do not fit the architecture in model.json ({detail})")
    network = build_from_spec(*args)
    network.load_state_dict(state, strict=True)
    return network.eval()


def load_model(path) -> Model:
    """Load a model folder or a packed ``.sslmodel`` file: model.json is checked field by field, the weights are
    loaded safely (``weights_only=True``) and must fit the network that model.json describes."""
    path = os.fspath(path)
    meta, state = _read(path, with_weights=True)
    return Model(meta=meta, network=_build_network(meta, state, path), path=os.path.abspath(path))


# --- writing -------------------------------------------------------------------------------------------------

def cpu_state_dict(state_dict, copy: bool = False) -> dict:
    """``state_dict`` on the CPU (``copy``: always a copy, e.g. the kept best weights), names that share one tensor
    on the device sharing one tensor there too (torch.save writes a shared tensor once; ResEnc names most weights
    several times, 3.7x its parameters for ResEnc-L, and a copy per name would take that much memory and disk)."""
    copies, result = {}, {}
    for key, tensor in state_dict.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype,
                 tensor.device)
        if where not in copies:
            copies[where] = tensor.detach().to("cpu", copy=copy)
        result[key] = copies[where]
    return result


def save_model(out, meta: dict, state_dict) -> str:
    """Write a model folder at ``out`` atomically: a hidden sibling is filled, then renamed into place; on any
    failure (Ctrl-C and SIGTERM included) the sibling is removed. An existing model folder at ``out`` is replaced;
    any other non-empty folder is refused."""
    out = os.path.abspath(os.fspath(out))
    check_output_folder(out)
    meta = {"format": FORMAT, **meta}
    meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    meta.setdefault("versions", package_versions())
    check_model_meta(meta, out)
    temporary = partial_path(out)
    try:
        with write_errors(out):  # a full disk: one OSError naming --out, not torch's RuntimeError
            os.makedirs(os.path.dirname(out), exist_ok=True)
            os.makedirs(temporary)
            save_torch(cpu_state_dict(state_dict), os.path.join(temporary, WEIGHTS))
            with open(os.path.join(temporary, MODEL_JSON), "w", encoding="utf-8") as stream:
                json.dump(meta, stream, indent=1)
            sync_file(os.path.join(temporary, MODEL_JSON))
            _move_into_place(temporary, out)
    finally:
        remove_quietly(temporary)  # gone already after a successful rename
    return out


def _move_into_place(temporary: str, out: str) -> None:
    """Rename the finished folder to ``out``; a previous model there is swapped out, and put back if the rename
    fails. It is deleted only once a model is in place, so a failure never loses both."""
    old = partial_path(out) if os.path.isdir(out) and os.listdir(out) else None
    try:
        if old:
            os.replace(out, old)
        elif os.path.isdir(out) and not os.path.islink(out):
            os.rmdir(out)  # an empty folder the user made for the model
        os.replace(temporary, out)
    except BaseException:
        if old and os.path.lexists(old) and not os.path.lexists(out):
            os.replace(old, out)
        raise
    finally:
        if old and os.path.lexists(out):
            remove_quietly(old)


def _first_existing(path: str) -> str:
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_output_folder(out, option: str = "--out") -> None:
    """Refuse an output path that would overwrite something that is not a model, or that cannot be created
    (checked before training, so that a finished training never fails at the end)."""
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UserError(f"{option} {out} is a file; give a folder for the model")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MODEL_JSON)):
        raise UserError(f"{option} {out} is a non-empty folder that is not an sslseg model; choose a new or empty "
                        "folder")
    ancestor = _first_existing(os.path.dirname(out))
    if not os.path.isdir(ancestor):
        raise UserError(f"{option} {out} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{option} {out} cannot be created: no permission to write in {ancestor}")


def _is_packed_model(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return MODEL_JSON in archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def check_pack_target(file, model_folder, option: str = "--pack") -> str:
    """Refuse a packed-model path that is a folder, lies inside the model folder, has no existing parent folder,
    or would overwrite a file that is not a packed model (a user's scan, say). Returns the absolute path."""
    file = os.path.abspath(os.fspath(file))
    if os.path.isdir(file):
        raise UserError(f"{option} {file} is a folder; give a file name such as model{PACKED_SUFFIX}")
    real_file, real_folder = os.path.realpath(file), os.path.realpath(os.fspath(model_folder))
    if real_file == real_folder or real_file.startswith(real_folder.rstrip(os.sep) + os.sep):
        raise UserError(f"{option} {file} is inside the model folder {model_folder}; choose a file outside it")
    if not os.path.isdir(os.path.dirname(file)):
        raise UserError(f"{option} {file}: the folder {os.path.dirname(file)} does not exist")
    if os.path.lexists(file) and not _is_packed_model(file):
        raise UserError(f"{option} {file} exists and is not a packed sslseg model; choose a new file name")
    return file


def pack_model(folder, file=None) -> str:
    """Pack a model folder into one ``.sslmodel`` file (a zip of model.json and model.pt); returns its path. The
    file appears only when complete."""
    folder = os.path.abspath(os.fspath(folder))
    file = check_pack_target(file or folder.rstrip(os.sep) + PACKED_SUFFIX, folder)
    load_model(folder)  # refuse to pack something that does not load
    with atomic_file(file, make_parent=False, check=check_zip_file) as partial, \
            zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(os.path.join(folder, MODEL_JSON), MODEL_JSON)
        archive.write(os.path.join(folder, WEIGHTS), WEIGHTS)
    return file


def unpack_model(file, folder) -> str:
    """Unpack a ``.sslmodel`` file into a model folder. The archive is checked like ``load_model`` does (members,
    sizes, model.json fields, safe weights that fit the architecture) before anything is written."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise UserError(f"{file} is not a packed model file")
    meta, state = _read_packed(file, with_weights=True)
    _build_network(meta, state, file)
    return save_model(folder, {k: v for k, v in meta.items() if k != "format"}, state)
