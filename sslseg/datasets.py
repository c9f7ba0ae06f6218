"""Datasets in the nnU-Net / Medical Segmentation Decathlon layout, or given as explicit file lists.

A dataset folder holds ``imagesTr/``, ``labelsTr/`` and ``dataset.json``. Both dialects are read:

- nnU-Net v2: ``"labels": {"background": 0, "Anterior": 1}``, ``"channel_names": {"0": "MRI"}``, images named
  ``<case>_0000.nii.gz`` (one file per channel, ``_0001`` ...), labels ``<case>.nii.gz``;
- MSD: ``"labels": {"0": "background", "1": "Anterior"}``, ``"modality": {"0": "MRI"}``, and a ``"training"`` list of
  ``{"image": ..., "label": ...}`` (one file per case, 4D when there are several channels).

Example::

    dataset = load_dataset("../shared/data/Task04_Hippocampus")
    dataset.label_names        # {1: "Anterior", 2: "Posterior"}
    dataset.cases[0].images    # ["/.../imagesTr/hippocampus_006.nii.gz"]
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from sslseg.errors import UserError
from sslseg.imageio import IMAGE_SUFFIXES, has_image_suffix
from sslseg.validation import int_in_range, read_json_file

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_INDEX = re.compile(r"^-?\d+$")
MAX_LABEL_VALUE = 255  # label maps are stored as uint8


@dataclass
class Case:
    case_id: str
    images: list  # one path per channel
    label: str | None = None


@dataclass
class Dataset:
    cases: list
    label_names: dict  # value -> name, background (0) excluded
    channel_names: list = field(default_factory=lambda: ["image"])
    name: str = ""
    root: str | None = None

    @property
    def num_classes(self) -> int:
        """Classes including background, assuming label values 0..max."""
        return max(self.label_names, default=0) + 1

    @property
    def modality(self) -> str:
        """"CT" when the first channel is named CT, otherwise "MRI"-like (per-case z-score)."""
        return "CT" if self.channel_names and self.channel_names[0].strip().upper() == "CT" else "MR"


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _some(names, limit: int = 3) -> str:
    """The first few of ``names`` for a one-line message."""
    names = list(names)
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more


# --- dataset.json ----------------------------------------------------------------------------------------------

def _label_name(name, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: a label name must be non-empty text (got {name!r})")
    return name


def _parse_labels(raw, where: str = "dataset.json") -> dict:
    """``"labels"`` in either dialect -> {value: name} without background. Values are whole numbers in 0..255,
    each given once."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f'{where}: "labels" must be an object such as {{"background": 0, "liver": 1}}, '
                        f"not {type(raw).__name__}")
    labels = {}
    for key, value in raw.items():
        if isinstance(value, (list, dict)):
            raise UserError(f'{where}: "labels" entry {key!r}: region-based labels (lists of values) are not '
                            "supported")
        if _INDEX.match(key):  # MSD: "1": "Anterior"
            number, name = key, _label_name(value, f'{where}: "labels" entry "{key}"')
        else:  # nnU-Net v2: "Anterior": 1
            number, name = value, _label_name(key, f'{where}: "labels"')
        number = int_in_range(f'{where}: "labels" value of {name!r}', number, 0, MAX_LABEL_VALUE)
        if number in labels:
            raise UserError(f'{where}: "labels" gives the value {number} twice ({labels[number]!r} and {name!r}); '
                            "each label needs its own value")
        labels[number] = name
    labels.pop(0, None)
    return dict(sorted(labels.items()))


def _parse_channels(meta: dict, where: str = "dataset.json") -> list:
    """``"channel_names"`` (nnU-Net v2) or ``"modality"`` (MSD): {"0": name, "1": name, ...} -> [names]."""
    key = next((k for k in ("channel_names", "modality") if k in meta), None)
    if key is None:
        return ["image"]
    raw = meta[key]
    if not isinstance(raw, dict) or not raw:
        raise UserError(f'{where}: "{key}" must be an object that names each channel by its index, such as '
                        f'{{"0": "CT"}} (got {raw!r})')
    named = [k for k in raw if not re.fullmatch(r"\d+", k)]
    if named:
        raise UserError(f'{where}: "{key}" must be keyed by channel index ("0", "1", ...), not by name '
                        f'({named[0]!r}); write e.g. {{"0": {named[0]!r}}}')
    indices = sorted(int(k) for k in raw)
    if indices != list(range(len(raw))):
        raise UserError(f'{where}: "{key}" must number the channels 0, 1, 2, ... each once (got {sorted(raw)})')
    names = [raw[k] for k in sorted(raw, key=int)]
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise UserError(f'{where}: "{key}" entry "{index}" must be a channel name such as "CT" (got {name!r})')
    return names


