"""Segmenting volumes with a fine-tuned model: MONAI sliding-window inference with Gaussian blending, optional
mirroring test-time augmentation, mixed precision on CUDA (bf16 where supported), and the class probabilities
resampled back onto the input's exact grid with torch on the device that holds them (the GPU), where the argmax
is taken too: only the uint8 labels travel back; then the model's post-processing (the largest component of the
structures its validation chose, ``sslseg.postprocessing``). The next input of a folder is read while the current
one runs.

Example::

    import sslseg
    outputs = sslseg.predict("models/hippocampus", "new_case.nii.gz", "segmentations/", seg_nrrd=True)

Outputs per input: ``<case>.nii.gz`` (or ``.nrrd``, ``--format``) holding label values, with ``seg_nrrd`` a
Slicer ``<case>.seg.nrrd`` with segment names and colours, and with ``uncertainty`` ``<case>_uncertainty.nii.gz``,
the per-voxel normalised entropy (``sslseg.uncertainty``), summarised per case in ``outputs.uncertainty``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from sslseg.atomic import hold_output
from sslseg.device import mixed_precision, parse_device, resolve_device
from sslseg.errors import UserError
from sslseg.imageio import IMAGE_SUFFIXES, has_image_suffix
from sslseg.postprocessing import keep_largest_components
from sslseg.preprocessing import pad_to, read_channels, resampled_slabs
from sslseg.progress import MODES, Reporter
from sslseg.validation import float_in_range, one_line, one_of, positive_int

OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd")
CPU_WINDOW_BATCH = 2  # windows per forward pass on the CPU
MAX_WINDOW_BATCH = 32
WINDOW_MEMORY = 3 << 29  # 1.5 GiB: the most GPU memory the windows of one forward pass may take
CPU_TTA_MAX_WINDOWS = 8  # the CPU default mirrors a case of at most this many windows (2 x 2 x 2: seconds)
GATHER_ON_CPU_BYTES = 1 << 30  # a blended output larger than this on the GPU is gathered in CPU memory instead
UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"  # float maps: NIfTI whatever --format says (Slicer loads it as a volume)


def window_count(shape, patch, overlap: float = 0.5) -> int:
    """The sliding windows over ``shape`` with ``patch`` at ``overlap`` (MONAI's scan: the last window flush with
    the end of each axis)."""
    count = 1
    for size, window in zip(shape, patch):
        step = max(1, int(window * (1.0 - overlap)))
        count *= 1 if size <= window else math.ceil((size - window) / step) + 1
    return count


def mirror_axes_sets(tta: bool):
    """Flip combinations over the three spatial tensor axes (2, 3, 4): 8 with TTA, just the identity without."""
    axes = (2, 3, 4)
    if not tta:
        return [()]
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def _autocast(device, amp: bool | None):
    """Autocast as ``sslseg.device.mixed_precision`` chooses (bf16 where supported, else fp16; none on the CPU);
    ``amp=False`` turns it off."""
    import torch

    precision = mixed_precision(device)
    enabled = precision.enabled and amp is not False
    return torch.autocast(device_type=device.type, dtype=precision.dtype, enabled=enabled)


def _output_classes(network) -> int:
    return max(2, int(getattr(getattr(network, "decoder", None), "num_classes", 2) or 2))


def gather_device(device, output_values: int):
    """Where the blended output lives: on the GPU when it takes at most ``GATHER_ON_CPU_BYTES`` or a quarter of the
    memory free there (PyTorch's unused cache counted as free: the blend, the mirrored sum and the windows fit
    beside it); else windows run on the GPU and the output is gathered in CPU memory (MONAI's sw_device/device
    split), so that a 4 GB card is enough and an 80 GB one keeps large volumes on the GPU."""
    import torch

    if device.type != "cuda" or output_values * 4 <= GATHER_ON_CPU_BYTES:
        return device
    return device if output_values * 4 <= free_gpu_memory(device) // 4 else torch.device("cpu")


def free_gpu_memory(device) -> int:
    """Bytes the card has free for this process: the driver's free memory plus PyTorch's cached, unused blocks."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _window_bytes(network, in_channels: int, patch_size, device) -> int:
    """GPU memory one window's forward pass takes (measured once per network and patch, then remembered)."""
    import torch

    key = (int(in_channels), tuple(int(p) for p in patch_size))
    cache = network.__dict__.setdefault("_sslseg_window_bytes", {})
    if key not in cache:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), _autocast(device, None):
            network(torch.zeros((1, key[0], *key[1]), device=device))
        cache[key] = max(1, torch.cuda.max_memory_allocated(device) - base)
    return cache[key]


