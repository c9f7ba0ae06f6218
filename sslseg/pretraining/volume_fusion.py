"""Volume Fusion (Wang et al., "MIS-FM: 3D Medical Image Segmentation using Foundation Models Pretrained on a
Large-Scale Unannotated Dataset", arXiv:2306.16925; code: github.com/openmedlab/MIS-FM and the PyMIC library): fuse
two sub-volumes with a discrete coefficient per voxel, alpha = k/K, x = alpha * foreground + (1 - alpha) *
background, and train the network to segment k (K + 1 classes).

Two variants:

- ``pymic`` (default; PyMIC 2024+, github.com/HiLab-git/PyMIC, ``Crop4VolumeFusion`` + ``VolumeFusion``): both
  crops come from the same scan, each randomly rescaled (0.7-1.5 per axis) and flipped, mapped to [0, 1] between
  random percentiles (0.1-2 and 98-99.9), gamma-corrected (0.7-1.5) and, with probability 0.25, both inverted; a
  grid of blocks (block size drawn per sample) where 70 % of the blocks get k in 1..K.
- ``paper`` (arXiv 2306.16925, 2023): the foreground is a crop of another scan; 10-40 random, possibly
  overlapping boxes of 8x8x8 up to 40x80x80 voxels (capped at the patch), each with k in 1..K.

Everything draws from the numpy ``Generator`` passed in, so a sample is reproducible from its seed.

Example::

    image, label, parts = fuse_pymic(volume, (64, 64, 64), np.random.default_rng(0), return_parts=True)
    assert np.allclose(image, label / 4 * parts["foreground"] + (1 - label / 4) * parts["background"])
"""

from __future__ import annotations

import numpy as np

from sslseg.pretraining.data import crop_with_padding, random_start

K = 4  # fusion levels; K + 1 classes
NUM_CLASSES = K + 1
# one byte per voxel: 8x less shared memory between loader processes than int64 (the loss widens it on the device)
LABEL_DTYPE = np.uint8
RESCALE_RANGE = (0.7, 1.5)
LOW_PERCENTILE = (0.1, 2.0)
HIGH_PERCENTILE = (98.0, 99.9)
GAMMA_RANGE = (0.7, 1.5)
INVERSION_PROBABILITY = 0.25
FOREGROUND_BLOCK_RATIO = 0.7
BLOCK_SIZE_MIN = (8, 8, 8)
BLOCK_SIZE_MAX = (32, 32, 32)
PAPER_BOXES = (10, 40)
PAPER_BOX_MIN = (8, 8, 8)
PAPER_BOX_MAX = (40, 80, 80)
VARIANTS = ("pymic", "paper")


def _resize(array: np.ndarray, size) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if tuple(array.shape) == tuple(size):
        return array.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)[0, 0].numpy()


def random_resized_crop(volume: np.ndarray, patch, rng, background: float) -> np.ndarray:
    """A crop of ``patch * s`` voxels (s ~ U(0.7, 1.5) per axis, at most the volume) resized to ``patch``."""
    scale = rng.uniform(*RESCALE_RANGE, size=3)
    size = [max(1, min(int(p * s), d)) for p, s, d in zip(patch, scale, volume.shape)]
    crop = crop_with_padding(volume, random_start(volume.shape, size, rng), size, background)
    return _resize(crop, patch)


def random_flip(array: np.ndarray, rng) -> np.ndarray:
    axes = tuple(a for a in range(3) if rng.random() < 0.5)
    return np.flip(array, axes) if axes else array


def contrast_to_unit(array: np.ndarray, low: float, high: float) -> np.ndarray:
    lo, hi = np.percentile(array, [low, high])
    if hi <= lo:
        return np.zeros_like(array, dtype=np.float32)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def intensity_augment(array: np.ndarray, rng) -> np.ndarray:
    array = contrast_to_unit(array, rng.uniform(*LOW_PERCENTILE), rng.uniform(*HIGH_PERCENTILE))
    return (array ** rng.uniform(*GAMMA_RANGE)).astype(np.float32)