def _text_field(meta: dict, key: str, default: str, where: str) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise UserError(f'{where}: "{key}" must be text (got {value!r})')
    return value


def _file_ending(meta: dict, where: str) -> str:
    ending = _text_field(meta, "file_ending", ".nii.gz", where)
    if ending.lower() not in IMAGE_SUFFIXES:
        raise UserError(f'{where}: "file_ending" must be one of {", ".join(IMAGE_SUFFIXES)} (got {ending!r})')
    return ending


def _training_entries(meta: dict, where: str) -> list:
    """The MSD ``"training"`` list as [(image, label)] relative paths; [] when there is none."""
    training = meta.get("training")
    if training is None:
        return []
    if not isinstance(training, list):
        raise UserError(f'{where}: "training" must be a list of {{"image": ..., "label": ...}} entries, '
                        f"not {type(training).__name__}")
    entries = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict):
            raise UserError(f'{where}: "training" entry {index} must be an object with "image" and "label" '
                            f"(got {entry!r:.60})")
        for key in ("image", "label"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise UserError(f'{where}: "training" entry {index} needs an "{key}" file path '
                                f"(got {entry.get(key)!r:.60})")
        entries.append((entry["image"], entry["label"]))
    return entries


def _read_meta(root: str):
    """(dataset.json as a dict, its name for messages), or ({}, None) when the folder has none."""
    path = os.path.join(root, "dataset.json")
    if not os.path.lexists(path):
        return {}, None
    return read_json_file(path, "dataset.json", expect=dict), f"dataset.json ({path})"


# --- cases -----------------------------------------------------------------------------------------------------

def _channel_files(images_dir: str, case_id: str, channels: int, file_ending: str) -> list:
    return [os.path.join(images_dir, f"{case_id}_{c:04d}{file_ending}") for c in range(channels)]


def _listed_cases(entries, root, images_dir, channels: int, file_ending: str) -> list:
    cases = []
    for image, label in entries:
        label = os.path.normpath(os.path.join(root, label))
        image = os.path.normpath(os.path.join(root, image))
        case_id = _strip_suffix(os.path.basename(label))
        if os.path.isfile(image):
            images = [image]
        else:  # MSD list converted to the nnU-Net v2 per-channel naming
            images = _channel_files(images_dir, case_id, channels, file_ending)
        cases.append(Case(case_id, images, label))
    return cases


def _folder_cases(images_dir, labels_dir, channels: int, file_ending: str) -> list:
    """One case per label file in labelsTr: images ``<case>_0000<ending>``... or one ``<case>`` file."""
    cases = []
    for name in sorted(os.listdir(labels_dir)):
        if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        if not has_image_suffix(name):
            raise UserError(f"{os.path.join(labels_dir, name)} is a Slicer segmentation file (.seg.nrrd); labelsTr "
                            "needs label maps (export the segmentation as a labelmap .nii.gz)")
        case_id = _strip_suffix(name)
        images = _channel_files(images_dir, case_id, channels, file_ending)
        if not os.path.isfile(images[0]):
            plain = os.path.join(images_dir, name)
            images = [plain] if os.path.isfile(plain) else images
        cases.append(Case(case_id, images, os.path.join(labels_dir, name)))
    return cases


def _check_every_image_used(images_dir: str, cases, channels: int, file_ending: str, has_meta: bool) -> None:
    """nnU-Net refuses an imagesTr image without a label and channel files that the dataset does not declare;
    so do we, rather than training on part of the data."""
    used = {os.path.normcase(os.path.abspath(path)) for case in cases for path in case.images}
    unused = [name for name in sorted(os.listdir(images_dir))
              if not name.startswith(".") and has_image_suffix(name)
              and os.path.normcase(os.path.abspath(os.path.join(images_dir, name))) not in used]
    if not unused:
        return
    ids = {case.case_id for case in cases}
    extra = [n for n in unused if (m := _CHANNEL_SUFFIX.match(_strip_suffix(n))) and m["case"] in ids]
    if extra:
        declared = (f'dataset.json declares {channels} channel(s) in "channel_names"' if has_meta else
                    'without dataset.json each case has one channel; add a dataset.json whose "channel_names" '
                    'names every channel ({"0": "T1", "1": "T2"})')
        raise UserError(f"{images_dir} holds channel files that no case uses: {_some(extra)}; {declared}")
    raise UserError(f"{images_dir} holds image(s) without a label in labelsTr: {_some(unused)}; add "
                    f"labelsTr/<case>{file_ending} for each (images are named <case>_0000{file_ending}) or move "
                    "them out of imagesTr")


def _check_cases(root: str, cases) -> None:
    if not cases:
        raise UserError(f"no labelled cases found in {root}")
    missing = [path for case in cases for path in [*case.images, case.label] if not os.path.isfile(path)]
    if missing:
        raise UserError(f"dataset {root} lists files that do not exist: {_some(missing)}")
    seen = {}
    for case in cases:
        key = case.case_id.casefold()  # one model output per case name, also on case-insensitive file systems
        if key in seen:
            raise UserError(f"dataset {root}: two cases are both named {case.case_id} ({seen[key]} and "
                            f"{case.label}); give each case its own name")
        seen[key] = case.label


def load_dataset(root) -> Dataset:
    """Read a dataset folder (``imagesTr/``, ``labelsTr/``, optional ``dataset.json``). Every field of
    ``dataset.json`` that is used is checked (types, label values, channel numbering) with a one-line error."""
    root = os.path.abspath(os.fspath(root))
    images_dir = os.path.join(root, "imagesTr")
    labels_dir = os.path.join(root, "labelsTr")
    if not os.path.isdir(images_dir) or not os.path.isdir(labels_dir):
        raise UserError(f"{root} is not a dataset folder: it needs imagesTr/ and labelsTr/ (nnU-Net/MSD layout)")
    meta, where = _read_meta(root)
    where = where or "dataset.json"
    channel_names = _parse_channels(meta, where)
    file_ending = _file_ending(meta, where)
    label_names = _parse_labels(meta.get("labels"), where)
    name = _text_field(meta, "name", os.path.basename(root), where)
    entries = _training_entries(meta, where)
    if entries:
        cases = _listed_cases(entries, root, images_dir, len(channel_names), file_ending)
    else:
        cases = _folder_cases(images_dir, labels_dir, len(channel_names), file_ending)
        if cases:
            _check_every_image_used(images_dir, cases, len(channel_names), file_ending, bool(meta))
    _check_cases(root, cases)
    return Dataset(cases, label_names, channel_names, name, root)


def _check_label_names(label_names) -> dict:
    """``label_names`` given to the API: {value: name} with values 0..255 (0, background, is dropped) and text
    names."""
    if label_names is None:
        return {}
    if not isinstance(label_names, dict):
        raise UserError(f"label_names must be a dict {{value: name}} (got {type(label_names).__name__})")
    checked = {}
    for value, name in label_names.items():
        number = int_in_range(f"label value for {name!r}", value, 0, MAX_LABEL_VALUE)
        if number in checked:
            raise UserError(f"label value {number} is given twice ({checked[number]!r} and {name!r})")
        checked[number] = _label_name(name, f"label {number}")
    checked.pop(0, None)
    return dict(sorted(checked.items()))


def dataset_from_lists(images, labels=None, label_names=None, channel_names=None) -> Dataset:
    """A dataset from explicit files: ``images`` is a list of paths, or of lists of paths (one per channel)."""
    if isinstance(images, (str, os.PathLike)) or not images:
        raise UserError("give a list of image files (one entry per case)")
    labels = list(labels) if labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise UserError(f"{len(images)} images but {len(labels)} labels: give one label file per image")
    cases = []
    for index, (image, label) in enumerate(zip(images, labels)):
        paths = [os.fspath(image)] if isinstance(image, (str, os.PathLike)) else [os.fspath(p) for p in image]
        if not paths or len(paths) != len(cases[0].images if cases else paths):
            raise UserError(f"case {index}: {len(paths)} image file(s), but every case needs the same number of "
                            "channel files as the first")
        case_id = _strip_suffix(os.path.basename(paths[0]))
        case_id = _CHANNEL_SUFFIX.sub(r"\g<case>", case_id) or f"case{index:03d}"
        cases.append(Case(case_id, paths, os.fspath(label) if label is not None else None))
    seen = {}
    for case in cases:
        if case.case_id.casefold() in seen:
            raise UserError(f"two images are both named {case.case_id} ({seen[case.case_id.casefold()]} and "
                            f"{case.images[0]}); rename one")
        seen[case.case_id.casefold()] = case.images[0]
    channels = channel_names or [f"channel{c}" for c in range(len(cases[0].images))]
    return Dataset(cases, _check_label_names(label_names), list(channels))
