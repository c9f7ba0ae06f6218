"""Fine-tuning with the low-data recipe of Wald et al. ("Revisiting MAE pre-training for 3D medical image
segmentation"; REFERENCE.md section 1), from the command line (``sslseg finetune``) or Python.

The recipe, with a backbone:

1. decoder warm-up: the encoder and the stem are frozen (``requires_grad=False`` and absent from the optimiser, named
   through ``sslseg.networks.split_parameters`` so that the decoder's reference to the encoder cannot leak), the lr
   ramps linearly to the max lr;
2. whole-network linear warm-up (the encoder joins the optimiser);
3. PolyLR (exponent 0.9) from the max lr 1e-3;

SGD with Nesterov momentum 0.99 and weight decay 3e-5, Dice + cross-entropy (MONAI ``DiceCELoss``) with deep
supervision, gradient clipping at 12, mixed precision on CUDA. ``backbone="none"`` trains from scratch with nnU-Net's
defaults (lr 1e-2, no warm-ups). Presets (sslseg.presets) set the step counts; the CPU preset swaps SGD for AdamW,
which measurably pays off for short CPU runs (docs/benchmarks.md).

Data: every case is read, checked and preprocessed once into memory (resampled to the plan's spacing, normalised),
patches are cropped with foreground oversampling and augmented with MONAI transforms (rotation, scaling, mirroring,
intensity) in the training process itself: the cases are small, and extra loader processes cost more than they give
on 2 cores.

Example::

    import sslseg
    model_dir = sslseg.finetune("none", data="../shared/data/Task04_Hippocampus", out="models/hippo", preset="cpu",
                                steps=300, progress="bar")
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from sslseg._callable import make_callable
from sslseg.errors import UserError
from sslseg.presets import Preset, default_preset, get_preset
from sslseg.preprocessing import Preprocessor, choose_patch_size, pad_to, read_channels, read_label
from sslseg.progress import Reporter
from sslseg.schedule import Schedule

CALIBRATION_STEPS = 15  # steps timed before a time limit fixes the run's length


@dataclass
class PreparedCase:
    case_id: str
    image: np.ndarray  # [c, z, y, x] float32, normalised, on the model's spacing, padded to >= patch
    label: np.ndarray  # [z, y, x] uint8 class indices (0..K)
    foreground: list  # per class k=1..K: flat indices (subsampled) of its voxels, possibly empty


# --- data ----------------------------------------------------------------------------------------------------

def _label_table(labels: list) -> np.ndarray:
    """Label value (0..255) -> class index (0..K)."""
    table = np.zeros(256, np.uint8)
    for index, label in enumerate(labels, start=1):
        table[int(label["value"])] = index
    return table


def read_cases(dataset, values, in_channels: int | None):
    """Read and check every case before any training: returns [(case_id, image, label, geometry)]. ``values``: the
    allowed label values (None: any)."""
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
        result.append((case.case_id, image, label, geometry))
    return result


def prepare_case(case_id, image, label, geometry, preprocessor: Preprocessor, table, patch, num_classes, rng):
    array, _ = preprocessor.image(image, geometry)
    classes = table[preprocessor.label(label, geometry)]
    array, _ = pad_to(array, patch, 0.0)
    classes, _ = pad_to(classes, patch, 0)
    foreground = []
    flat = classes.ravel()
    for k in range(1, num_classes):
        where = np.flatnonzero(flat == k)
        if len(where) > 20000:
            where = np.sort(rng.choice(where, 20000, replace=False))
        foreground.append(where)
    return PreparedCase(case_id, np.ascontiguousarray(array), np.ascontiguousarray(classes), foreground)


class PatchSampler:
    """Random patches with foreground oversampling (a fraction of the patches is centred on a voxel of a randomly
    chosen class present in the case, nnU-Net style), augmented with MONAI transforms."""

    def __init__(self, cases, patch, batch_size, oversampling, augment: dict, seed: int):
        self.cases = cases
        self.patch = list(patch)
        self.batch_size = int(batch_size)
        self.oversampling = float(oversampling)
        self.rng = np.random.default_rng(seed)
        self.transform = build_augmentation(augment, seed)

    def _crop(self, case: PreparedCase, force_foreground: bool):
        shape = case.label.shape
        present = [k for k, where in enumerate(case.foreground) if len(where)]
        if force_foreground and present:
            where = case.foreground[present[self.rng.integers(len(present))]]
            centre = np.unravel_index(where[self.rng.integers(len(where))], shape)
            start = [int(c) - p // 2 + int(self.rng.integers(-(p // 4), p // 4 + 1))
                     for c, p in zip(centre, self.patch)]
        else:
            start = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch)]
        start = [min(max(0, s), dim - p) for s, dim, p in zip(start, shape, self.patch)]
        region = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        return case.image[(slice(None), *region)], case.label[region]

    def next_batch(self):
        import torch

        images, labels = [], []
        for index in range(self.batch_size):
            case = self.cases[self.rng.integers(len(self.cases))]
            # the last sample of a batch is always foreground-centred when oversampling is on (nnU-Net's rule),
            # the others with the given probability
            force = (index == self.batch_size - 1 and self.oversampling > 0) or self.rng.random() < self.oversampling
            image, label = self._crop(case, force)
            sample = {"image": torch.from_numpy(image.copy()), "label": torch.from_numpy(label[None].astype(np.float32))}
            sample = self.transform(sample) if self.transform is not None else sample
            images.append(_plain_tensor(sample["image"]).float())
            labels.append(_plain_tensor(sample["label"]).round().long())
        return torch.stack(images), torch.stack(labels)


def _plain_tensor(value):
    """A torch.Tensor without MONAI's metadata: a MetaTensor batch would route every operation of the network's
    forward and backward pass through MetaTensor.__torch_function__ (measured: 2-3x slower training steps on CPU)."""
    import torch

    value = value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(value)


def build_augmentation(augment: dict, seed: int):
    """MONAI dictionary transforms: rotation and scaling in one affine resampling, mirroring, intensity."""
    if not augment:
        return None
    from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandScaleIntensityd)

    keys = ["image", "label"]
    rotate = math.radians(float(augment.get("rotate_deg", 0.0)))
    low, high = augment.get("scale", [1.0, 1.0])
    p_rotate, p_scale = float(augment.get("rotate_p", 0.0)), float(augment.get("scale_p", 0.0))
    p_affine = 1.0 - (1.0 - p_rotate) * (1.0 - p_scale)
    p_intensity = float(augment.get("intensity_p", 0.0))
    transforms = []
    if p_affine > 0:
        transforms.append(RandAffined(keys, prob=p_affine, rotate_range=(rotate,) * 3,
                                      scale_range=((low - 1.0, high - 1.0),) * 3, mode=("bilinear", "nearest"),
                                      padding_mode="zeros"))
    mirror = float(augment.get("mirror_p", 0.0))
    if mirror > 0:
        transforms += [RandFlipd(keys, prob=mirror, spatial_axis=axis) for axis in range(3)]
    if p_intensity > 0:
        transforms += [RandScaleIntensityd("image", factors=0.25, prob=p_intensity),
                       RandGaussianNoised("image", prob=p_intensity * 0.7, std=0.1),
                       RandAdjustContrastd("image", prob=p_intensity, gamma=(0.7, 1.5))]
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


# --- network helpers -----------------------------------------------------------------------------------------

def enable_gradient_checkpointing(network):
    """Recompute each encoder/decoder stage's activations in the backward pass (saves memory, costs ~30 % time).
    The stages' ``forward`` is wrapped in place, so state_dict keys do not change."""
    from torch.utils.checkpoint import checkpoint

    stages = list(getattr(network.encoder, "stages", [])) + list(getattr(network.decoder, "stages", []))
    for stage in stages:
        if getattr(stage, "_sslseg_checkpointed", False):
            continue
        original = stage.forward

        def forward(x, _original=original):
            import torch

            if torch.is_grad_enabled() and (x.requires_grad or
                                            any(p.requires_grad for p in _original.__self__.parameters())):
                return checkpoint(_original, x, use_reentrant=False)
            return _original(x)

        stage.forward = forward
        stage._sslseg_checkpointed = True
    return len(stages)


