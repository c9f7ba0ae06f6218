"""Unlabelled volumes for pretraining: finding them, a pre-flight that skips unusable ones, preprocessing
(resampling to the target spacing, z-score) into a cache, and patch sampling with the paper's light spatial
augmentation.

Batches are a pure function of ``(seed, rank, step)``: every step draws from its own seeded generator. That makes
``--resume`` continue exactly (no data-loader state to save), keeps DataLoader workers independent, and gives each
DDP rank different batches from its own shard.

Example::

    paths = list_images("/data/unlabelled")
    volumes, skipped = preflight(paths, spacing=(1, 1, 1), cache_dir="/tmp/cache")
    patch = sample_patch(volumes[0].load(), (64, 64, 64), np.random.default_rng(0))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from sslseg.errors import UserError
from sslseg.imageio import has_image_suffix, read_sitk

# Pre-flight limits. A volume outside them is skipped with the reason, never silently.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 10.0
MAX_ANISOTROPY = 12.0  # largest / smallest spacing
MIN_AXIS_VOXELS = 8  # after resampling to the target spacing
MIN_VOXELS = 4096

# Augmentation of the paper (nnssl defaults): no intensity augmentation.
ROTATION_PROBABILITY = 0.2
ROTATION_DEGREES = 30.0
SCALE_PROBABILITY = 0.2
SCALE_RANGE = (0.7, 1.4)
MIRROR_PROBABILITY = 0.5


def list_images(source) -> list:
    """Image files under a folder (recursively, sorted), or the paths in a list file (one per line, ``#`` comments,
    relative paths relative to the list file)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        found = []
        for root, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, name) for name in files if has_image_suffix(name))
        if not found:
            raise UserError(f"no images (.nii.gz, .nii, .nrrd, .mha, .mhd) found under {source}")
        return sorted(found)
    if os.path.isfile(source):
        if has_image_suffix(source):
            return [os.path.abspath(source)]
        base = os.path.dirname(os.path.abspath(source))
        paths = []
        with open(source, encoding="utf-8") as stream:
            for line in stream:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(line if os.path.isabs(line) else os.path.join(base, line))
        if not paths:
            raise UserError(f"the list file {source} names no images")
        return paths
    raise UserError(f"--images: {source} is neither a folder nor a list file")


@dataclass
class Volume:
    """A preprocessed volume in the cache: float16 z-scored voxels on the target spacing, array order (z, y, x)."""

    path: str  # the original file (never modified)
    cache_file: str
    shape: tuple
    background: float  # the z-scored minimum, used for padding

    def load(self) -> np.ndarray:
        return np.load(self.cache_file, mmap_mode="r")

    def to_dict(self) -> dict:
        return {"path": self.path, "cache_file": self.cache_file, "shape": list(self.shape),
                "background": self.background}


def _cache_key(path: str, spacing) -> str:
    stat = os.stat(path)
    text = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, [float(s) for s in spacing]])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _spacing_problem(image: sitk.Image):
    spacing = image.GetSpacing()[:3]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        return f"invalid spacing {tuple(spacing)}"
    if min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        return f"extreme spacing {tuple(round(s, 3) for s in spacing)} mm (accepted {MIN_SPACING_MM}-{MAX_SPACING_MM})"
    if max(spacing) / min(spacing) > MAX_ANISOTROPY:
        return f"extreme anisotropy: spacing {tuple(round(s, 3) for s in spacing)} mm"
    return None


def resample_to_spacing(image: sitk.Image, spacing) -> sitk.Image:
    """Linear resampling onto the target spacing (x, y, z) with the same origin and direction."""
    old_spacing = np.asarray(image.GetSpacing()[:3], float)
    new_spacing = np.asarray(spacing, float)
    if np.allclose(old_spacing, new_spacing, rtol=1e-4):
        return image
    old_size = np.asarray(image.GetSize()[:3], float)
    new_size = [max(1, int(round(v))) for v in old_size * old_spacing / new_spacing]
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         tuple(new_spacing), image.GetDirection(), 0.0, sitk.sitkFloat32)


def prepare_volume(path: str, spacing, cache_dir: str):
    """Pre-flight and preprocess one image. Returns ``(Volume, None)`` or ``(None, reason)``."""
    cache_file = os.path.join(cache_dir, _cache_key(path, spacing) + ".npy")
    meta_file = cache_file[:-4] + ".json"
    if os.path.isfile(cache_file) and os.path.isfile(meta_file):
        with open(meta_file, encoding="utf-8") as stream:
            meta = json.load(stream)
        return Volume(path, cache_file, tuple(meta["shape"]), meta["background"]), None
    try:
        image = read_sitk(path)
    except UserError as error:
        return None, f"unreadable ({error})"
    if image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() != 3:
        return None, "not a single-channel 3D image (split channels/time points into separate files)"
    problem = _spacing_problem(image)
    if problem:
        return None, problem
    try:
        image = resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), spacing)
        array = sitk.GetArrayFromImage(image).astype(np.float32)
    except RuntimeError as error:
        return None, f"unreadable voxels ({str(error).strip().splitlines()[-1]})"
    finite = np.isfinite(array)
    if not finite.any():
        return None, "empty (no finite voxel values)"
    array[~finite] = float(np.min(array[finite]))
    if min(array.shape) < MIN_AXIS_VOXELS or array.size < MIN_VOXELS:
        return None, (f"tiny: {tuple(array.shape)} voxels at {tuple(spacing)} mm "
                      f"(needs >= {MIN_AXIS_VOXELS} per axis and >= {MIN_VOXELS} in all)")
    std = float(array.std())
    if std < 1e-6 * max(1.0, abs(float(array.mean()))):
        return None, "empty (constant intensity)"
    array = (array - float(array.mean())) / std
    array = np.clip(array, -65000, 65000).astype(np.float16)
    os.makedirs(cache_dir, exist_ok=True)
    # atomic: a crash never leaves a truncated cache file that a later run would trust
    partial = f"{cache_file}.partial-{os.getpid()}.npy"
    np.save(partial, array)
    os.replace(partial, cache_file)
    background = float(array.min())
    partial_meta = f"{meta_file}.partial-{os.getpid()}"
    with open(partial_meta, "w", encoding="utf-8") as stream:
        json.dump({"path": os.path.abspath(path), "shape": list(array.shape), "background": background}, stream)
    os.replace(partial_meta, meta_file)
    return Volume(path, cache_file, tuple(array.shape), background), None


