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

import json
import os
import re
from dataclasses import dataclass, field

from sslseg.errors import UserError
from sslseg.imageio import IMAGE_SUFFIXES

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


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


def _parse_labels(raw: dict) -> dict:
    labels = {}
    for key, value in raw.items():
        if isinstance(value, (list, tuple)):
            raise UserError("region-based labels in dataset.json (lists of values) are not supported")
        if str(key).lstrip("-").isdigit():  # MSD: "1": "Anterior"
            labels[int(key)] = str(value)
        else:  # nnU-Net v2: "Anterior": 1
            labels[int(value)] = str(key)
    labels.pop(0, None)
    return dict(sorted(labels.items()))


def _parse_channels(meta: dict) -> list:
    raw = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    return [str(raw[key]) for key in sorted(raw, key=int)]


def _channel_files(images_dir: str, case_id: str, channels: int, file_ending: str) -> list:
    return [os.path.join(images_dir, f"{case_id}_{c:04d}{file_ending}") for c in range(channels)]


def load_dataset(root) -> Dataset:
    """Read a dataset folder (``imagesTr/``, ``labelsTr/``, optional ``dataset.json``)."""
    root = os.path.abspath(os.fspath(root))
    images_dir = os.path.join(root, "imagesTr")
    labels_dir = os.path.join(root, "labelsTr")
    if not os.path.isdir(images_dir) or not os.path.isdir(labels_dir):
        raise UserError(f"{root} is not a dataset folder: it needs imagesTr/ and labelsTr/ (nnU-Net/MSD layout)")
    meta = {}
    meta_path = os.path.join(root, "dataset.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path, encoding="utf-8") as stream:
                meta = json.load(stream)
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"cannot read {meta_path}: {error}") from None
    channel_names = _parse_channels(meta)
    file_ending = meta.get("file_ending", ".nii.gz")
    label_names = _parse_labels(meta.get("labels", {}))

    cases = []
    if meta.get("training"):
        for entry in meta["training"]:
            label = os.path.normpath(os.path.join(root, entry["label"]))
            image = os.path.normpath(os.path.join(root, entry["image"]))
            case_id = _strip_suffix(os.path.basename(label))
            if os.path.isfile(image):
                images = [image]
            else:  # MSD list converted to the nnU-Net v2 per-channel naming
                images = _channel_files(images_dir, case_id, len(channel_names), file_ending)
            cases.append(Case(case_id, images, label))
    else:
        for name in sorted(os.listdir(labels_dir)):
            if not name.lower().endswith(IMAGE_SUFFIXES) or name.startswith("."):
                continue
            case_id = _strip_suffix(name)
            images = _channel_files(images_dir, case_id, len(channel_names), file_ending)
            if not os.path.isfile(images[0]):
                plain = os.path.join(images_dir, name)
                images = [plain] if os.path.isfile(plain) else images
            cases.append(Case(case_id, images, os.path.join(labels_dir, name)))
    if not cases:
        raise UserError(f"no labelled cases found in {root}")
    missing = [path for case in cases for path in [*case.images, case.label] if not os.path.isfile(path)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UserError(f"dataset {root} lists files that do not exist: {', '.join(missing[:3])}{more}")
    return Dataset(cases, label_names, channel_names, meta.get("name", os.path.basename(root)), root)


def dataset_from_lists(images, labels=None, label_names=None, channel_names=None) -> Dataset:
    """A dataset from explicit files: ``images`` is a list of paths, or of lists of paths (one per channel)."""
    labels = list(labels) if labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise UserError(f"{len(images)} images but {len(labels)} labels: give one label file per image")
    cases = []
    for index, (image, label) in enumerate(zip(images, labels)):
        paths = [os.fspath(image)] if isinstance(image, (str, os.PathLike)) else [os.fspath(p) for p in image]
        case_id = _strip_suffix(os.path.basename(paths[0]))
        case_id = _CHANNEL_SUFFIX.sub(r"\g<case>", case_id) or f"case{index:03d}"
        cases.append(Case(case_id, paths, os.fspath(label) if label is not None else None))
    channels = channel_names or [f"channel{c}" for c in range(len(cases[0].images))] if cases else ["image"]
    return Dataset(cases, dict(label_names or {}), list(channels))
