"""Reading and writing images with SimpleITK, keeping spacing, origin and direction exactly.

Arrays follow SimpleITK's numpy order: ``array[z, y, x]`` (``array[c, z, y, x]`` for several channels), and the
geometry is in ITK's LPS physical space. The Slicer bridge converts to and from RAS.

Example::

    array, geometry = read_image("case.nii.gz")
    write_image(labels.astype("uint8"), geometry, "case_seg.nrrd")
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from sslseg.errors import UserError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def has_image_suffix(path) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(IMAGE_SUFFIXES) and not name.endswith(".seg.nrrd")


@dataclass
class Geometry:
    """Voxel grid of an image: ``shape`` in numpy order (z, y, x); spacing/origin in (x, y, z) LPS millimetres;
    ``direction`` as the 9 row-major values of the 3x3 matrix whose columns are the axis directions."""

    shape: tuple
    spacing: tuple = (1.0, 1.0, 1.0)
    origin: tuple = (0.0, 0.0, 0.0)
    direction: tuple = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Geometry":
        size = image.GetSize()[:3]
        return cls(
            shape=tuple(int(s) for s in reversed(size)),
            spacing=tuple(float(v) for v in image.GetSpacing()[:3]),
            origin=tuple(float(v) for v in image.GetOrigin()[:3]),
            direction=tuple(float(v) for v in _direction3(image)),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def reference_image(self) -> sitk.Image:
        """An empty image on this grid, e.g. as the reference for resampling."""
        image = sitk.Image([int(s) for s in reversed(self.shape)], sitk.sitkUInt8)
        return self.apply_to(image)

    def index_to_physical(self) -> np.ndarray:
        """4x4 matrix mapping (x, y, z, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = np.asarray(self.direction).reshape(3, 3) @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def same_grid(self, other: "Geometry", tolerance: float = 1e-4) -> bool:
        return (
            tuple(self.shape) == tuple(other.shape)
            and np.allclose(self.spacing, other.spacing, atol=tolerance)
            and np.allclose(self.origin, other.origin, atol=tolerance * max(1.0, *map(abs, self.spacing)))
            and np.allclose(self.direction, other.direction, atol=tolerance)
        )

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(
            shape=tuple(data["shape"]),
            spacing=tuple(data["spacing"]),
            origin=tuple(data["origin"]),
            direction=tuple(data["direction"]),
        )


def _direction3(image: sitk.Image):
    direction = image.GetDirection()
    dimension = image.GetDimension()
    if dimension == 3:
        return direction
    # a 4D image: keep the spatial 3x3 block
    matrix = np.asarray(direction).reshape(dimension, dimension)
    return matrix[:3, :3].ravel()


def _nifti_problem(path: str):
    """Why a NIfTI file is incomplete, or None. ITK reads a truncated .nii/.nii.gz silently as zeros, so the
    header's expected data size is checked against what the (decompressed) file really holds."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(352)
            if len(header) < 348:
                return "the header is incomplete"
            for endian in "<>":
                sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
                if sizeof_hdr in (348, 540):
                    break
            else:
                return "not a NIfTI header"
            if sizeof_hdr == 348:
                dims = struct.unpack(endian + "8h", header[40:56])
                bitpix = struct.unpack(endian + "h", header[72:74])[0]
                offset = int(struct.unpack(endian + "f", header[108:112])[0])
            else:  # NIfTI-2
                header += stream.read(540 - len(header))
                dims = struct.unpack(endian + "8q", header[16:80])
                bitpix = struct.unpack(endian + "h", header[14:16])[0]
                offset = struct.unpack(endian + "q", header[168:176])[0]
            count = 1
            for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
                count *= max(int(d), 1)
            expected = max(offset, sizeof_hdr) + count * bitpix // 8
            received = len(header)
            while True:
                chunk = stream.read(1 << 22)
                if not chunk:
                    break
                received += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        return f"the compressed data is truncated or corrupt ({error})"
    if received < expected:
        return f"expected {expected} bytes of data but the file holds {received}"
    return None


def check_nifti_complete(path) -> None:
    """Raise UserError when a .nii/.nii.gz file holds less data than its header promises (other files: no-op).
    Cheap next to reading the image: it decompresses but allocates no array."""
    path = os.fspath(path)
    if path.lower().endswith((".nii", ".nii.gz")):
        problem = _nifti_problem(path)
        if problem:
            raise UserError(f"cannot read image {path}: the file is truncated or corrupt ({problem})")


def read_sitk(path) -> sitk.Image:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"image file not found: {path}")
    if path.lower().endswith(".seg.nrrd"):
        raise UserError(f"{path} is a Slicer segmentation file (.seg.nrrd), not a plain image; load it in Slicer or "
                        "read it with the slicerio package")
    check_nifti_complete(path)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise UserError(f"cannot read image {path}: the file is unreadable or truncated ({first_line})") from None


def read_image(path, dtype=None):
    """Read an image file; returns ``(array, Geometry)``. Multi-component images give ``array[c, z, y, x]``."""
    image = read_sitk(path)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        raise UserError(f"cannot read voxels of {path}: {error}") from None
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return array, Geometry.from_sitk(image)


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.shape != tuple(geometry.shape):
        raise UserError(f"array shape {array.shape} does not match the geometry's shape {tuple(geometry.shape)}")
    return geometry.apply_to(sitk.GetImageFromArray(array))


def write_image(array: np.ndarray, geometry: Geometry, path, compress: bool = True) -> str:
    """Write ``array`` (z, y, x) on ``geometry`` to ``path`` (format from the suffix). Written atomically: a
    crash never leaves a truncated file at ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    temporary = os.path.join(directory, f".partial-{os.getpid()}-{base}")
    sitk.WriteImage(image_from_array(array, geometry), temporary, compress)
    os.replace(temporary, path)
    return path


def resample_to_grid(array: np.ndarray, source: Geometry, target: Geometry, is_label: bool) -> np.ndarray:
    """Resample ``array`` from ``source`` onto ``target`` (nearest neighbour for labels, linear otherwise)."""
    if source.same_grid(target, tolerance=1e-6):
        return np.asarray(array)
    image = image_from_array(array, source)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    resampled = sitk.Resample(image, target.reference_image(), sitk.Transform(), interpolator, 0.0,
                              image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
