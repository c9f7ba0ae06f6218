"""Training data for fine-tuning: reading and checking every case before any work, the label table, the
train/validation split, the in-memory preprocessed cases and the patch sampler with its augmentation.

Every case is read, checked and preprocessed once into memory (resampled to the plan's spacing, normalised). Batches
follow nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021): the last third of each batch is centred on foreground, the rest is random;
rotation and scaling resample a region cropped large enough to hold the turned patch (no empty corners labelled
background), in-plane only for thick-slice data; then mirroring and intensity changes (MONAI). The batch of step
``s`` depends on the seed and ``s`` alone (``PatchSampler.batch_for_step``), so that loader processes can build it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sslseg.errors import UserError
from sslseg.finetuning.planning import AXES, thick_axis
from sslseg.preprocessing import Preprocessor, pad_to, read_channels, read_label

FOREGROUND_SAMPLES = 20000  # voxel indices kept per class and case for foreground-centred crops
# Image value beyond a case's end: 0 after normalisation, the value prediction pads with (sslseg.inference), so that
# borders look alike in training and prediction (nnU-Net pads with 0 too).
PAD_VALUE = 0.0


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
    spacing: tuple = (1.0, 1.0, 1.0)  # [z, y, x] mm of the arrays


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
    """[{value, name, color, terminology (optional)}] from explicit label info, else dataset.json names, else the
    values found."""
    from sslseg.model_folder import default_color

    if label_info:
        labels = []
        for index, entry in enumerate(label_info):
            if int(entry["value"]) == 0:
                continue
            label = {"value": int(entry["value"]), "name": str(entry.get("name") or f"Segment_{entry['value']}"),
                     "color": list(entry.get("color") or default_color(index))}
            if entry.get("terminology"):
                label["terminology"] = str(entry["terminology"])  # a Slicer terminology entry, carried as given
            labels.append(label)
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


# Below this many labelled cases every case trains by default: holding 1 in 5 out cost more than the held-out
# Dice gave back (folders of 10 cases, 15 minutes on the CPU: hippocampus 0.832 -> 0.841, thick-slice 0.774 -> 0.796
# test Dice when the 2 validation cases trained too; docs/benchmarks.md), and a Dice over 1-3 cases ranks weights by
# noise. From this many on, 1 in 5 (at most 10) is held out, validated and the best weights kept.
MIN_CASES_FOR_VALIDATION = 20


def default_val_cases(count: int) -> int:
    """The validation hold-out when none is asked for: none below ``MIN_CASES_FOR_VALIDATION`` cases, else 1 in 5
    (at most 10)."""
    return 0 if count < MIN_CASES_FOR_VALIDATION else min(count // 5, 10)


def split_cases(case_ids, val_cases, seed, val_case_ids=None):
    """(train ids, validation ids): the given validation ids, else a seeded random hold-out of ``val_cases``
    (None: ``default_val_cases``)."""
    if val_case_ids is not None:
        missing = sorted(set(val_case_ids) - set(case_ids))
        if missing:
            raise UserError(f"validation case(s) {missing} are not in the data")
        val = [c for c in case_ids if c in set(val_case_ids)]
        train = [c for c in case_ids if c not in set(val_case_ids)]
    else:
        n = len(case_ids)
        if val_cases is None:
            val_cases = default_val_cases(n)
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
    array, grid = preprocessor.image(raw.image, raw.geometry)
    classes = table[preprocessor.label(raw.label, raw.geometry)]
    array, _ = pad_to(array, patch, PAD_VALUE)
    classes, _ = pad_to(classes, patch, 0)
    foreground = []
    flat = classes.ravel()
    for k in range(1, num_classes):
        where = np.flatnonzero(flat == k)
        if len(where) > FOREGROUND_SAMPLES:
            where = np.sort(rng.choice(where, FOREGROUND_SAMPLES, replace=False))
        foreground.append(where)
    return PreparedCase(raw.case_id, np.ascontiguousarray(array), np.ascontiguousarray(classes), foreground,
                        tuple(float(s) for s in reversed(grid.spacing)))


# --- patches -------------------------------------------------------------------------------------------------

class PatchSampler:
    """Batches of augmented patches, nnU-Net style; ``batch_for_step(step)`` depends on ``seed`` and ``step``
    only (a numpy Generator and MONAI random states seeded from both), so the same batch comes out in any process
    and order. Picklable: cases, settings and MONAI transforms, no torch state.

    ``rotation_axis``: the array axis to rotate about for thick-slice data ("auto": the cases' thick axis, see
    ``sslseg.finetuning.planning.thick_axis``; None: rotation in 3D)."""

    def __init__(self, cases, patch, batch_size, oversampling, augment: dict, seed: int, rotation_axis="auto"):
        self.cases = cases
        self.patch = [int(p) for p in patch]
        self.batch_size = int(batch_size)
        self.oversampling = float(oversampling)
        self.augment = dict(augment or {})
        self.seed = int(seed)
        if rotation_axis == "auto":
            rotation_axis = thick_axis(cases[0].spacing) if cases else None
        self.rotation_axis = rotation_axis
        self.intensity = intensity_augmentation(self.augment)
        self.step = 0

    def next_batch(self):
        """The batch of the next step (an internal counter)."""
        batch = self.batch_for_step(self.step)
        self.step += 1
        return batch

    def batch_for_step(self, step: int):
        """(images [b, c, z, y, x] float32, labels [b, 1, z, y, x] int64) of ``step``, as plain torch tensors. The
        last ``round(b * oversampling)`` samples are centred on foreground (nnU-Net's rule: with b = 2 and 0.33,
        exactly one), the others anywhere."""
        import torch

        rng = np.random.default_rng([self.seed, int(step)])
        if self.intensity is not None:
            self.intensity.set_random_state(seed=int(rng.integers(2 ** 31)))
        random_samples = round(self.batch_size * (1.0 - self.oversampling))
        images, labels = [], []
        for index in range(self.batch_size):
            image, label = self.sample(rng, force_foreground=index >= random_samples)
            images.append(image)
            labels.append(label)
        return torch.stack(images), torch.stack(labels)

    def sample(self, rng, force_foreground: bool):
        """One augmented (image [c, z, y, x], label [1, z, y, x]) pair."""
        import torch

        case = self.cases[int(rng.integers(len(self.cases)))]
        start = self.patch_start(case, force_foreground, rng)
        matrix = self.spatial_matrix(rng)
        if matrix is None:
            image, label = crop(case.image, start, self.patch), crop(case.label, start, self.patch, 0)
        else:
            image, label = turned_patch(case, start, self.patch, matrix)
        for axis in range(3):
            # drawn for every axis (the same batches as before); a one-slice axis is not flipped: a no-op that
            # numpy leaves with a negative stride, which torch refuses
            if rng.random() < float(self.augment.get("mirror_p", 0.0)) and self.patch[axis] > 1:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if self.intensity is not None:
            image = plain_tensor(self.intensity(image)).float()
        return image, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))[None]

    def patch_start(self, case: PreparedCase, force_foreground: bool, rng) -> list:
        """The patch's first voxel: around a voxel of a class present in the case (chosen uniformly) when forced
        onto foreground, else anywhere; the patch stays within the (padded) case."""
        shape = case.label.shape
        present = [k for k, where in enumerate(case.foreground) if len(where)]
        if force_foreground and present:
            where = case.foreground[present[int(rng.integers(len(present)))]]
            centre = np.unravel_index(where[int(rng.integers(len(where)))], shape)
            start = [int(c) - p // 2 + int(rng.integers(-(p // 4), p // 4 + 1)) for c, p in zip(centre, self.patch)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch)]
        return [min(max(0, s), dim - p) for s, dim, p in zip(start, shape, self.patch)]

    def spatial_matrix(self, rng):
        """The 3x3 map from patch voxel offsets to case voxel offsets (rotation, then scaling), or None when this
        sample is neither rotated nor scaled. Thick-slice data turn and scale in-plane only."""
        augment = self.augment
        rotate = rng.random() < float(augment.get("rotate_p", 0.0))
        scale = rng.random() < float(augment.get("scale_p", 0.0))
        if not (rotate or scale):
            return None
        limit = math.radians(float(augment.get("rotate_deg", 0.0)))
        axes = range(3) if self.rotation_axis is None else [self.rotation_axis]
        matrix = np.eye(3)
        for axis in axes:
            angle = rng.uniform(-limit, limit) if rotate else 0.0
            matrix = matrix @ rotation(axis, angle)
        low, high = augment.get("scale", [1.0, 1.0])
        factor = rng.uniform(float(low), float(high)) if scale else 1.0
        return matrix @ np.diag([1.0 if axis == self.rotation_axis else factor for axis in range(3)])


def rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` (radians) in the plane of the two array axes other than ``axis``."""
    a, b = [d for d in range(3) if d != axis]
    matrix = np.eye(3)
    matrix[a, a] = matrix[b, b] = math.cos(angle)
    matrix[a, b], matrix[b, a] = -math.sin(angle), math.sin(angle)
    return matrix


