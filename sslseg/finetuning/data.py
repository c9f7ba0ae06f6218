"""Training data for fine-tuning: reading and checking every case before any work, the label table, the
train/validation split, the in-memory preprocessed cases and the patch sampler with its augmentation.

Every case is read, checked and preprocessed once into memory (resampled to the plan's spacing, normalised); patches
are cropped with nnU-Net's foreground oversampling (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021) and augmented with MONAI transforms (rotation,
scaling, mirroring, intensity) in the training process itself: the cases are small, and extra loader processes cost
more than they give on 2 cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sslseg.errors import UserError
from sslseg.preprocessing import Preprocessor, pad_to, read_channels, read_label

FOREGROUND_SAMPLES = 20000  # voxel indices kept per class and case for foreground-centred crops


@dataclass
class RawCase:
    case_id: str
    image: np.ndarray  # [c, z, y, x] as read
    label: np.ndarray  # [z, y, x] label values
    geometry: object  # sslseg.imageio.Geometry of both


@dataclass
class PreparedCase:
    case_id: str
    image: np.ndarray  # [c, z, y, x] float32, normalised, on the model's spacing, padded to >= patch
    label: np.ndarray  # [z, y, x] uint8 class indices (0..K)
    foreground: list  # per class k=1..K: flat indices (subsampled) of its voxels, possibly empty


# --- reading and checking ------------------------------------------------------------------------------------

def load_training_data(data=None, images=None, labels=None, label_names=None, train_case_ids=None,
                       val_case_ids=None):
    """(dataset, expected channel count or None) from a dataset folder or explicit image/label lists; with
    ``train_case_ids`` only those cases (and ``val_case_ids``) are kept."""
    from sslseg.datasets import dataset_from_lists, load_dataset

    if data is not None and images is not None:
        raise UserError("give either a dataset folder (--data) or --images/--labels, not both")
    if data is not None:
        dataset = load_dataset(data)
        expected_channels = len(dataset.channel_names)
    elif images:
        if not labels:
            raise UserError("--images needs --labels (one label file per image)")
        dataset = dataset_from_lists(images, labels, label_names or {})
        expected_channels = None
    else:
        raise UserError("no training data: give --data DIR or --images ... --labels ...")
    if train_case_ids:
        keep = set(train_case_ids) | set(val_case_ids or [])
        dataset.cases = [c for c in dataset.cases if c.case_id in keep]
    return dataset, expected_channels


def allowed_label_values(dataset, label_info):
    """The label values a case may hold: from explicit label info, else dataset.json; None: any value found."""
    if label_info:
        return {int(e["value"]) for e in label_info} - {0}
    if dataset.label_names:
        return set(dataset.label_names)
    return None


def read_cases(dataset, values, in_channels: int | None) -> list:
    """Read and check every case before any training: returns [RawCase]. ``values``: the allowed label values
    (None: any)."""
    seen = {}
    result = []
    for case in dataset.cases:
        if case.label is None:
            raise UserError(f"case {case.case_id} has no label file")
        if case.case_id in seen:
            raise UserError(f"two cases share the name {case.case_id}: {seen[case.case_id]} and {case.images[0]}")
        seen[case.case_id] = case.images[0]
        image, geometry = read_channels(case.images, case.case_id, in_channels)
        in_channels = image.shape[0] if in_channels is None else in_channels
        label = read_label(case.label, case.case_id, geometry, values)
        result.append(RawCase(case.case_id, image, label, geometry))
    return result


def labels_from(dataset, label_info, case_labels) -> list:
    """[{value, name, color}] from explicit label info, else dataset.json names, else the values found."""
    from sslseg.model_folder import default_color

    if label_info:
        labels = []
        for index, entry in enumerate(label_info):
            if int(entry["value"]) == 0:
                continue
            labels.append({"value": int(entry["value"]), "name": str(entry.get("name") or f"Segment_{entry['value']}"),
                           "color": list(entry.get("color") or default_color(index))})
        return sorted(labels, key=lambda l: l["value"])
    if dataset.label_names:
        return [{"value": int(v), "name": n, "color": default_color(i)}
                for i, (v, n) in enumerate(sorted(dataset.label_names.items()))]
    values = sorted({int(v) for label in case_labels for v in np.unique(label)} - {0})
    return [{"value": v, "name": f"Segment_{v}", "color": default_color(i)} for i, v in enumerate(values)]


def label_table(labels: list) -> np.ndarray:
    """Label value (0..255) -> class index (0..K)."""
    table = np.zeros(256, np.uint8)
    for index, label in enumerate(labels, start=1):
        table[int(label["value"])] = index
    return table


def split_cases(case_ids, val_cases, seed, val_case_ids=None):
    """(train ids, validation ids): the given validation ids, else a seeded random hold-out (1 in 5, at most 10;
    none below 5 cases)."""
    if val_case_ids is not None:
        missing = sorted(set(val_case_ids) - set(case_ids))
        if missing:
            raise UserError(f"validation case(s) {missing} are not in the data")
        val = [c for c in case_ids if c in set(val_case_ids)]
        train = [c for c in case_ids if c not in set(val_case_ids)]
    else:
        n = len(case_ids)
        if val_cases is None:
            val_cases = 0 if n < 5 else min(max(1, n // 5), 10)
        val_cases = int(val_cases)
        if val_cases < 0:
            raise UserError("--val-cases cannot be negative")
        if val_cases and n < val_cases + 1:
            raise UserError(f"too few cases for validation: {n} labelled case(s), {val_cases} held out for validation "
                            f"leaves {n - val_cases} to train on; add cases or lower --val-cases (0 = no validation)")
        order = list(np.random.default_rng(seed).permutation(n))
        val = [case_ids[i] for i in sorted(order[:val_cases])]
        train = [c for c in case_ids if c not in set(val)]
    if not train:
        raise UserError("no cases left to train on")
    return train, val


# --- preprocessing -------------------------------------------------------------------------------------------

def prepare_case(raw: RawCase, preprocessor: Preprocessor, table, patch, num_classes, rng) -> PreparedCase:
    """One case on the plan's grid, normalised, padded to at least the patch, with its foreground voxel lists."""
    array, _ = preprocessor.image(raw.image, raw.geometry)
    classes = table[preprocessor.label(raw.label, raw.geometry)]
    array, _ = pad_to(array, patch, 0.0)
    classes, _ = pad_to(classes, patch, 0)
    foreground = []
    flat = classes.ravel()
    for k in range(1, num_classes):
        where = np.flatnonzero(flat == k)
        if len(where) > FOREGROUND_SAMPLES:
            where = np.sort(rng.choice(where, FOREGROUND_SAMPLES, replace=False))
        foreground.append(where)
    return PreparedCase(raw.case_id, np.ascontiguousarray(array), np.ascontiguousarray(classes), foreground)