def preflight(paths, spacing, cache_dir, log=None, workers: int = 0):
    """Prepare every image (in ``workers`` processes when > 1); returns ``(volumes, skipped)`` with
    ``skipped = [(path, reason)]``, both in the order of ``paths``."""
    paths = list(paths)
    if workers > 1 and len(paths) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(workers, len(paths))) as pool:
            results = list(pool.map(prepare_volume, paths, [spacing] * len(paths), [cache_dir] * len(paths),
                                    chunksize=4))
    else:
        results = [prepare_volume(path, spacing, cache_dir) for path in paths]
    volumes, skipped = [], []
    for path, (volume, reason) in zip(paths, results):
        if volume is None:
            skipped.append((path, reason))
            if log:
                log(f"skipped {path}: {reason}")
        else:
            volumes.append(volume)
    return volumes, skipped


# --- patches ---------------------------------------------------------------------------------------------------


def crop_with_padding(array: np.ndarray, start, size, fill: float) -> np.ndarray:
    """``array[start:start+size]`` per axis; parts outside the array are filled with ``fill``."""
    out = np.full(tuple(size), fill, dtype=np.float32)
    source, target = [], []
    for a, (s, n, dim) in enumerate(zip(start, size, array.shape)):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - s, hi - s))
    out[tuple(target)] = array[tuple(source)]
    return out


def random_start(shape, size, rng) -> list:
    """A crop start so that the crop lies inside the volume where it fits, centred (padded) where it does not."""
    start = []
    for dim, n in zip(shape, size):
        if dim >= n:
            start.append(int(rng.integers(0, dim - n + 1)))
        else:
            start.append(-int(rng.integers(0, n - dim + 1)))
    return start


def augmentation_parameters(rng) -> dict:
    """The paper's spatial augmentation for one sample: rotation (p 0.2), isotropic scale (p 0.2), mirroring."""
    rotate = rng.random() < ROTATION_PROBABILITY
    scale = rng.random() < SCALE_PROBABILITY
    angles = rng.uniform(-1, 1, size=3) * math.radians(ROTATION_DEGREES) if rotate else np.zeros(3)
    factor = float(rng.uniform(*SCALE_RANGE)) if scale else 1.0
    mirror = [bool(m) for m in rng.random(3) < MIRROR_PROBABILITY]
    return {"angles": [float(a) for a in angles], "scale": factor, "mirror": mirror}


def sample_patch(array: np.ndarray, patch, rng, background: float = None, augment: bool = True) -> np.ndarray:
    """One patch (float32, shape ``patch``) from a volume, with spatial augmentation when ``augment``."""
    patch = [int(p) for p in patch]
    fill = float(np.min(array)) if background is None else background
    params = augmentation_parameters(rng) if augment else {"angles": [0, 0, 0], "scale": 1.0, "mirror": [False] * 3}
    spatial = any(params["angles"]) or params["scale"] != 1.0
    if not spatial:
        out = crop_with_padding(array, random_start(array.shape, patch, rng), patch, fill)
    else:
        # A larger region around a random centre, then rotate/scale about its centre onto the patch grid (MONAI).
        import torch
        from monai.transforms import Affine
        from monai.transforms.utils import create_rotate

        # the smallest box that holds the rotated, scaled patch (either orientation of the rotation, to be safe)
        rotation = np.abs(np.asarray(create_rotate(3, params["angles"]))[:3, :3])
        reach = np.maximum(rotation @ np.asarray(patch, float), rotation.T @ np.asarray(patch, float))
        region = [int(math.ceil(r * params["scale"])) + 2 for r in reach]
        centre = [int(rng.integers(p // 2, d - p // 2 + 1)) if d > p else d // 2 for d, p in zip(array.shape, patch)]
        start = [c - r // 2 for c, r in zip(centre, region)]
        block = crop_with_padding(array, start, region, fill)
        # MONAI's scale_params scale the sampling grid: > 1 samples a larger region, i.e. zooms out
        affine = Affine(rotate_params=params["angles"], scale_params=[params["scale"]] * 3, spatial_size=patch,
                        mode="bilinear", padding_mode="border", image_only=True)
        out = affine(torch.from_numpy(block)[None])
        out = np.asarray(out.detach().cpu().numpy()[0] if hasattr(out, "detach") else out[0], dtype=np.float32)
    axes = tuple(a for a, m in enumerate(params["mirror"]) if m)
    if axes:
        out = np.flip(out, axes)
    return np.ascontiguousarray(out, dtype=np.float32)


def shard(items, rank: int, world_size: int) -> list:
    """This rank's share of ``items`` (every rank gets a disjoint subset)."""
    return list(items)[rank::world_size]
