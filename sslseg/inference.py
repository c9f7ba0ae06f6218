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
from dataclasses import dataclass

import numpy as np

from sslseg.device import parse_device, resolve_device
from sslseg.errors import UserError
from sslseg.imageio import IMAGE_SUFFIXES, has_image_suffix
from sslseg.preprocessing import pad_to, read_channels, resample_probabilities
from sslseg.progress import MODES, Reporter
from sslseg.validation import float_in_range, one_line, one_of, positive_int

OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd")


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
    """Image files from a file, a folder (its image files, sorted), or a list of either; each file once."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise UserError(f"no input given (--input): give image files or folders (got {inputs!r:.60})")
    files = []
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            raise UserError(f"inputs (--input) must be file or folder paths (got {item!r:.60})")
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if has_image_suffix(n) and not n.startswith("."))
            if not found:
                raise UserError(f"no image files (.nii.gz, .nii, .nrrd, .mha) in folder {item}")
            files.extend(found)
        elif os.path.isfile(item):
            if not item.lower().endswith(IMAGE_SUFFIXES):  # .seg.nrrd passes: reading it says what it is
                raise UserError(f"input {item} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
            files.append(item)
        else:
            raise UserError(f"input not found: {item}")
    seen = {}
    for path in files:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"input {path} is given more than once ({seen[real]}); give each scan once")
        seen[real] = path
    return files


def case_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in IMAGE_SUFFIXES:
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


# --- checking a prediction run before any work ---------------------------------------------------------------

@dataclass
class OutputPlan:
    """One input and the files its prediction will be written to (label file first, then the .seg.nrrd)."""
    source: str
    name: str
    targets: list


def check_predict_options(overlap, tta, seg_nrrd, output_format, sw_batch_size, device, progress):
    """The options of a prediction run, checked (one line naming the option); returns (overlap, sw_batch_size)."""
    overlap = float_in_range("overlap (--overlap)", overlap, 0.0, 1.0, strict_maximum=True)
    sw_batch_size = positive_int("batch size (--batch-size)", sw_batch_size)
    one_of("output format (--format)", output_format, OUTPUT_FORMATS)
    if tta is not None and not isinstance(tta, bool):
        raise UserError(f"tta must be True, False or None (got {tta!r})")
    if not isinstance(seg_nrrd, bool):
        raise UserError(f"seg_nrrd must be True or False (got {seg_nrrd!r})")
    parse_device(device)
    if not isinstance(progress, Reporter):
        one_of("progress (--progress)", progress, MODES)
    return overlap, sw_batch_size


def _check_output_folder(output) -> str:
    """``output`` is, or can become, a folder: not an existing file, not below one."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output).strip():
        raise UserError(f"give the output folder (--output) as a path (got {output!r:.60})")
    output = os.fspath(output)
    if os.path.lexists(output) and not os.path.isdir(output):
        raise UserError(f"the output folder (--output) {output} exists and is not a folder; give a folder")
    parent = os.path.abspath(output)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"the output folder (--output) {output} cannot be created: {parent} is a file")
    return output


