"""Segmenting volumes with a fine-tuned model: MONAI sliding-window inference with Gaussian blending, optional
mirroring test-time augmentation, mixed precision on CUDA, and the result resampled back onto the input's exact grid.

Example::

    import sslseg
    outputs = sslseg.predict("models/hippocampus", "new_case.nii.gz", "segmentations/", seg_nrrd=True)

Outputs per input: ``<case>.nii.gz`` (or ``.nrrd``, ``--format``) holding label values, and with ``seg_nrrd`` a
Slicer ``<case>.seg.nrrd`` with segment names and colours.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np

from sslseg.device import resolve_device
from sslseg.errors import UserError
from sslseg.imageio import has_image_suffix
from sslseg.preprocessing import pad_to, read_channels, resample_probabilities
from sslseg.progress import Reporter


def mirror_axes_sets(tta: bool):
    """Flip combinations over the three spatial tensor axes (2, 3, 4): 8 with TTA, just the identity without."""
    axes = (2, 3, 4)
    if not tta:
        return [()]
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def sliding_window_probabilities(network, image, patch_size, device, overlap: float = 0.5, tta: bool = False,
                                 sw_batch_size: int = 2, amp: bool | None = None):
    """Softmax probabilities ``[k, z, y, x]`` (float32 numpy) for a preprocessed ``image[c, z, y, x]``.

    Volumes smaller than the patch are padded (and the padding cut off again); windows are blended with a Gaussian
    (MONAI ``sliding_window_inference``, ``mode="gaussian"``); with ``tta`` the softmax is averaged over all 8
    mirrorings. The network must be in eval mode on ``device``."""
    import torch
    from monai.inferers import sliding_window_inference

    padded, inner = pad_to(np.asarray(image, np.float32), patch_size, value=0.0)
    amp = (device.type == "cuda") if amp is None else amp
    # large volumes on a GPU: windows run on the GPU, the blended output is gathered in CPU memory (MONAI's
    # sw_device/device split), so that a 4 GB card is enough
    gather = device
    if device.type == "cuda" and padded[0].size * max(2, getattr(getattr(network, "decoder", None), "num_classes", 2)) * 4 > 1 << 30:
        gather = torch.device("cpu")
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None].to(gather)
    total = None
    flips = mirror_axes_sets(tta)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        for flip in flips:
            source = torch.flip(tensor, flip) if flip else tensor
            logits = sliding_window_inference(source, roi_size=list(patch_size), sw_batch_size=sw_batch_size,
                                              predictor=network, overlap=overlap, mode="gaussian",
                                              sigma_scale=0.125, padding_mode="constant", cval=0.0,
                                              sw_device=device, device=gather)
            probabilities = torch.softmax(logits.float(), dim=1)
            if flip:
                probabilities = torch.flip(probabilities, flip)
            total = probabilities if total is None else total + probabilities
    total = (total / len(flips))[0]
    return total[(slice(None), *inner)].cpu().numpy()


def collect_inputs(inputs) -> list:
    """Image files from a file, a folder (its image files, sorted), or a list of either."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if has_image_suffix(n) and not n.startswith("."))
            if not found:
                raise UserError(f"no image files (.nii.gz, .nii, .nrrd, .mha) in folder {item}")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UserError(f"input not found: {item}")
    return files


def case_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]  # nnU-Net channel suffix _0000
    return name


def segment_array(model, image, geometry, device, overlap=0.5, tta=True, sw_batch_size=2):
    """Labels (uint8, on ``geometry`` exactly) for ``image[c, z, y, x]`` read from disk with ``geometry``."""
    array, grid = model.preprocessor.image(image, geometry)
    probabilities = sliding_window_probabilities(model.network, array, model.patch_size, device, overlap, tta,
                                                 sw_batch_size)
    probabilities = resample_probabilities(probabilities, grid, geometry)
    return model.label_values_array()[np.argmax(probabilities, axis=0)].astype(np.uint8)


def predict(model, inputs, output, device: str = "auto", overlap: float = 0.5, tta: bool | None = None,
            seg_nrrd: bool = False, output_format: str = "nii.gz", progress="none", sw_batch_size: int = 2):
    """Segment ``inputs`` (a file, folder, or list) with ``model`` (a folder, a packed ``.sslmodel`` file, or a
    loaded ``Model``) and write the results into the folder ``output``. Returns the list of written files.
    ``tta`` (mirroring) defaults to on with CUDA and off on CPU, where it costs 8 times the time."""
    from sslseg.imageio import write_image
    from sslseg.model_folder import Model, load_model
    from sslseg.segfile import write_seg_nrrd

    reporter = progress if isinstance(progress, Reporter) else Reporter(progress)
    if not 0.0 <= float(overlap) < 1.0:
        raise UserError(f"--overlap must be in [0, 1) (got {overlap})")
    if output_format not in ("nii.gz", "nii", "nrrd"):
        raise UserError(f"unknown output format {output_format!r} (nii.gz, nii or nrrd)")
    files = collect_inputs(inputs)
    torch_device, note = resolve_device(device)
    if not isinstance(model, Model):
        model = load_model(model)
    model.network.to(torch_device).eval()
    tta = (torch_device.type == "cuda") if tta is None else bool(tta)
    # read everything first: a bad file is refused before any work is done
    for path in files:
        read_channels([path], case_name(path), model.in_channels)
    os.makedirs(output, exist_ok=True)
    reporter.start(total_steps=len(files), device=str(torch_device), note=note)
    reporter.log(f"model: {model.summary()}; mirroring TTA {'on' if tta else 'off'}, overlap {overlap}")
    written = []
    names = set()
    for index, path in enumerate(files, start=1):
        name = case_name(path)
        if name in names:
            raise UserError(f"two inputs would both be written as {name}: rename one")
        names.add(name)
        started = time.monotonic()
        image, geometry = read_channels([path], name, model.in_channels)
        labels = segment_array(model, image, geometry, torch_device, overlap, tta, sw_batch_size)
        target = os.path.join(output, f"{name}.{output_format}")
        written.append(write_image(labels, geometry, target))
        if seg_nrrd:
            written.append(write_seg_nrrd(labels, geometry, model.labels, os.path.join(output, f"{name}.seg.nrrd")))
        reporter.log(f"{os.path.basename(path)}: {labels.size / 1e6:.2f} Mvoxel in "
                     f"{time.monotonic() - started:.1f} s -> {target}")
        reporter.progress(phase="predict", step=index, total=len(files))
    reporter.done(outputs=[os.path.abspath(p) for p in written])
    return written
