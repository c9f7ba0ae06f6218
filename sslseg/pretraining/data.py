"""Unlabelled volumes for pretraining: finding them, a pre-flight that skips unusable ones (from the header first:
spacing, dimensions, the voxel count after resampling), preprocessing (resampling to the target spacing, z-score)
into a cache, and patch sampling with the light spatial augmentation of Wald et al. (arXiv:2410.23132: rotation,
scaling, mirroring; no intensity augmentation).

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

from sslseg.atomic import atomic_file, write_json_atomic
from sslseg.errors import UserError
from sslseg.imageio import has_image_suffix, read_sitk
from sslseg.validation import read_json_file

# Pre-flight limits. A volume outside them is skipped with the reason, never silently.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 10.0
MAX_ANISOTROPY = 12.0  # largest / smallest spacing
MIN_AXIS_VOXELS = 8  # after resampling to the target spacing
MIN_VOXELS = 4096
# The most voxels one volume may have after resampling (as the largest patch sslseg.validation accepts): 512^3
# float32 voxels are 512 MiB while preprocessing. A header announcing more is skipped before anything is read.
MAX_RESAMPLED_VOXELS = 512 ** 3

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
        try:
            with open(source, encoding="utf-8") as stream:
                lines = [line.strip() for line in stream]
        except UnicodeDecodeError:
            raise UserError(f"--images: the list file {source} is not UTF-8 text") from None
        paths = [line if os.path.isabs(line) else os.path.join(base, line)
                 for line in lines if line and not line.startswith("#")]
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


def _spacing_problem(spacing):
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        return f"invalid spacing {tuple(spacing)}"
    if min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        return f"extreme spacing {tuple(round(s, 3) for s in spacing)} mm (accepted {MIN_SPACING_MM}-{MAX_SPACING_MM})"
    if max(spacing) / min(spacing) > MAX_ANISOTROPY:
        return f"extreme anisotropy: spacing {tuple(round(s, 3) for s in spacing)} mm"
    return None


def resampled_size(size, spacing, target_spacing) -> list:
    """The grid (x, y, z voxels) that resampling ``size`` voxels of ``spacing`` mm onto ``target_spacing`` gives
    (Python numbers: no overflow whatever the header says)."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(size, spacing, target_spacing)]


def resample_to_spacing(image: sitk.Image, spacing) -> sitk.Image:
    """Linear resampling onto the target spacing (x, y, z) with the same origin and direction."""
    old_spacing = [float(s) for s in image.GetSpacing()[:3]]
    if np.allclose(old_spacing, spacing, rtol=1e-4):
        return image
    new_size = resampled_size(image.GetSize()[:3], old_spacing, spacing)
    return sitk.Resample(image, new_size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         tuple(float(s) for s in spacing), image.GetDirection(), 0.0, sitk.sitkFloat32)


def _header_problem(path: str, spacing):
    """Why an image cannot be used, from its header alone (nothing is read or resampled yet); None if usable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        return f"unreadable ({str(error).strip().splitlines()[-1] if str(error).strip() else 'no header'})"
    if reader.GetNumberOfComponents() > 1 or reader.GetDimension() != 3:
        return "not a single-channel 3D image (split channels/time points into separate files)"
    problem = _spacing_problem(reader.GetSpacing()[:3])
    if problem:
        return problem
    size = resampled_size(reader.GetSize()[:3], reader.GetSpacing()[:3], spacing)
    voxels = math.prod(size)
    if voxels > MAX_RESAMPLED_VOXELS:
        return (f"too large: {voxels:,} voxels ({' x '.join(map(str, size))}) at {tuple(spacing)} mm, more than "
                f"{MAX_RESAMPLED_VOXELS:,}; choose a coarser --spacing or crop the image")
    if min(size) < MIN_AXIS_VOXELS or voxels < MIN_VOXELS:
        return (f"tiny: {tuple(reversed(size))} voxels at {tuple(spacing)} mm "
                f"(needs >= {MIN_AXIS_VOXELS} per axis and >= {MIN_VOXELS} in all)")
    return None


def _cached_volume(path: str, cache_file: str):
    """The volume already preprocessed for this file and spacing, or None (missing or unreadable cache entry)."""
    meta_file = cache_file[:-4] + ".json"
    if not (os.path.isfile(cache_file) and os.path.isfile(meta_file)):
        return None
    try:
        meta = read_json_file(meta_file, expect=dict)
        return Volume(path, cache_file, tuple(int(n) for n in meta["shape"]), float(meta["background"]))
    except (UserError, KeyError, TypeError, ValueError):
        return None  # a damaged entry is rebuilt


def _normalised_voxels(path: str, spacing):
    """Read, resample and z-score one image (its header already checked). Returns ``(array, None)`` (float16,
    (z, y, x)) or ``(None, reason)``."""
    try:
        image = read_sitk(path, require_finite=True)  # NaN/Inf: skipped and reported, in every format
        image = resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), spacing)
        array = sitk.GetArrayFromImage(image).astype(np.float32)
    except UserError as error:
        return None, f"unreadable ({error})"
    except RuntimeError as error:
        return None, f"unreadable voxels ({str(error).strip().splitlines()[-1]})"
    finite = np.isfinite(array)
    if not finite.any():
        return None, "empty (no finite voxel values)"
    array[~finite] = float(np.min(array[finite]))
    std = float(array.std())
    if std < 1e-6 * max(1.0, abs(float(array.mean()))):
        return None, "empty (constant intensity)"
    array = (array - float(array.mean())) / std
    return np.clip(array, -65000, 65000).astype(np.float16), None


def prepare_volume(path: str, spacing, cache_dir: str):
    """Pre-flight and preprocess one image. Returns ``(Volume, None)`` or ``(None, reason)``. The header is checked
    first, so an image that resampling would blow up (a 10 mm scan at 1 mm: 1000x the voxels) is skipped before
    a single voxel is read."""
    if not os.path.isfile(path):
        return None, "unreadable (file not found)"
    cache_file = os.path.join(cache_dir, _cache_key(path, spacing) + ".npy")
    cached = _cached_volume(path, cache_file)
    if cached is not None:
        return cached, None
    problem = _header_problem(path, spacing)
    if problem:
        return None, problem
    array, problem = _normalised_voxels(path, spacing)
    if problem:
        return None, problem
    background = float(array.min())
    # atomic: a crash never leaves a truncated cache file that a later run would trust
    with atomic_file(cache_file) as partial, open(partial, "wb") as stream:
        np.save(stream, array)
    write_json_atomic({"path": os.path.abspath(path), "shape": list(array.shape), "background": background},
                      cache_file[:-4] + ".json")
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