def crop(array: np.ndarray, start, size, value=PAD_VALUE) -> np.ndarray:
    """``array[..., start:start + size]`` over the last three axes; where that region leaves the array, ``value``.
    A view when it lies inside."""
    spatial = array.shape[-3:]
    low = [max(0, s) for s in start]
    high = [min(d, s + n) for s, n, d in zip(start, size, spatial)]
    inside = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    if low == list(start) and all(hi - s == n for hi, s, n in zip(high, start, size)):
        return array[(Ellipsis, *inside)]
    out = np.full(array.shape[:-3] + tuple(int(n) for n in size), value, dtype=array.dtype)
    target = tuple(slice(lo - s, hi - s) for lo, hi, s in zip(low, high, start))
    out[(Ellipsis, *target)] = array[(Ellipsis, *inside)]
    return out


def turned_patch(case: PreparedCase, start, patch, matrix):
    """The patch at ``start`` rotated/scaled by ``matrix`` about its centre: a region that holds the turned patch
    is cropped from the case (``PAD_VALUE`` and background beyond its end), resampled (MONAI ``Affine``: linear
    for the image, nearest for the label) and its centre kept."""
    import torch
    from monai.transforms import Affine

    patch = np.asarray(patch)
    reach = np.abs(matrix) @ (patch - 1)  # the turned patch's extent, in case voxels
    region = np.ceil(reach).astype(int) + 3  # + a voxel each side for interpolation
    region += (region - patch) % 2  # same parity as the patch: the centres align on whole voxels
    origin = [int(s) - int(r - p) // 2 for s, r, p in zip(start, region, patch)]
    affine = np.eye(4)
    affine[:3, :3] = matrix
    image = torch.from_numpy(np.ascontiguousarray(crop(case.image, origin, region)))
    label = torch.from_numpy(crop(case.label, origin, region, 0)[None].astype(np.float32))
    turned = [plain_tensor(Affine(affine=affine, spatial_size=patch.tolist(), mode=mode, padding_mode="border",
                                  image_only=True)(array)).numpy()
              for array, mode in ((image, "bilinear"), (label, "nearest"))]
    return turned[0], turned[1][0].round().astype(np.uint8)


def rotation_text(axis) -> str:
    """How patches are turned (model.json)."""
    return "3D" if axis is None else f"in-plane, about the {AXES[axis]} axis (thick slices)"


def plain_tensor(value):
    """A torch.Tensor without MONAI's metadata: a MetaTensor batch would route every operation of the network's
    forward and backward pass through MetaTensor.__torch_function__ (measured: 2-3x slower training steps on CPU)."""
    import torch

    value = value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(value)


def intensity_augmentation(augment: dict):
    """MONAI intensity transforms for an image tensor [c, z, y, x] (nnU-Net's multiplicative brightness, Gaussian
    noise and gamma families), or None; seeded per batch by ``PatchSampler.batch_for_step``."""
    p_intensity = float((augment or {}).get("intensity_p", 0.0))
    if p_intensity <= 0:
        return None
    from monai.transforms import Compose, RandAdjustContrast, RandGaussianNoise, RandScaleIntensity

    return Compose([RandScaleIntensity(factors=0.25, prob=p_intensity),
                    RandGaussianNoise(prob=p_intensity * 0.7, std=0.1),
                    RandAdjustContrast(prob=p_intensity, gamma=(0.7, 1.5))])