# --- patches -------------------------------------------------------------------------------------------------

class PatchSampler:
    """Random patches with foreground oversampling (a fraction of the patches is centred on a voxel of a randomly
    chosen class present in the case, nnU-Net style), augmented with MONAI transforms."""

    def __init__(self, cases, patch, batch_size, oversampling, augment: dict, seed: int):
        self.cases = cases
        self.patch = list(patch)
        self.batch_size = int(batch_size)
        self.oversampling = float(oversampling)
        self.rng = np.random.default_rng(seed)
        self.transform = build_augmentation(augment, seed)

    def _crop(self, case: PreparedCase, force_foreground: bool):
        shape = case.label.shape
        present = [k for k, where in enumerate(case.foreground) if len(where)]
        if force_foreground and present:
            where = case.foreground[present[self.rng.integers(len(present))]]
            centre = np.unravel_index(where[self.rng.integers(len(where))], shape)
            start = [int(c) - p // 2 + int(self.rng.integers(-(p // 4), p // 4 + 1))
                     for c, p in zip(centre, self.patch)]
        else:
            start = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch)]
        start = [min(max(0, s), dim - p) for s, dim, p in zip(start, shape, self.patch)]
        region = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        return case.image[(slice(None), *region)], case.label[region]

    def next_batch(self):
        """(images [b, c, z, y, x] float32, labels [b, 1, z, y, x] int64) as plain torch tensors."""
        import torch

        images, labels = [], []
        for index in range(self.batch_size):
            case = self.cases[self.rng.integers(len(self.cases))]
            # the last sample of a batch is always foreground-centred when oversampling is on (nnU-Net's rule),
            # the others with the given probability
            force = (index == self.batch_size - 1 and self.oversampling > 0) or self.rng.random() < self.oversampling
            image, label = self._crop(case, force)
            sample = {"image": torch.from_numpy(image.copy()),
                      "label": torch.from_numpy(label[None].astype(np.float32))}
            sample = self.transform(sample) if self.transform is not None else sample
            images.append(plain_tensor(sample["image"]).float())
            labels.append(plain_tensor(sample["label"]).round().long())
        return torch.stack(images), torch.stack(labels)


def plain_tensor(value):
    """A torch.Tensor without MONAI's metadata: a MetaTensor batch would route every operation of the network's
    forward and backward pass through MetaTensor.__torch_function__ (measured: 2-3x slower training steps on CPU)."""
    import torch

    value = value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(value)


def build_augmentation(augment: dict, seed: int):
    """MONAI dictionary transforms: rotation and scaling in one affine resampling, mirroring, intensity (nnU-Net's
    augmentation families, with its probabilities by default)."""
    if not augment:
        return None
    from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd)

    keys = ["image", "label"]
    rotate = math.radians(float(augment.get("rotate_deg", 0.0)))
    low, high = augment.get("scale", [1.0, 1.0])
    p_rotate, p_scale = float(augment.get("rotate_p", 0.0)), float(augment.get("scale_p", 0.0))
    p_affine = 1.0 - (1.0 - p_rotate) * (1.0 - p_scale)
    p_intensity = float(augment.get("intensity_p", 0.0))
    transforms = []
    if p_affine > 0:
        transforms.append(RandAffined(keys, prob=p_affine, rotate_range=(rotate,) * 3,
                                      scale_range=((low - 1.0, high - 1.0),) * 3, mode=("bilinear", "nearest"),
                                      padding_mode="zeros"))
    mirror = float(augment.get("mirror_p", 0.0))
    if mirror > 0:
        transforms += [RandFlipd(keys, prob=mirror, spatial_axis=axis) for axis in range(3)]
    if p_intensity > 0:
        transforms += [RandScaleIntensityd("image", factors=0.25, prob=p_intensity),
                       RandGaussianNoised("image", prob=p_intensity * 0.7, std=0.1),
                       RandAdjustContrastd("image", prob=p_intensity, gamma=(0.7, 1.5))]
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose
