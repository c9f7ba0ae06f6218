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
import re
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from sslseg.atomic import IncompleteWrite, atomic_file
from sslseg.errors import UserError
from sslseg.validation import one_line

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


# NIfTI datatype codes whose voxels are IEEE floats (complex types: pairs of floats), with numpy's item type
_NIFTI_FLOAT_TYPES = {16: "f4", 32: "f4", 64: "f8", 1792: "f8"}


@dataclass
class _NiftiScan:
    problem: str | None = None  # why the file is incomplete, or None
    nonfinite: int = 0  # NaN/Inf voxel values in a float image


def _nifti_header(stream):
    """(sizeof_hdr, endian, dims, datatype, bitpix, vox_offset, header bytes) of a NIfTI-1/2 file, or a str saying
    why it is not one."""
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
        datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
        offset = int(struct.unpack(endian + "f", header[108:112])[0])
    else:  # NIfTI-2
        header += stream.read(540 - len(header))
        datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
        dims = struct.unpack(endian + "8q", header[16:80])
        offset = struct.unpack(endian + "q", header[168:176])[0]
    return sizeof_hdr, endian, dims, datatype, bitpix, offset, header


def _scan_nifti(path: str, count_nonfinite: bool) -> _NiftiScan:
    """Stream through a .nii/.nii.gz once: compare the data size with the header's promise (ITK reads a truncated
    file silently as zeros) and, for float images, count NaN/Inf voxels. The NIfTI reference library that ITK uses
    (nifti1_io.c, ``nifti_read_buffer``) replaces every non-finite float with 0 while reading, so the array that
    SimpleITK returns can no longer show them; only the raw bytes can. Allocates no image-sized array."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    scan = _NiftiScan()
    try:
        with opener(path, "rb") as stream:
            parsed = _nifti_header(stream)
            if isinstance(parsed, str):
                return _NiftiScan(parsed)
            sizeof_hdr, endian, dims, datatype, bitpix, offset, header = parsed
            count = 1
            for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
                count *= max(int(d), 1)
            start = max(offset, sizeof_hdr)
            expected = start + count * max(int(bitpix), 0) // 8
            item = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype]) if count_nonfinite and \
                datatype in _NIFTI_FLOAT_TYPES else None
            received = len(header)
            tail = header[start:expected] if item is not None else b""
            while True:
                chunk = stream.read(1 << 22)
                if item is not None:  # the voxel data in hand, whole items only
                    first, last = max(start - received, 0), max(min(expected - received, len(chunk)), 0)
                    tail += chunk[first:last]
                    usable = len(tail) - len(tail) % item.itemsize
                    scan.nonfinite += int(np.count_nonzero(~np.isfinite(np.frombuffer(tail[:usable], item))))
                    tail = tail[usable:]
                if not chunk:
                    break
                received += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        return _NiftiScan(f"the compressed data is truncated or corrupt ({error})")
    if received < expected:
        return _NiftiScan(f"expected {expected} bytes of data but the file holds {received}")
    return scan


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def check_nifti_complete(path) -> None:
    """Raise UserError when a .nii/.nii.gz file holds less data than its header promises (other files: no-op).
    Cheap next to reading the image: it decompresses but allocates no array."""
    path = os.fspath(path)
    if _is_nifti(path):
        problem = _scan_nifti(path, count_nonfinite=False).problem
        if problem:
            raise UserError(f"cannot read image {path}: the file is truncated or corrupt ({problem})")


def _nonfinite_error(path: str, count: int) -> UserError:
    return UserError(f"image {path} holds {count} NaN or infinite voxel value(s); replace them (e.g. with the "
                     "background intensity) and try again")


def read_sitk(path, require_finite: bool = False) -> sitk.Image:
    """Read an image file with SimpleITK after checking that it is complete. ``require_finite``: refuse a float
    image with NaN/Inf voxels (checked in the raw NIfTI data, since the NIfTI reader turns them into zeros)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"image file not found: {path}")
    if path.lower().endswith(".seg.nrrd"):
        raise UserError(f"{path} is a Slicer segmentation file (.seg.nrrd), not a plain image; load it in Slicer or "
                        "read it with the slicerio package")
    if _is_nifti(path):
        scan = _scan_nifti(path, count_nonfinite=require_finite)
        if scan.problem:
            raise UserError(f"cannot read image {path}: the file is truncated or corrupt ({scan.problem})")
        if scan.nonfinite:
            raise _nonfinite_error(path, scan.nonfinite)
    try:
        return sitk.ReadImage(path)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise UserError(f"cannot read image {path}: the file is unreadable or truncated ({first_line})") from None


