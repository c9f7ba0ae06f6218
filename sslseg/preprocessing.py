"""Preprocessing shared by fine-tuning and inference: reading and checking cases, resampling to the model's spacing,
intensity normalisation, patch-size choice and padding.

Images stay in their own voxel frame (no reorientation): resampling changes only the spacing and keeps the
direction and the physical extent, so that a prediction maps back exactly onto the input's grid.

Normalisation (recorded in model.json, applied again by predict):

- ``zscore`` (MRI and anything that is not CT): per case and channel, ``(x - mean) / std`` over all voxels;
- ``ct``: clip to ``intensity_range`` (default [-1000, 1000] HU) and scale linearly to [-1, 1].

Example::

    pre = Preprocessor(spacing=[1.0, 1.0, 1.0], normalization="zscore", in_channels=1)
    image, label, geometry = read_case(case, in_channels=1, label_values={1, 2})
    array, grid = pre.image(image, geometry)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from sslseg.errors import UserError
from sslseg.imageio import Geometry, read_image, resample_to_grid
from sslseg.validation import float_in_range, one_of, positive_float, positive_int

DEFAULT_CT_RANGE = [-1000.0, 1000.0]
MAX_CHANNELS = 64
NORMALIZATIONS = ("zscore", "ct")
# Resampling to a model's spacing can multiply the voxel count (a 10 mm scan at 1 mm: x1000). Above this many
# voxels (4 GiB per float32 channel) the grid is refused before anything is allocated.
MAX_RESAMPLED_VOXELS = 1 << 30


def _checked_spacing(spacing, name: str):
    """None / [] (keep the input's spacing) or three entries, each None or a positive number of millimetres."""
    if isinstance(spacing, (str, bytes, dict)) or (spacing is not None and not hasattr(spacing, "__len__")):
        raise UserError(f"{name} must be three sizes in mm [x, y, z] (got {spacing!r:.60})")
    if spacing is None or len(spacing) == 0:
        return spacing
    if len(spacing) != 3:
        raise UserError(f"{name} must be three sizes in mm [x, y, z] (got {spacing!r:.60})")
    return [None if v is None else positive_float(name, v) for v in spacing]


# --- reading and checking ------------------------------------------------------------------------------------

def read_channels(paths, case_id: str, in_channels: int | None = None):
    """Read a case's image files (one per channel, or one multi-channel file); returns ``(array[c,z,y,x] float32,
    Geometry)``. Refuses unreadable files, channels on different grids, a wrong channel count and NaN/inf."""
    arrays, geometry = [], None
    for path in paths:
        array, grid = read_image(path)
        if array.ndim == 3:
            array = array[None]
        elif array.ndim == 4 and len(paths) == 1 and grid.shape == tuple(array.shape[1:]):
            pass  # a multi-component file
        elif array.ndim == 4 and len(paths) == 1:
            # a 4D NIfTI (MSD layout, channels last in ITK's order): SimpleITK gives array[c, z, y, x]
            pass
        else:
            raise UserError(f"case {case_id}: {path} is not a 3D image (array shape {array.shape})")
        if geometry is None:
            geometry = Geometry(tuple(array.shape[1:]), grid.spacing, grid.origin, grid.direction)
        elif not geometry.same_grid(Geometry(tuple(array.shape[1:]), grid.spacing, grid.origin, grid.direction)):
            raise UserError(f"case {case_id}: the channel images are not on the same voxel grid ({path})")
        arrays.append(array)
    image = np.concatenate(arrays, axis=0).astype(np.float32, copy=False)
    if in_channels is not None and image.shape[0] != in_channels:
        raise UserError(f"case {case_id}: {image.shape[0]} image channel(s) but the model expects {in_channels} "
                        f"(files: {', '.join(map(str, paths))})")
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise UserError(f"case {case_id}: the image contains {bad} NaN or infinite voxel(s) ({paths[0]})")
    return image, geometry


def read_label(path, case_id: str, geometry: Geometry, label_values=None) -> np.ndarray:
    """Read and check a label file against its image: same grid, whole numbers, only known values, not empty."""
    array, grid = read_image(path)
    if array.ndim != 3:
        raise UserError(f"case {case_id}: label {path} is not a 3D image (array shape {array.shape})")
    if tuple(array.shape) != tuple(geometry.shape):
        raise UserError(f"case {case_id}: label shape {tuple(reversed(array.shape))} does not match the image's "
                        f"{tuple(reversed(geometry.shape))} (x, y, z) ({path})")
    if not geometry.same_grid(grid, tolerance=1e-3):
        raise UserError(f"case {case_id}: the label's geometry (spacing/origin/direction) differs from the image's "
                        f"({path}: spacing {grid.spacing}, origin {grid.origin}; image: spacing {geometry.spacing}, "
                        f"origin {geometry.origin})")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise UserError(f"case {case_id}: label {path} holds non-integer values; a label map needs whole numbers")
    values = set(int(v) for v in np.unique(array))
    if label_values is not None:
        unknown = sorted(values - set(label_values) - {0})
        if unknown:
            raise UserError(f"case {case_id}: label {path} holds value(s) {unknown} that the dataset's labels do not "
                            f"list ({sorted(label_values)}); add them to dataset.json or fix the label file")
    if values <= {0}:
        raise UserError(f"case {case_id}: label {path} is empty (background only); remove the case or annotate it")
    if max(values) > 255 or min(values) < 0:
        raise UserError(f"case {case_id}: label values must be in 0..255 (found {min(values)}..{max(values)})")
    return array.astype(np.uint8)


# --- the preprocessor ----------------------------------------------------------------------------------------

@dataclass
class Preprocessor:
    spacing: list  # [x, y, z] mm; None entries or an empty list keep the input's spacing
    normalization: str = "zscore"
    in_channels: int = 1
    intensity_range: list = field(default_factory=lambda: list(DEFAULT_CT_RANGE))

    def __post_init__(self):
        # the values come from model.json files too: check them all, one line each
        where = "preprocessing"
        self.normalization = one_of(f"{where} normalization", self.normalization, NORMALIZATIONS)
        self.in_channels = positive_int(f"{where} in_channels", self.in_channels, MAX_CHANNELS)
        self.spacing = _checked_spacing(self.spacing, f"{where} spacing")
        if isinstance(self.intensity_range, (str, bytes)) or not hasattr(self.intensity_range, "__len__") \
                or len(self.intensity_range) != 2:
            raise UserError(f"{where} intensity_range must be two numbers [low, high] (got {self.intensity_range!r})")
        low, high = (float_in_range(f"{where} intensity_range", v) for v in self.intensity_range)
        if not low < high:
            raise UserError(f"{where} intensity_range must have low < high (got {[low, high]})")
        self.intensity_range = [low, high]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessor":
        if not isinstance(data, dict):
            raise UserError(f"preprocessing must be an object with spacing, normalization, ... (got {data!r:.60})")
        return cls(spacing=data.get("spacing"), normalization=data.get("normalization", "zscore"),
                   in_channels=data.get("in_channels", 1),
                   intensity_range=data.get("intensity_range") or list(DEFAULT_CT_RANGE))

    def target_geometry(self, geometry: Geometry) -> Geometry:
        return resampled_geometry(geometry, self.spacing)

    def image(self, image: np.ndarray, geometry: Geometry):
        """``image[c,z,y,x]`` on ``geometry`` -> (normalised float32 array on the model's spacing, its Geometry)."""
        target = self.target_geometry(geometry)
        if not target.same_grid(geometry, tolerance=1e-6):
            image = np.stack([resample_to_grid(channel, geometry, target, is_label=False) for channel in image])
        return self.normalize(image), target

    def label(self, label: np.ndarray, geometry: Geometry) -> np.ndarray:
        target = self.target_geometry(geometry)
        if target.same_grid(geometry, tolerance=1e-6):
            return label
        return resample_to_grid(label, geometry, target, is_label=True).astype(np.uint8)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        image = image.astype(np.float32, copy=True)
        if self.normalization == "ct":
            low, high = self.intensity_range
            np.clip(image, low, high, out=image)
            image = (image - low) / max(high - low, 1e-6) * 2.0 - 1.0
            return image.astype(np.float32)
        for channel in image:
            mean, std = float(channel.mean()), float(channel.std())
            channel -= mean
            channel /= max(std, 1e-8)
        return image


def resampled_geometry(geometry: Geometry, spacing) -> Geometry:
    """The grid covering the same physical box as ``geometry`` at ``spacing`` ([x, y, z]); unchanged when the
    spacing already matches within 1 %. Refuses a grid of more than ``MAX_RESAMPLED_VOXELS`` voxels."""
    if not spacing:
        return geometry
    old = np.asarray(geometry.spacing, float)
    if not (np.isfinite(old).all() and (old > 0).all()):
        raise UserError(f"the image's voxel spacing {tuple(geometry.spacing)} mm is not positive")
    new = np.asarray([o if s is None else float(s) for s, o in zip(spacing, old)])
    if np.allclose(old, new, rtol=0.01):
        return geometry
    size_xyz = np.asarray(list(reversed(geometry.shape)), float)
    new_size = [max(1, int(round(v))) for v in size_xyz * old / new]
    if math.prod(new_size) > MAX_RESAMPLED_VOXELS:  # Python integers: no overflow
        raise UserError(f"resampling the {' x '.join(map(str, size_xyz.astype(int)))} image from "
                        f"{tuple(round(v, 4) for v in old)} mm to {tuple(round(v, 4) for v in new)} mm would give "
                        f"{math.prod(new_size):,} voxels (at most {MAX_RESAMPLED_VOXELS:,}); crop the image first")
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    # keep the outer box: the first voxel's corner stays where it was
    corner = np.asarray(geometry.origin) - direction @ (old / 2)
    origin = corner + direction @ (new / 2)
    return Geometry(tuple(int(s) for s in reversed(new_size)), tuple(float(v) for v in new),
                    tuple(float(v) for v in origin), tuple(geometry.direction))


def resample_probabilities(probabilities: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Class probabilities ``[k, z, y, x]`` from ``source`` to ``target`` (linear); outside the source the
    background (class 0) gets probability 1."""
    if source.same_grid(target, tolerance=1e-6):
        return probabilities
    out = np.empty((probabilities.shape[0], *target.shape), np.float32)
    reference = target.reference_image()
    for k, channel in enumerate(probabilities):
        image = source.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32)))
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 1.0 if k == 0 else 0.0,
                                  sitk.sitkFloat32)
        out[k] = sitk.GetArrayFromImage(resampled)
    return out


# Voxels of one target slab when resampling with torch: bounds the sampling grid (3 doubles per voxel, and its
# temporaries) and the slab's probabilities (k floats per voxel) to about 200 MB, whatever the volume's size.
SLAB_VOXELS = 1 << 21


def index_transform(source: Geometry, target: Geometry) -> np.ndarray:
    """4x4 matrix mapping a voxel index (x, y, z, 1) of ``target`` to the continuous voxel index of the same physical
    point in ``source``: any direction, spacing and origin on either side."""
    return np.linalg.inv(source.index_to_physical()) @ target.index_to_physical()


def _slab_grid(matrix, source_shape, z0: int, z1: int, target_shape, device):
    """For the target slices ``z0:z1``: grid_sample coordinates ``[1, dz, y, x, 3]`` (align_corners=False) and the
    mask of voxels outside the source's extent (continuous index outside [-0.5, size - 0.5), ITK's rule)."""
    import torch

    m = torch.as_tensor(matrix, dtype=torch.float64, device=device)
    zs = torch.arange(z0, z1, dtype=torch.float64, device=device)[:, None, None, None]
    ys = torch.arange(target_shape[1], dtype=torch.float64, device=device)[None, :, None, None]
    xs = torch.arange(target_shape[2], dtype=torch.float64, device=device)[None, None, :, None]
    index = zs * m[:3, 2] + ys * m[:3, 1] + xs * m[:3, 0] + m[:3, 3]  # [dz, y, x, (x, y, z)] source index
    size = torch.as_tensor([source_shape[2], source_shape[1], source_shape[0]], dtype=torch.float64, device=device)
    outside = ((index < -0.5) | (index >= size - 0.5)).any(dim=-1)
    grid = ((2.0 * index + 1.0) / size - 1.0).to(torch.float32)
    return grid[None], outside


def resampled_slabs(probabilities, source: Geometry, target: Geometry, slab_voxels: int = SLAB_VOXELS):
    """Class probabilities ``[k, z, y, x]`` (a torch tensor on any device) from ``source`` onto ``target``, as
    ``(z0, z1, slab[k, z1 - z0, Y, X])`` on the tensor's device. Linear interpolation with the edge voxels repeated
    up to half a voxel beyond the source and the background (class 0) certain outside it: what
    ``resample_probabilities`` computes with SimpleITK, here on the GPU when the tensor is there."""
    import torch

    depth, height, width = (int(s) for s in target.shape)
    step = max(1, slab_voxels // max(1, height * width))
    same = source.same_grid(target, tolerance=1e-6)
    matrix = None if same else index_transform(source, target)
    volume = None if same else probabilities[None].float()
    for z0 in range(0, depth, step):
        z1 = min(depth, z0 + step)
        if same:
            yield z0, z1, probabilities[:, z0:z1]
            continue
        grid, outside = _slab_grid(matrix, source.shape, z0, z1, target.shape, probabilities.device)
        slab = torch.nn.functional.grid_sample(volume, grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)[0]
        background = torch.zeros(slab.shape[0], dtype=slab.dtype, device=slab.device)
        background[0] = 1.0
        slab[:, outside] = background[:, None]
        yield z0, z1, slab


def resample_probabilities_torch(probabilities, source: Geometry, target: Geometry):
    """``resample_probabilities`` with torch on the tensor's device: ``[k, Z, Y, X]`` float32 on ``target``."""
    import torch

    return torch.cat([slab for _, _, slab in resampled_slabs(probabilities, source, target)], dim=1)


# --- patches -------------------------------------------------------------------------------------------------

def pad_to(array: np.ndarray, shape, value=0.0):
    """Pad the last three axes symmetrically up to ``shape``; returns (padded, slices of the original)."""
    spatial = array.shape[-3:]
    pads = [max(0, int(s) - d) for s, d in zip(shape, spatial)]
    if not any(pads):
        return array, tuple(slice(0, d) for d in spatial)
    widths = [(p // 2, p - p // 2) for p in pads]
    padded = np.pad(array, [(0, 0)] * (array.ndim - 3) + widths, mode="constant", constant_values=value)
    return padded, tuple(slice(w[0], w[0] + d) for w, d in zip(widths, spatial))