def block_grid_label(patch, rng) -> np.ndarray:
    """k per voxel: a grid of equal blocks (random size and offset), 70 % of them with k in 1..K, the rest 0."""
    patch = [int(p) for p in patch]
    block = [int(rng.integers(min(lo, max(1, p // 2)), min(hi, max(1, p // 2)) + 1))
             for lo, hi, p in zip(BLOCK_SIZE_MIN, BLOCK_SIZE_MAX, patch)]
    offset = [int(rng.integers(0, p % b + 1)) for p, b in zip(patch, block)]
    counts = [p // b for p, b in zip(patch, block)]
    cells = int(np.prod(counts))
    foreground = np.zeros(cells, dtype=bool)
    foreground[: int(cells * FOREGROUND_BLOCK_RATIO)] = True
    rng.shuffle(foreground)
    levels = np.where(foreground, rng.integers(1, K + 1, size=cells), 0).reshape(counts)
    label = np.zeros(patch, dtype=LABEL_DTYPE)
    expanded = levels.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
    label[offset[0]: offset[0] + expanded.shape[0], offset[1]: offset[1] + expanded.shape[1],
          offset[2]: offset[2] + expanded.shape[2]] = expanded
    return label


def random_boxes_label(patch, rng) -> np.ndarray:
    """k per voxel from 10-40 random, possibly overlapping boxes (later boxes overwrite earlier ones)."""
    label = np.zeros([int(p) for p in patch], dtype=LABEL_DTYPE)
    for _ in range(int(rng.integers(PAPER_BOXES[0], PAPER_BOXES[1] + 1))):
        size = [int(rng.integers(min(lo, p), min(hi, p) + 1)) for lo, hi, p in zip(PAPER_BOX_MIN, PAPER_BOX_MAX, patch)]
        start = [int(rng.integers(0, p - s + 1)) for p, s in zip(patch, size)]
        label[tuple(slice(s, s + n) for s, n in zip(start, size))] = int(rng.integers(1, K + 1))
    return label


def fuse(foreground: np.ndarray, background: np.ndarray, label: np.ndarray) -> np.ndarray:
    alpha = label.astype(np.float32) / K
    return (alpha * foreground + (1.0 - alpha) * background).astype(np.float32)


def fuse_pymic(volume: np.ndarray, patch, rng, background: float = None, return_parts: bool = False):
    """The default variant: two augmented crops of one scan fused on a block grid. Returns ``(image, label)``
    (and the two parts when ``return_parts``)."""
    fill = float(np.min(volume)) if background is None else background
    first = random_flip(random_resized_crop(volume, patch, rng, fill), rng)
    second = random_flip(random_resized_crop(volume, patch, rng, fill), rng)
    first, second = intensity_augment(first, rng), intensity_augment(second, rng)
    if rng.random() < INVERSION_PROBABILITY:
        first, second = 1.0 - first, 1.0 - second
    label = block_grid_label(patch, rng)
    image = fuse(first, second, label)
    if return_parts:
        return image, label, {"foreground": first, "background": second}
    return image, label


def fuse_paper(volume: np.ndarray, other: np.ndarray, patch, rng, backgrounds=(None, None),
               return_parts: bool = False):
    """The 2023 variant: ``other`` (another scan) gives the foreground, fused in random boxes."""
    fills = [float(np.min(v)) if b is None else b for v, b in zip((volume, other), backgrounds)]
    parts = []
    for array, fill in zip((volume, other), fills):
        crop = random_flip(crop_with_padding(array, random_start(array.shape, patch, rng), patch, fill), rng)
        parts.append(contrast_to_unit(crop, 0.5, 99.5))
    bg, fg = parts
    label = random_boxes_label(patch, rng)
    image = fuse(fg, bg, label)
    if return_parts:
        return image, label, {"foreground": fg, "background": bg}
    return image, label