def read_image(path, dtype=None):
    """Read an image file; returns ``(array, Geometry)``. Multi-component images give ``array[c, z, y, x]``.
    Refuses images with NaN or infinite voxels: no step of the engine has a meaning for them."""
    image = read_sitk(path, require_finite=True)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as error:
        raise UserError(f"cannot read voxels of {path}: {one_line(error)}") from None
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        nonfinite = int(array.size - np.count_nonzero(np.isfinite(array)))
        if nonfinite:
            raise _nonfinite_error(os.fspath(path), nonfinite)
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


# Formats whose voxels live in a second file named inside the header: an atomic rename of the header alone would
# leave that file under its temporary name.
DETACHED_SUFFIXES = (".nhdr", ".mhd")


def write_image(array: np.ndarray, geometry: Geometry, path, compress: bool = True) -> str:
    """Write ``array`` (z, y, x) on ``geometry`` to ``path`` (format from the suffix). Written atomically: a
    crash never leaves a truncated file at ``path``, nor a temporary one beside it."""
    path = os.fspath(path)
    if path.lower().endswith(DETACHED_SUFFIXES):
        raise UserError(f"cannot write {path}: formats with a separate data file (.nhdr, .mhd) are not written; "
                        "use .nrrd, .mha or .nii.gz")
    image = image_from_array(array, geometry)
    with atomic_file(path, check=lambda partial: check_image_file(partial, image)) as partial:
        sitk.WriteImage(image, partial, compress)
    return path


def readable_image(path) -> bool:
    """Whether ``path`` is a non-empty image file whose header reads (cheap: the voxels are not read)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return True


GZIP_MAGIC = b"\x1f\x8b"
HEADER_SLACK = 1 << 16  # at most this many header bytes before the voxels (NIfTI: 352; NRRD: its text header)


def check_image_file(path, image: sitk.Image) -> None:
    """Raise ``IncompleteWrite`` unless the file SimpleITK wrote at ``path`` is whole: its header reads back with
    ``image``'s size, and every voxel byte is there (for gzip data the length in the gzip trailer, RFC 1952; else
    the file's size). SimpleITK's NIfTI writer does not report a full disk: this is what notices. Cheap: reads the
    header and the last 4 bytes, never the voxels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise IncompleteWrite(f"{path}: the header does not read back") from None
    if tuple(reader.GetSize()) != tuple(image.GetSize()):
        raise IncompleteWrite(f"{path}: the header reads back with size {reader.GetSize()}")
    data = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        head = stream.read(HEADER_SLACK)
        gzipped = head.startswith(GZIP_MAGIC) or b"encoding: gz" in head.split(b"\n\n", 1)[0]
        meta_compressed = re.search(rb"CompressedDataSize = (\d+)", head)  # MetaImage (.mha): a zlib stream
        if meta_compressed:
            data = int(meta_compressed.group(1))
        if not gzipped:
            if size < data:
                raise IncompleteWrite(f"{path}: {size} bytes for {data} bytes of voxels")
            return
        stream.seek(max(size - 4, 0))
        length = struct.unpack("<I", stream.read(4).rjust(4, b"\0"))[0]  # uncompressed length modulo 2^32
    if (length - data) % (1 << 32) >= HEADER_SLACK:
        raise IncompleteWrite(f"{path}: the compressed data end early")


def resample_to_grid(array: np.ndarray, source: Geometry, target: Geometry, is_label: bool) -> np.ndarray:
    """Resample ``array`` from ``source`` onto ``target`` (nearest neighbour for labels, linear otherwise)."""
    if source.same_grid(target, tolerance=1e-6):
        return np.asarray(array)
    image = image_from_array(array, source)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    resampled = sitk.Resample(image, target.reference_image(), sitk.Transform(), interpolator, 0.0,
                              image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