def window_batch_size(network, in_channels: int, patch_size, device) -> int:
    """Windows per forward pass: on CUDA as many as fit into half the free GPU memory (PyTorch's unused cache
    counted as free), at most ``WINDOW_MEMORY`` bytes of them (so that a 256^3 volume stays within a 4 GB card) and
    ``MAX_WINDOW_BATCH``; 2 on the CPU, where a larger batch is not faster."""
    if device.type != "cuda":
        return CPU_WINDOW_BATCH
    per_window = _window_bytes(network, in_channels, patch_size, device)
    free = free_gpu_memory(device)
    return int(max(1, min(MAX_WINDOW_BATCH, min(WINDOW_MEMORY, free // 2) // per_window)))


class MirroredPredictor:
    """Test-time mirroring inside each forward pass: a batch of windows and its mirror images run as one batch, and
    the logits, flipped back, are averaged per window (nnU-Net's per-window mirroring, Isensee et al., Nature
    Methods 2021). One sliding-window pass instead of one per mirroring, so the GPU sees batches ``len(flips)``
    times larger."""

    def __init__(self, network, flips):
        self.network, self.flips = network, list(flips)

    def __call__(self, windows):
        import torch

        if len(self.flips) == 1:
            return self.network(windows)
        batch = torch.cat([torch.flip(windows, flip) if flip else windows for flip in self.flips])
        parts = self.network(batch).float().chunk(len(self.flips))
        total = None
        for part, flip in zip(parts, self.flips):
            part = torch.flip(part, flip) if flip else part
            total = part if total is None else total + part
        return total / len(self.flips)


def window_probabilities(network, image, patch_size, device, overlap: float = 0.5, tta: bool = False,
                         sw_batch_size: int | None = None, amp: bool | None = None):
    """Softmax probabilities ``[k, z, y, x]`` (a float32 torch tensor, on ``device`` unless it is too large there:
    see ``gather_device``) for a preprocessed ``image[c, z, y, x]``.

    Volumes smaller than the patch are padded (and the padding cut off again); windows are blended with a Gaussian
    (MONAI ``sliding_window_inference``, ``mode="gaussian"``); with ``tta`` the logits are averaged over all 8
    mirrorings of each window (``MirroredPredictor``). ``sw_batch_size`` None: from free memory
    (``window_batch_size``, shared by the mirrorings). The network must be in eval mode on ``device``."""
    import torch
    from monai.inferers import sliding_window_inference

    padded, inner = pad_to(np.asarray(image, np.float32), patch_size, value=0.0)
    gather = gather_device(device, padded[0].size * _output_classes(network))
    # a one-voxel window axis (a slice-wise model's slice axis) is not mirrored: its windows see the same either way
    flips = [flip for flip in mirror_axes_sets(tta) if all(patch_size[axis - 2] > 1 for axis in flip)]
    if sw_batch_size is None:
        sw_batch_size = max(1, window_batch_size(network, padded.shape[0], patch_size, device) // len(flips))
    tensor = torch.from_numpy(np.ascontiguousarray(padded))[None].to(gather)
    with torch.inference_mode(), _autocast(device, amp):
        logits = sliding_window_inference(tensor, roi_size=list(patch_size), sw_batch_size=sw_batch_size,
                                          predictor=MirroredPredictor(network, flips), overlap=overlap,
                                          mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0,
                                          sw_device=device, device=gather)
        probabilities = torch.softmax(logits.float(), dim=1)
    return probabilities[0][(slice(None), *inner)]


def labels_on_grid(probabilities, grid, geometry, label_values, uncertainty: bool = False):
    """Probabilities ``[k, z, y, x]`` (torch) on the model's ``grid`` -> (uint8 labels on ``geometry``, the
    normalised-entropy map on ``geometry`` or None). Resampled in slabs on the probabilities' device, argmax and
    entropy there too: only the labels (and the map) are copied back."""
    import torch

    from sslseg.uncertainty import entropy

    table = torch.as_tensor(np.asarray(label_values), dtype=torch.uint8, device=probabilities.device)
    labels = np.empty(geometry.shape, np.uint8)
    entropy_map = np.empty(geometry.shape, np.float32) if uncertainty else None
    for z0, z1, slab in resampled_slabs(probabilities, grid, geometry):
        labels[z0:z1] = table[slab.argmax(dim=0)].cpu().numpy()
        if uncertainty:
            entropy_map[z0:z1] = entropy(slab).cpu().numpy()
    return labels, entropy_map


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


def segment_array(model, image, geometry, device, overlap=0.5, tta=True, sw_batch_size=None, uncertainty=False):
    """Labels (uint8, on ``geometry`` exactly) for ``image[c, z, y, x]`` read from disk with ``geometry``; with
    ``uncertainty`` the pair ``(labels, uncertainty)``, the normalised entropy of the (TTA-averaged) softmax per
    voxel (float32 in [0, 1], same grid; see ``sslseg.uncertainty``)."""
    array, grid = model.preprocessor.image(image, geometry)
    return segment_prepared(model, array, grid, geometry, device, overlap, tta, sw_batch_size, uncertainty)


def segment_prepared(model, array, grid, geometry, device, overlap=0.5, tta=True, sw_batch_size=None,
                     uncertainty=False):
    """``segment_array`` for an image already preprocessed (``model.preprocessor.image``: ``array`` on ``grid``)."""
    probabilities = window_probabilities(model.network, array, model.patch_size, device, overlap, tta, sw_batch_size)
    labels, entropy_map = labels_on_grid(probabilities, grid, geometry, model.label_values_array(), uncertainty)
    labels = keep_largest_components(labels, model.largest_component_values)  # as the validation chose
    return (labels, entropy_map) if uncertainty else labels


# --- checking a prediction run before any work ---------------------------------------------------------------

@dataclass
class OutputPlan:
    """One input and the files its prediction will be written to: ``targets`` lists them all (the label file
    first); ``seg_target`` (the .seg.nrrd) and ``uncertainty_target`` are among them when asked for."""
    source: str
    name: str
    targets: list
    seg_target: str | None = None
    uncertainty_target: str | None = None


class Predictions(list):
    """The files a prediction run wrote (a list, as before), with ``uncertainty``: {case name: summary} when the
    run was asked for uncertainty (``sslseg.uncertainty.summarize``, plus the map's ``file``)."""

    def __init__(self, files=(), uncertainty=None):
        super().__init__(files)
        self.uncertainty = dict(uncertainty or {})


def check_predict_options(overlap, tta, seg_nrrd, output_format, sw_batch_size, device, progress,
                          uncertainty=False):
    """The options of a prediction run, checked (one line naming the option); returns (overlap, sw_batch_size);
    ``sw_batch_size`` None means: from free memory."""
    overlap = float_in_range("overlap (--overlap)", overlap, 0.0, 1.0, strict_maximum=True)
    if sw_batch_size is not None:
        sw_batch_size = positive_int("batch size (--batch-size)", sw_batch_size)
    one_of("output format (--format)", output_format, OUTPUT_FORMATS)
    if tta is not None and not isinstance(tta, bool):
        raise UserError(f"tta must be True, False or None (got {tta!r})")
    if not isinstance(seg_nrrd, bool):
        raise UserError(f"seg_nrrd must be True or False (got {seg_nrrd!r})")
    if not isinstance(uncertainty, bool):
        raise UserError(f"uncertainty (--uncertainty) must be True or False (got {uncertainty!r})")
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


def _refuse_shared_targets(plans) -> None:
    """No two outputs on one path (compared case-insensitively): e.g. ``a_uncertainty`` beside ``a``'s map."""
    owners = {}
    for plan in plans:
        for target in plan.targets:
            other = owners.setdefault(target.casefold(), plan.source)
            if other != plan.source:
                raise UserError(f"the inputs {other} and {plan.source} would both be written as {target}; rename "
                                "one or predict them into different output folders")


def plan_outputs(files, output, output_format="nii.gz", seg_nrrd=False, protected=(), uncertainty=False) -> list:
    """Every output path of a run, computed and checked before any work: one name per case (also where only the
    letter case differs), no output on any input (``files`` and ``protected``), the output folder usable. With
    ``uncertainty`` each case also gets ``<case>_uncertainty.nii.gz``."""
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
        plan = OutputPlan(path, name, [os.path.join(output, f"{name}.{output_format}")])
        if seg_nrrd:
            plan.seg_target = os.path.join(output, f"{name}.seg.nrrd")
        if uncertainty:
            plan.uncertainty_target = os.path.join(output, f"{name}{UNCERTAINTY_SUFFIX}")
        plan.targets += [t for t in (plan.seg_target, plan.uncertainty_target) if t]
        plans.append(plan)
    _refuse_shared_targets(plans)
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

@dataclass
class _Settings:
    """How every case of a run is segmented."""
    device: object  # torch.device
    overlap: float
    tta: bool | None  # None: per case on the CPU (``CPU_TTA_MAX_WINDOWS``)
    sw_batch_size: int | None
    uncertainty: bool


def predict(model, inputs, output, device: str = "auto", overlap: float = 0.5, tta: bool | None = None,
            seg_nrrd: bool = False, output_format: str = "nii.gz", progress="none", sw_batch_size: int | None = None,
            uncertainty: bool = False, skip_finished: bool = False):
    """Segment ``inputs`` (a file, folder, or list) with ``model`` (a folder, a packed ``.sslmodel`` file, or a
    loaded ``Model``) and write the results into the folder ``output``. Returns the written files (a
    ``Predictions`` list). ``tta`` (mirroring) defaults to on with CUDA or ``uncertainty``; on the CPU, where it
    costs 8 times the time, to on for a case that takes at most ``CPU_TTA_MAX_WINDOWS`` windows (seconds).
    ``sw_batch_size``: windows per forward pass (None: from free GPU memory; 2 on the CPU). ``uncertainty``: also
    write ``<case>_uncertainty.nii.gz`` (the normalised entropy of the TTA-averaged softmax, float32, on the
    input's grid) and put each case's summary into the return value's ``uncertainty`` and the ``done`` event.

    ``skip_finished``: keep the cases whose outputs a killed run already wrote (``--continue``). One run writes an
    output folder at a time (``sslseg.atomic.hold_output``: a second one is refused).

    Everything is checked before the model's weights are loaded: the options, every output path (no output may
    land on an input), model.json, and every input, read once."""
    from sslseg.model_folder import Model, load_model

    overlap, sw_batch_size = check_predict_options(overlap, tta, seg_nrrd, output_format, sw_batch_size, device,
                                                   progress, uncertainty)
    reporter = progress if isinstance(progress, Reporter) else Reporter(progress)
    files = collect_inputs(inputs)
    plans = plan_outputs(files, output, output_format, seg_nrrd, protected=_model_files(model),
                         uncertainty=uncertainty)
    check_inputs_readable(_model_meta(model), plans, str(getattr(model, "path", None) or model))
    if not isinstance(skip_finished, bool):
        raise UserError(f"skip_finished (--continue) must be True or False (got {skip_finished!r})")
    torch_device, note = resolve_device(device)
    if not isinstance(model, Model):
        model = load_model(model)
    model.network.to(torch_device).eval()
    tta = True if tta is None and (torch_device.type == "cuda" or uncertainty) else tta  # None: per case, CPU
    settings = _Settings(torch_device, overlap, tta, sw_batch_size, uncertainty)
    os.makedirs(output, exist_ok=True)
    with hold_output(output, "--output", inside=True):  # one run per folder; stale .partial-* files go
        finished = finished_outputs(plans) if skip_finished else {}
        todo = [plan for plan in plans if plan.name not in finished]
        reporter.start(total_steps=len(todo), device=str(torch_device), note=note)
        if finished:
            reporter.log(f"--continue: {len(finished)} case(s) already finished in {output} kept, {len(todo)} to go")
        tta_text = (f"on for cases of at most {CPU_TTA_MAX_WINDOWS} windows" if tta is None else "on" if tta
                    else "off")
        reporter.log(f"model: {model.summary()}; mirroring TTA {tta_text}, overlap {overlap}"
                     f"{', uncertainty maps' if uncertainty else ''}")
        written = _predict_all(model, todo, settings, reporter)
    written = _with_finished(written, plans, finished, model.labels)
    extra = {"uncertainty": written.uncertainty} if uncertainty else {}
    reporter.done(outputs=[os.path.abspath(p) for p in written], **extra)
    return written


def finished_outputs(plans) -> dict:
    """{case name: plan} of the cases whose every output already exists and reads back (every write is atomic,
    so an existing output is whole): what ``skip_finished`` keeps. A case with only some of its outputs is done
    again."""
    from sslseg.imageio import readable_image

    return {plan.name: plan for plan in plans if all(readable_image(target) for target in plan.targets)}


def _with_finished(written, plans, finished: dict, labels) -> Predictions:
    """The files of every case in input order, the kept ones included (their uncertainty summaries read back)."""
    from sslseg.imageio import read_image
    from sslseg.uncertainty import summarize

    if not finished:
        return written
    result = Predictions(uncertainty=written.uncertainty)
    new = set(written)
    for plan in plans:
        result += [target for target in plan.targets if plan.name in finished or target in new]
        if plan.name in finished and plan.uncertainty_target:
            summary = summarize(read_image(plan.targets[0])[0], read_image(plan.uncertainty_target)[0], labels)
            result.uncertainty[plan.name] = {**summary, "file": os.path.abspath(plan.uncertainty_target)}
    result.uncertainty = {plan.name: result.uncertainty[plan.name] for plan in plans
                          if plan.name in result.uncertainty}
    return result


def _predict_all(model, plans, settings, reporter) -> Predictions:
    """Every case in turn, the next one read and preprocessed while the current one is segmented."""
    import torch

    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one window shape throughout: autotuning pays off
    written = Predictions()
    cases = read_ahead(model, plans)
    try:
        for index, (plan, case) in enumerate(zip(plans, cases), start=1):
            files, summary = _predict_one(model, plan, case, settings, reporter)
            written += files
            if summary is not None:
                written.uncertainty[plan.name] = summary
            reporter.progress(phase="predict", step=index, total=len(plans))
    finally:
        cases.close()
    return written


def _read_prepared(model, plan):
    """(geometry, preprocessed array, its grid) of one input."""
    image, geometry = read_channels([plan.source], plan.name, model.in_channels)
    array, grid = model.preprocessor.image(image, geometry)
    return geometry, array, grid


def read_ahead(model, plans):
    """The prepared cases of ``plans`` in order (see ``_read_prepared``), each next one read in a background
    thread while the caller works on the current one (reading and resampling a large scan takes seconds that the
    GPU would otherwise wait). Close the generator to stop early; a read in progress is finished first."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sslseg-read-ahead") as pool:
        pending = pool.submit(_read_prepared, model, plans[0]) if plans else None
        for index in range(len(plans)):
            current = pending.result()
            pending = pool.submit(_read_prepared, model, plans[index + 1]) if index + 1 < len(plans) else None
            yield current


def _predict_one(model, plan, case, settings, reporter):
    """Segment one prepared input and write its files (each atomically); returns (their paths, the uncertainty
    summary or None)."""
    from sslseg.imageio import write_image
    from sslseg.segfile import write_seg_nrrd
    from sslseg.uncertainty import summarize

    started = time.monotonic()
    geometry, array, grid = case
    tta = settings.tta
    if tta is None:  # the CPU default: mirroring where it costs seconds (Dice +0.005 on hippocampus, 8x the time)
        tta = window_count(array.shape[1:], model.patch_size, settings.overlap) <= CPU_TTA_MAX_WINDOWS
    result = segment_prepared(model, array, grid, geometry, settings.device, settings.overlap, tta,
                              settings.sw_batch_size, settings.uncertainty)
    labels, entropy_map = result if settings.uncertainty else (result, None)
    written = [write_image(labels, geometry, plan.targets[0])]
    if plan.seg_target:
        written.append(write_seg_nrrd(labels, geometry, model.labels, plan.seg_target))
    summary = None
    if plan.uncertainty_target:
        written.append(write_image(entropy_map, geometry, plan.uncertainty_target))
        summary = {**summarize(labels, entropy_map, model.labels), "file": os.path.abspath(plan.uncertainty_target)}
    reporter.log(f"{os.path.basename(plan.source)}: {labels.size / 1e6:.2f} Mvoxel in "
                 f"{time.monotonic() - started:.1f} s -> {plan.targets[0]}")
    return written, summary