def _file_identity(path):
    """(device, inode) of an existing file, to recognise hard links and other names of the same file."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _refuse_overwriting_inputs(plans, protected) -> None:
    """No output may land on an input: compare real paths (symbolic links resolved) and, for files that exist,
    device and inode (hard links, case-insensitive file systems)."""
    real = {os.path.realpath(p): p for p in protected}
    identities = {_file_identity(p): p for p in protected} if protected else {}
    identities.pop(None, None)
    for plan in plans:
        for target in plan.targets:
            source = real.get(os.path.realpath(target)) or identities.get(_file_identity(target))
            if source is not None:
                raise UserError(f"the output {target} would overwrite the input {source}; choose another output "
                                "folder (--output)")
            if os.path.isdir(target):
                raise UserError(f"the output {target} is an existing folder; move it or choose another output "
                                "folder (--output)")


def plan_outputs(files, output, output_format="nii.gz", seg_nrrd=False, protected=()) -> list:
    """Every output path of a run, computed and checked before any work: one name per case (also where only the
    letter case differs), no output on any input (``files`` and ``protected``), the output folder usable."""
    output = _check_output_folder(output)
    plans, names = [], {}
    for path in files:
        name = case_name(path)
        if not name:
            raise UserError(f"cannot name the output of input {path}: give it a name before the suffix")
        if name.casefold() in names:
            raise UserError(f"two inputs would both be written as {name}: {names[name.casefold()]} and {path}; "
                            "rename one or predict them into different output folders")
        names[name.casefold()] = path
        targets = [os.path.join(output, f"{name}.{output_format}")]
        if seg_nrrd:
            targets.append(os.path.join(output, f"{name}.seg.nrrd"))
        plans.append(OutputPlan(path, name, targets))
    _refuse_overwriting_inputs(plans, [*files, *protected])
    return plans


def _model_files(model) -> list:
    """The files of the model (a packed file, or a folder's files), which no output may replace either."""
    path = getattr(model, "path", model)
    if not isinstance(path, (str, os.PathLike)):
        return []
    if os.path.isfile(path):
        return [os.fspath(path)]
    if os.path.isdir(path):
        return [os.path.join(path, name) for name in os.listdir(path)]
    return []


def _model_meta(model) -> dict:
    """model.json of ``model`` (a path: read and checked without loading the weights or importing torch)."""
    from sslseg.model_folder import Model, read_model_meta

    if isinstance(model, Model):
        return model.meta
    if not isinstance(model, (str, os.PathLike)):
        raise UserError(f"give the model (--model) as a model folder or .sslmodel file (got {model!r:.60})")
    return read_model_meta(model)


def check_inputs_readable(meta: dict, plans, where: str = "the model") -> None:
    """Read every input once (channel count, NaN, size after resampling to the model's spacing) so that a bad file
    stops the run before the model is loaded and before any output is written."""
    from sslseg.preprocessing import Preprocessor

    try:
        in_channels = int(meta["in_channels"])
        preprocessor = Preprocessor.from_dict({**meta["preprocessing"], "in_channels": in_channels})
    except (UserError, KeyError, TypeError, ValueError) as error:
        raise UserError(f"{where}: model.json has unusable preprocessing settings ({one_line(error)})") from None
    for plan in plans:
        _, geometry = read_channels([plan.source], plan.name, in_channels)
        try:
            preprocessor.target_geometry(geometry)
        except UserError as error:
            raise UserError(f"{plan.source}: {error}") from None


# --- running -------------------------------------------------------------------------------------------------

def predict(model, inputs, output, device: str = "auto", overlap: float = 0.5, tta: bool | None = None,
            seg_nrrd: bool = False, output_format: str = "nii.gz", progress="none", sw_batch_size: int = 2):
    """Segment ``inputs`` (a file, folder, or list) with ``model`` (a folder, a packed ``.sslmodel`` file, or a
    loaded ``Model``) and write the results into the folder ``output``. Returns the list of written files.
    ``tta`` (mirroring) defaults to on with CUDA and off on CPU, where it costs 8 times the time.

    Everything is checked before the model's weights are loaded: the options, every output path (no output may
    land on an input), model.json, and every input, read once."""
    from sslseg.model_folder import Model, load_model

    overlap, sw_batch_size = check_predict_options(overlap, tta, seg_nrrd, output_format, sw_batch_size, device,
                                                   progress)
    reporter = progress if isinstance(progress, Reporter) else Reporter(progress)
    files = collect_inputs(inputs)
    plans = plan_outputs(files, output, output_format, seg_nrrd, protected=_model_files(model))
    check_inputs_readable(_model_meta(model), plans, str(getattr(model, "path", None) or model))
    torch_device, note = resolve_device(device)
    if not isinstance(model, Model):
        model = load_model(model)
    model.network.to(torch_device).eval()
    tta = (torch_device.type == "cuda") if tta is None else tta
    os.makedirs(output, exist_ok=True)
    reporter.start(total_steps=len(plans), device=str(torch_device), note=note)
    reporter.log(f"model: {model.summary()}; mirroring TTA {'on' if tta else 'off'}, overlap {overlap}")
    written = []
    for index, plan in enumerate(plans, start=1):
        written += _predict_one(model, plan, torch_device, overlap, tta, sw_batch_size, reporter)
        reporter.progress(phase="predict", step=index, total=len(plans))
    reporter.done(outputs=[os.path.abspath(p) for p in written])
    return written


def _predict_one(model, plan, torch_device, overlap, tta, sw_batch_size, reporter) -> list:
    """Segment one input and write its files (each atomically); returns their paths."""
    from sslseg.imageio import write_image
    from sslseg.segfile import write_seg_nrrd

    started = time.monotonic()
    image, geometry = read_channels([plan.source], plan.name, model.in_channels)
    labels = segment_array(model, image, geometry, torch_device, overlap, tta, sw_batch_size)
    written = [write_image(labels, geometry, plan.targets[0])]
    if len(plan.targets) > 1:
        written.append(write_seg_nrrd(labels, geometry, model.labels, plan.targets[1]))
    reporter.log(f"{os.path.basename(plan.source)}: {labels.size / 1e6:.2f} Mvoxel in "
                 f"{time.monotonic() - started:.1f} s -> {plan.targets[0]}")
    return written