def deep_supervision_weights(count: int) -> list:
    """nnU-Net's weights: 1, 1/2, 1/4, ... with the lowest resolution ignored, normalised to sum 1."""
    weights = [1.0 / (2 ** i) for i in range(count)]
    if count > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def supervised_loss(outputs, target, loss_function, weights):
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return loss_function(outputs, target)
    total = 0.0
    for output, weight in zip(outputs, weights):
        if weight == 0:
            continue
        scaled = target if output.shape[2:] == target.shape[2:] else \
            F.interpolate(target.float(), size=output.shape[2:], mode="nearest").long()
        total = total + weight * loss_function(output, scaled)
    return total


def fit_to_memory(network, in_channels, patch, batch_size, stride, device, limit_gb, reporter):
    """On CUDA: measure a full forward/backward pass and shrink until it fits under ``limit_gb`` (default 90 % of the
    card): first gradient checkpointing, then the batch, then the patch (largest axis first). Returns
    (patch, batch_size, checkpointing)."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    limit = float(limit_gb) * 2 ** 30 if limit_gb else 0.9 * total
    checkpointing = False
    patch = list(patch)
    while True:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        try:
            x = torch.zeros((batch_size, in_channels, *patch), device=device)
            with torch.autocast("cuda", dtype=torch.float16):
                out = network(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
                loss = out.float().mean()
            loss.backward()
            peak = torch.cuda.max_memory_allocated(device) - base
        except torch.cuda.OutOfMemoryError:
            peak = float("inf")
        finally:
            network.zero_grad(set_to_none=True)
            x = out = loss = None  # noqa: F841 - free the probe's tensors
            torch.cuda.empty_cache()
        # optimiser state (SGD momentum: one copy of the weights) and the data come on top of the probe
        params = sum(p.numel() * p.element_size() for p in network.parameters())
        if peak + 2 * params <= limit:
            return patch, batch_size, checkpointing
        if not checkpointing:
            enable_gradient_checkpointing(network)
            checkpointing = True
            reporter.log("GPU memory: enabling gradient checkpointing")
        elif batch_size > 1:
            batch_size -= 1
            reporter.log(f"GPU memory: batch size reduced to {batch_size}")
        else:
            axis = int(np.argmax(patch))
            if patch[axis] - stride[axis] < 2 * stride[axis]:
                raise UserError(f"the network does not fit in {limit / 2 ** 30:.1f} GB of GPU memory even with "
                                f"batch 1 and a small patch; raise --max-memory-gb or use a smaller preset")
            patch[axis] -= stride[axis]
            reporter.log(f"GPU memory: patch reduced to {patch}")


# --- validation ----------------------------------------------------------------------------------------------

def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> list:
    """Dice per foreground class; a class absent from both counts as 1."""
    scores = []
    for k in range(1, num_classes):
        p, t = prediction == k, target == k
        denominator = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denominator)
    return scores


def validate(network, cases, patch, device, num_classes, overlap=0.25):
    from sslseg.inference import sliding_window_probabilities

    was_training = network.training
    deep = getattr(network.decoder, "deep_supervision", False)
    network.decoder.deep_supervision = False
    network.eval()
    try:
        scores = []
        for case in cases:
            probabilities = sliding_window_probabilities(network, case.image, patch, device, overlap=overlap)
            scores.append(dice_per_class(np.argmax(probabilities, axis=0), case.label, num_classes))
    finally:
        network.decoder.deep_supervision = deep
        network.train(was_training)
    return np.mean(np.asarray(scores), axis=0).tolist()


# --- the run -------------------------------------------------------------------------------------------------

def _labels_from(dataset, label_info, cases_labels) -> list:
    """[{value, name, color}] from explicit label info, else dataset.json names, else the values found."""
    from sslseg.model_folder import default_color

    if label_info:
        labels = []
        for index, entry in enumerate(label_info):
            if int(entry["value"]) == 0:
                continue
            labels.append({"value": int(entry["value"]), "name": str(entry.get("name") or f"Segment_{entry['value']}"),
                           "color": list(entry.get("color") or default_color(index))})
        return sorted(labels, key=lambda l: l["value"])
    if dataset.label_names:
        return [{"value": int(v), "name": n, "color": default_color(i)}
                for i, (v, n) in enumerate(sorted(dataset.label_names.items()))]
    values = sorted({int(v) for label in cases_labels for v in np.unique(label)} - {0})
    return [{"value": v, "name": f"Segment_{v}", "color": default_color(i)} for i, v in enumerate(values)]


def _split(case_ids, val_cases, seed, val_case_ids=None):
    if val_case_ids is not None:
        missing = sorted(set(val_case_ids) - set(case_ids))
        if missing:
            raise UserError(f"validation case(s) {missing} are not in the data")
        val = [c for c in case_ids if c in set(val_case_ids)]
        train = [c for c in case_ids if c not in set(val_case_ids)]
    else:
        n = len(case_ids)
        if val_cases is None:
            val_cases = 0 if n < 5 else min(max(1, n // 5), 10)
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


def _load_network(backbone, preset: Preset, num_classes: int, in_channels: int, reporter, arch=None):
    """(network, spec, plan, provenance) for a backbone name/file, or a fresh network for "none" (``arch``: a
    network name or spec, default the preset's)."""
    from sslseg.networks import build_from_spec
    from sslseg.networks import spec_for

    if backbone in (None, "", "none"):
        spec = arch if isinstance(arch, dict) else spec_for(arch or preset.arch)
        return build_from_spec(spec, in_channels, num_classes), spec, {}, None
    try:
        from sslseg.backbones import load_backbone
    except ImportError as error:
        raise UserError(f"backbone support is not available in this installation ({error})") from None
    network, report = load_backbone(backbone, num_classes, in_channels)
    provenance = report.to_dict() if hasattr(report, "to_dict") else {"name": str(backbone)}
    provenance.setdefault("source", str(backbone))
    summary = report.summary() if hasattr(report, "summary") else str(provenance)
    for line in str(summary).splitlines():
        reporter.log(line)
    return network, report.spec, dict(getattr(report, "plan", {}) or {}), provenance


def finetune(backbone="none", data=None, images=None, labels=None, out=None, preset=None, device="auto",
             steps=None, val_cases=None, seed=0, progress="bar", label_names=None, label_info=None,
             time_limit=None, max_memory_gb=None, batch_size=None, patch_size=None, val_case_ids=None,
             max_lr=None, optimizer=None, train_case_ids=None, keep_best=True,
             step_callback=None, arch=None):
    """Fine-tune ``backbone`` (a backbone name or checkpoint file, or ``"none"`` to train from scratch) on a dataset
    folder ``data`` (nnU-Net/MSD layout) or on explicit ``images``/``labels`` lists; write the model folder ``out``.
    Returns the model folder's path. Every input is checked before training starts.

    ``time_limit`` (seconds; 0 = none; default from the preset) fixes the number of steps from the speed measured
    in the first steps, so that the whole run (validation included) ends in about that time. ``keep_best``: keep
    the weights with the best validation Dice (default) rather than the last ones. ``step_callback(step=, phase=,
    loss=, network=, optimizer=)`` is called after every optimiser step (raising in it cancels the run: nothing is
    written). ``arch``: the network for ``backbone="none"`` (a name or a spec; default the preset's)."""
    import torch

    from sslseg.datasets import dataset_from_lists, load_dataset
    from sslseg.device import resolve_device
    from sslseg.model_folder import check_output_folder, save_model
    from sslseg.networks import split_parameters, total_stride

    reporter = progress if isinstance(progress, Reporter) else Reporter(progress)
    started = time.monotonic()
    if out is None:
        raise UserError("give the output model folder (--out)")
    check_output_folder(out)
    torch_device, device_note = resolve_device(device)
    preset = get_preset(preset or default_preset(torch_device.type))
    for name, value in (("steps", steps), ("batch size", batch_size)):
        if value is not None and int(value) < 1:
            raise UserError(f"{name} must be at least 1")

    # --- data: read and check everything first ---
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
    if label_info:
        label_values = {int(e["value"]) for e in label_info} - {0}
    elif dataset.label_names:
        label_values = set(dataset.label_names)
    else:
        label_values = None  # every value found becomes a label
    reporter.log(f"checking {len(dataset.cases)} case(s)")
    raw = read_cases(dataset, label_values, expected_channels)
    in_channels = raw[0][1].shape[0]
    label_list = _labels_from(dataset, label_info, [r[2] for r in raw])
    num_classes = len(label_list) + 1
    train_ids, val_ids = _split([r[0] for r in raw], val_cases, seed, val_case_ids)

    # --- network and plan ---
    torch.manual_seed(seed)
    network, spec, plan, provenance = _load_network(backbone, preset, num_classes, in_channels, reporter, arch)
    from_scratch = provenance is None
    if not from_scratch and preset.name == "cpu" and sum(p.numel() for p in network.parameters()) > 20e6:
        reporter.log("note: this backbone is large for a CPU; expect a slow run (a GPU preset is advised)")
    train_geometries = [r[3] for r in raw if r[0] in set(train_ids)]
    if plan.get("spacing"):
        spacing = [float(s) for s in plan["spacing"]]
    else:  # nnU-Net's default target: the median spacing of the training cases
        spacing = np.median(np.asarray([g.spacing for g in train_geometries]), axis=0).tolist()
    normalization = "ct" if dataset.modality == "CT" else "zscore"
    preprocessor = Preprocessor(spacing=spacing, normalization=normalization, in_channels=in_channels)
    stride = total_stride(spec["config"]) if "strides" in spec.get("config", {}) else [16, 16, 16]
    shapes = [preprocessor.target_geometry(g).shape for g in train_geometries]
    if patch_size:
        patch = [int(p) for p in patch_size]
        if any(p % s for p, s in zip(patch, stride)):
            raise UserError(f"patch size {patch} must be a multiple of the network's total stride {stride}")
    elif preset.patch_size:
        patch = list(preset.patch_size)
    else:
        patch = choose_patch_size(shapes, stride, plan.get("patch_size") or plan.get("recommended_patch_size"),
                                  preset.max_patch_size)
    batch = int(batch_size or preset.batch_size)

    # --- preprocess once, into memory ---
    table = _label_table(label_list)
    rng = np.random.default_rng(seed)
    prepared = {r[0]: prepare_case(*r, preprocessor, table, patch, num_classes, rng) for r in raw}
    train_cases = [prepared[c] for c in train_ids]
    val_prepared = [prepared[c] for c in val_ids]
    del raw

    network.to(torch_device)
    network.train()
    amp = torch_device.type == "cuda"
    checkpointing = False
    if amp:  # cases stay padded to the larger patch: a smaller one still fits
        patch, batch, checkpointing = fit_to_memory(network, in_channels, patch, batch, stride, torch_device,
                                                    max_memory_gb, reporter)
    network.decoder.deep_supervision = True

    # --- schedule and optimiser ---
    total_steps = int(steps or preset.steps)
    if from_scratch:
        lr_max = float(max_lr or preset.scratch_lr)
        schedule = Schedule(total_steps, 0, 0, lr_max)
        fractions = (0.0, 0.0)
    else:
        lr_max = float(max_lr or preset.max_lr)
        fractions = (preset.decoder_warmup, preset.full_warmup)
        schedule = Schedule.from_fractions(total_steps, *fractions, lr_max)
    limit = preset.time_limit if time_limit is None else (float(time_limit) or None)
    if steps is not None and time_limit is None:
        limit = None  # explicit --steps wins over the preset's time limit
    encoder_params, decoder_params = split_parameters(network, spec)
    optimizer_name = optimizer or preset.optimizer

    def make_optimizer(params):
        if optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=schedule.lr(0), weight_decay=preset.weight_decay)
        return torch.optim.SGD(params, lr=schedule.lr(0), momentum=preset.momentum, nesterov=True,
                               weight_decay=preset.weight_decay)

    frozen = schedule.encoder_frozen(0)
    if frozen:
        for _, parameter in encoder_params:
            parameter.requires_grad_(False)
        optim = make_optimizer([p for _, p in decoder_params])
    else:
        optim = make_optimizer([p for _, p in encoder_params + decoder_params])
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    from monai.losses import DiceCELoss

    loss_function = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                               smooth_nr=1e-5, smooth_dr=1e-5)
    n_outputs = len(network.decoder.stages)
    ds_weights = deep_supervision_weights(n_outputs)
    sampler = PatchSampler(train_cases, patch, batch, preset.foreground_oversampling, preset.augment, seed)

    note = device_note
    if torch_device.type == "cpu" and preset.name not in ("cpu", "test"):
        note += f"; preset {preset.name} is meant for a GPU (try --preset cpu)"
    reporter.start(total_steps=schedule.total, device=str(torch_device), note=note)
    reporter.log(f"{len(train_ids)} training case(s), {len(val_ids)} validation case(s); patch {patch} (z, y, x), "
                 f"batch {batch}, spacing {[round(s, 3) for s in spacing]} mm, {normalization} normalisation")
    recipe_text = "from scratch (nnU-Net defaults, no warm-ups)" if from_scratch else \
        f"decoder warm-up {schedule.decoder_steps} + whole-network warm-up {schedule.full_steps} steps, then PolyLR"
    reporter.log(f"{spec.get('name', 'network')}, preset {preset.name}: {recipe_text}, "
                 f"{optimizer_name} max lr {lr_max:g}" + (f", time limit {limit:.0f} s" if limit else ""))

    best = {"mean": -1.0, "dice": None, "step": None, "state": None}
    history = []
    val_every = max(1, int(preset.val_every))
    step = 0
    train_started = time.monotonic()
    last_emit = 0.0
    validation_seconds = 0.0
    timing = {"step": 0, "time": train_started, "validation": 0.0}  # where the speed measurement starts
    losses = []
    while step < schedule.total:
        if frozen and not schedule.encoder_frozen(step):
            for _, parameter in encoder_params:
                parameter.requires_grad_(True)
            optim.add_param_group({"params": [p for _, p in encoder_params]})
            frozen = False
            reporter.log(f"step {step}: encoder unfrozen, whole-network warm-up")
            # whole-network steps cost more than decoder-only ones (measured: ~2x on CPU): time them afresh
            timing = {"step": step, "time": time.monotonic(), "validation": validation_seconds}
        lr = schedule.lr(step)
        for group in optim.param_groups:
            group["lr"] = lr
        images_batch, labels_batch = sampler.next_batch()
        images_batch = images_batch.to(torch_device, non_blocking=True)
        labels_batch = labels_batch.to(torch_device, non_blocking=True)
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch_device.type, dtype=torch.float16, enabled=amp):
            outputs = network(images_batch)
            loss = supervised_loss(outputs, labels_batch, loss_function, ds_weights)
        scaler.scale(loss).backward()
        scaler.unscale_(optim)
        torch.nn.utils.clip_grad_norm_([p for g in optim.param_groups for p in g["params"]], preset.grad_clip)
        scaler.step(optim)
        scaler.update()
        step += 1
        loss_value = float(loss.detach())
        losses.append(loss_value)
        phase = schedule.phase(step - 1)
        if step_callback is not None:
            step_callback(step=step, phase=phase, loss=loss_value, network=network, optimizer=optim)

        # a time limit fixes the run's length from the measured speed, after a short calibration, and corrects it
        # at each validation (whose cost is then known)
        measured = step - timing["step"]
        if limit and measured > 0 and (step == CALIBRATION_STEPS or measured == CALIBRATION_STEPS or
                                       (step > CALIBRATION_STEPS and step % val_every == 0)):
            spent = time.monotonic() - timing["time"]
            per_step = (spent - (validation_seconds - timing["validation"])) / measured
            validations = step // val_every
            per_step += (validation_seconds / validations if validations else
                         _validation_guess(per_step, val_prepared, patch, batch)) / val_every if val_prepared else 0.0
            remaining = limit - (time.monotonic() - started)
            new_total = step + max(1, int(remaining / max(per_step, 1e-6)))
            if steps is not None:
                new_total = min(new_total, int(steps))
            schedule = _rescale(schedule, new_total, step, fractions)
            if step == CALIBRATION_STEPS:
                # about six validations over the run, whatever the machine's speed
                val_every = max(CALIBRATION_STEPS, min(val_every, schedule.total // 6))
                reporter.log(f"time limit {limit:.0f} s: {schedule.total} steps at {per_step:.2f} s/step")
        if limit and time.monotonic() - started > 1.1 * limit and step < schedule.total:
            reporter.log(f"time limit reached at step {step}")
            schedule = _rescale(schedule, max(step, schedule.poly_start + 1), step, fractions)

        val_now = val_prepared and (step % val_every == 0 or step == schedule.total)
        if val_now:
            val_start = time.monotonic()
            scores = validate(network, val_prepared, patch, torch_device, num_classes)
            validation_seconds += time.monotonic() - val_start
            mean = float(np.mean(scores))
            per_label = {label["name"]: float(s) for label, s in zip(label_list, scores)}
            history.append({"step": step, "mean_dice": mean, "dice": per_label,
                            "seconds": round(time.monotonic() - started, 1)})
            reporter.validation(step, per_label, mean)
            if mean > best["mean"] and (keep_best or step == schedule.total):
                best = {"mean": mean, "dice": per_label, "step": step,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}}
        now = time.monotonic()
        if step == 1 or step == schedule.total or val_now or now - last_emit >= 0.5:
            reporter.progress(phase=phase, step=step, total=schedule.total, loss=loss_value, lr=lr)
            last_emit = now
        if not math.isfinite(loss_value):
            raise UserError(f"training diverged at step {step} (loss {loss_value}); try a lower --max-lr or another "
                            f"preset. No model was written.")

    train_seconds = time.monotonic() - train_started
    state = best["state"] if best["state"] is not None else \
        {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
    network.decoder.deep_supervision = False
    meta = {
        "network": spec,
        "in_channels": in_channels,
        "channel_names": list(dataset.channel_names),
        "labels": label_list,
        "preprocessing": {**preprocessor.to_dict()},
        "patch_size": patch,
        "backbone": provenance,
        "recipe": {
            "preset": preset.name,
            "from_scratch": from_scratch,
            "optimizer": optimizer_name,
            "momentum": preset.momentum if optimizer_name == "sgd" else None,
            "weight_decay": preset.weight_decay,
            "schedule": schedule.to_dict(),
            "steps_run": step,
            "batch_size": batch,
            "loss": "Dice + cross-entropy (MONAI DiceCELoss), deep supervision",
            "grad_clip": preset.grad_clip,
            "mixed_precision": amp,
            "gradient_checkpointing": checkpointing,
            "foreground_oversampling": preset.foreground_oversampling,
            "augmentation": preset.augment,
            "time_limit_s": limit,
            "seed": seed,
        },
        "training": {
            "train_cases": train_ids,
            "val_cases": val_ids,
            "device": str(torch_device),
            "seconds": round(time.monotonic() - started, 1),
            "train_seconds": round(train_seconds, 1),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "data": os.path.abspath(data) if data is not None else None,
        },
        "validation": {
            "kept_step": best["step"],
            "mean_dice": best["mean"] if best["dice"] is not None else None,
            "dice": best["dice"],
            "history": history,
            "note": None if val_ids and keep_best else "the last weights are kept",
        },
    }
    path = save_model(out, meta, state)
    reporter.done(model=path)
    return path


def _validation_guess(per_step, val_cases, patch, batch):
    """Before the first validation: a validation pass costs roughly one forward pass per window (about a third of
    a training step's time per sample) for each validation case."""
    if not val_cases:
        return 0.0
    windows = sum(max(1, int(np.prod([math.ceil(s / (p * 0.75)) for s, p in zip(c.label.shape, patch)])))
                  for c in val_cases)
    return windows * per_step / max(batch, 1) / 3.0


def _rescale(schedule: Schedule, new_total: int, step: int, fractions) -> Schedule:
    """The schedule stretched or shrunk to ``new_total`` steps at ``step``: warm-up boundaries that are still ahead
    follow the preset's fractions; phases already entered are kept."""
    decoder, full = schedule.decoder_steps, schedule.full_steps
    if decoder or full:
        if step < decoder:
            decoder = max(step + 1, round(new_total * fractions[0]))
            full = max(1, round(new_total * fractions[1])) if full else 0
        elif step < decoder + full:
            full = max(step - decoder + 1, round(new_total * fractions[1]))
    new_total = max(int(new_total), decoder + full + 1, step)
    return Schedule(new_total, decoder, full, schedule.max_lr, schedule.exponent)


# ``sslseg.finetune(...)`` calls finetune() even after ``import sslseg.finetune`` replaced the lazy export
make_callable(__name__)
