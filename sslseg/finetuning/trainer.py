"""The fine-tuning run: a ``FineTuner`` whose ``run()`` is a short list of named steps, after nnU-Net v2's
``nnUNetTrainer`` (Isensee et al., Nature Methods 2021): variants are subclasses that override a step.

The recipe, with a backbone (Wald et al., "Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025):

1. decoder warm-up: the encoder and the stem are frozen (``requires_grad=False`` and absent from the optimiser,
   named through ``sslseg.networks.split_parameters`` so that the decoder's reference to the encoder cannot leak),
   the lr ramps linearly to the max lr;
2. whole-network linear warm-up (the encoder joins the optimiser);
3. PolyLR (exponent 0.9) from the max lr 1e-3.

SGD with Nesterov momentum 0.99 and weight decay 3e-5, Dice + cross-entropy with deep supervision, gradient clipping
at 12, mixed precision on CUDA (bf16, or fp16 with a GradScaler on GPUs without bf16). The variants:

- ``FineTuner``: from a pretrained backbone, the recipe above;
- ``ScratchTrainer``: ``backbone="none"``, nnU-Net's from-scratch defaults (lr 1e-2, no warm-ups);
- ``ModelTuner``: ``init_model=``, continues from a fine-tuned model (every weight, its preprocessing plan) and
  runs the recipe's warm-ups again.

Presets (sslseg.presets) set the step counts; the CPU preset swaps SGD for AdamW.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import time

import numpy as np
import torch

from sslseg.errors import UserError
from sslseg.finetuning import data as training_data
from sslseg.finetuning.budget import TimeBudget
from sslseg.finetuning.evaluation import VALIDATION_OVERLAP, validate
from sslseg.finetuning.loss import deep_supervision_weights, make_loss_function, supervised_loss
from sslseg.finetuning.memory import fit_to_memory
from sslseg.finetuning.options import FinetuneOptions, check_finetune_options
from sslseg.finetuning.planning import foreground_box, make_plan
from sslseg.finetuning.start import from_backbone, from_model, from_scratch
from sslseg.inference import window_count
from sslseg.presets import default_preset, get_preset
from sslseg.progress import Reporter
from sslseg.schedule import Schedule

PROGRESS_INTERVAL = 0.5  # seconds between progress events (besides the first, the last and validations)
# the options sslseg.finetuning.options checks and normalises (--pack is the command line's alone)
CHECKED_OPTIONS = tuple(f.name for f in dataclasses.fields(FinetuneOptions) if f.name != "pack")


@dataclasses.dataclass
class Request:
    """The keyword arguments of :func:`finetune` (see there)."""
    backbone: object = "none"
    data: object = None
    images: object = None
    labels: object = None
    out: object = None
    preset: str | None = None
    device: str = "auto"
    steps: int | None = None
    val_cases: int | None = None
    seed: int = 0
    progress: object = "bar"
    label_names: dict | None = None
    label_info: list | None = None
    time_limit: float | None = None
    max_memory_gb: float | None = None
    batch_size: int | None = None
    patch_size: list | None = None
    val_case_ids: list | None = None
    max_lr: float | None = None
    optimizer: str | None = None
    train_case_ids: list | None = None
    keep_best: bool = True
    step_callback: object = None
    arch: object = None
    init_model: object = None
    resume: bool = False
    checkpoint_every: float | None = None
    config: str = "auto"
    unlabelled: object = None


class FineTuner:
    """Fine-tunes a pretrained backbone with the recipe of Wald et al.; ``run()`` returns the model folder."""

    def __init__(self, request: Request):
        self.request = request
        self.reporter = request.progress if isinstance(request.progress, Reporter) else Reporter(request.progress)
        self.started = time.monotonic()
        self.held = contextlib.ExitStack()  # the --out lock (claim_output), released by finetune() however run() ends

    def run(self) -> str:
        """The whole run, one named step after the other."""
        self.check_options()
        self.read_data()
        self.claim_output()
        self.build_network()
        self.plan_preprocessing()
        self.preprocess()
        self.find_single_pieces()
        self.fit_memory()
        self.configure_optimisation()
        self.announce()
        self.train()
        self.choose_postprocessing()
        return self.save()

    # --- before training -------------------------------------------------------------------------------------
    def check_options(self):
        """Every option checked (and normalised) and the device resolved before any work."""
        from sslseg.device import resolve_device

        r = self.request
        options = check_finetune_options(**{name: getattr(r, name) for name in CHECKED_OPTIONS}, pack=None)
        self.request = r = dataclasses.replace(r, **{name: getattr(options, name) for name in CHECKED_OPTIONS})
        if r.config == "2d" and (r.backbone not in (None, "", "none") or r.arch is not None or r.init_model):
            raise UserError("--config 2d needs a network planned from the data (--backbone none); a pretrained "
                            "backbone, --init-model or --arch keeps its own configuration")
        self.device, self.device_note = resolve_device(r.device)
        self.preset = get_preset(r.preset or default_preset(self.device.type))

    def claim_output(self):
        """One run per --out at a time (``sslseg.finetuning.resume.hold_output``); the checkpoint of an interrupted
        run found, to continue with ``resume`` (else replaced at this run's first checkpoint)."""
        from sslseg.finetuning import resume

        self.held.enter_context(resume.hold_output(self.request.out))
        self.checkpointer = resume.Checkpointer(self.request.out, self.request.checkpoint_every, self.reporter)
        self.saved = self.checkpointer.load() if self.request.resume else None
        if self.request.resume and self.saved is None:
            self.reporter.log(f"--resume: no checkpoint of an interrupted run at {self.checkpointer.path}; "
                              "starting from step 0")
        elif not self.request.resume and self.checkpointer.exists():
            self.reporter.log(f"note: {self.checkpointer.path} holds an interrupted run; this run starts afresh "
                              "and replaces it (--resume continues it)")

    def read_data(self):
        """Every case read and checked; the labels, the channel count and the train/validation split fixed."""
        r = self.request
        dataset, expected_channels = training_data.load_training_data(
            r.data, r.images, r.labels, r.label_names, r.train_case_ids, r.val_case_ids)
        values = training_data.allowed_label_values(dataset, r.label_info)
        self.reporter.log(f"checking {len(dataset.cases)} case(s)")
        self.raw = training_data.read_cases(dataset, values, expected_channels)
        if not self.raw:
            raise UserError("no labelled cases to train on")
        self.dataset = dataset
        self.in_channels = self.raw[0].image.shape[0]
        self.labels = training_data.labels_from(dataset, r.label_info, [case.label for case in self.raw])
        self.num_classes = len(self.labels) + 1
        self.train_ids, self.val_ids = training_data.split_cases(
            [case.case_id for case in self.raw], r.val_cases, r.seed, r.val_case_ids)
        if r.val_cases is None and r.val_case_ids is None and not self.val_ids:
            self.reporter.log(f"no validation cases: below {training_data.MIN_CASES_FOR_VALIDATION} labelled cases "
                              f"every case trains and the last weights are kept (--val-cases N holds N out)")

    def build_network(self):
        """The starting network, initialised from the seed (the same seed gives the same network)."""
        torch.manual_seed(self.request.seed)
        self.start = self.starting_point()
        self.network, self.spec = self.start.network, self.start.spec
        if not self.start.from_scratch and self.preset.name == "cpu" and \
                sum(p.numel() for p in self.network.parameters()) > 20e6:
            self.reporter.log("note: this network is large for a CPU; expect a slow run (a GPU preset is advised)")

    def starting_point(self):
        return from_backbone(self.request.backbone, self.num_classes, self.in_channels, self.reporter)

    def plan_preprocessing(self):
        """Spacing, normalisation, patch and batch around the starting network (sslseg.finetuning.planning). From
        scratch the plan came first (``ScratchTrainer.starting_point``): it chose the network's strides and
        kernels."""
        if getattr(self, "plan", None) is None:
            self.plan = self.data_plan(self.start.stride, self.start.plan, self.start.inherited)
        self.preprocessor = self.plan.preprocessor()
        self.patch, self.batch = list(self.plan.patch_size), self.plan.batch_size

    def data_plan(self, stride, network_plan=None, inherited=None):
        """The plan from the training cases; ``stride`` None: with a network planned from scratch."""
        train_ids = set(self.train_ids)
        train = [case for case in self.raw if case.case_id in train_ids]
        boxes = [foreground_box(case.label, list(reversed(case.geometry.spacing))) for case in train]
        return make_plan([case.geometry for case in train], self.dataset.modality, self.in_channels, self.preset,
                         stride=stride, network_plan=network_plan, inherited=inherited,
                         patch_size=self.request.patch_size, batch_size=self.request.batch_size,
                         foreground_boxes=boxes, config=self.request.config)

    def preprocess(self):
        """Every case resampled, normalised and padded once, into memory."""
        table = training_data.label_table(self.labels)
        rng = np.random.default_rng(self.request.seed)
        prepared = {case.case_id: training_data.prepare_case(case, self.preprocessor, table, self.patch,
                                                             self.num_classes, rng) for case in self.raw}
        self.train_cases = [prepared[c] for c in self.train_ids]
        self.val_cases = [prepared[c] for c in self.val_ids]
        self.raw = None

    def find_single_pieces(self):
        """The classes that are one piece in every training case: candidates for largest-component
        post-processing (``sslseg.postprocessing``), checked on the validation cases during training."""
        from sslseg.postprocessing import single_piece_classes

        self.component_classes = single_piece_classes([case.label for case in self.train_cases], self.num_classes)

    def fit_memory(self):
        """Mixed precision as ``sslseg.device.mixed_precision`` chooses (bf16 without a scaler where the GPU has
        it); on CUDA cuDNN's autotuner, and patch and batch shrunk (gradient checkpointing first) until a step fits
        under ``--max-memory-gb``, which then binds the whole run."""
        from sslseg.device import mixed_precision
        from sslseg.finetuning.memory import hold_to_limit

        self.network.to(self.device)
        self.network.train()
        self.network.decoder.deep_supervision = True
        self.precision = mixed_precision(self.device)
        self.amp = self.precision.enabled
        self.checkpointing, self.memory_fit = False, None
        if self.device.type != "cuda":
            return
        # patch and batch stay fixed for the run: the autotuner's first-step cost is paid back many times.
        # torch.compile stays off: its compile time (minutes for ResEnc-L) is unmeasured against a 5-minute run.
        optimizer = self.request.optimizer or self.preset.optimizer
        self.memory_fit = fit_to_memory(  # cases stay padded to the larger patch: a smaller one still fits
            self.network, self.in_channels, self.patch, self.batch, self.plan.stride, self.device,
            self.request.max_memory_gb, self.reporter, self.precision, 2 if optimizer == "adamw" else 1)
        self.patch, self.batch = self.memory_fit.patch, self.memory_fit.batch_size
        self.checkpointing = self.memory_fit.checkpointing
        if self.request.max_memory_gb:
            hold_to_limit(self.device, self.memory_fit.limit)
        torch.backends.cudnn.benchmark = True  # after the probe, whose peak its trial workspaces would inflate
        torch.cuda.reset_peak_memory_stats(self.device)

    # --- optimisation ----------------------------------------------------------------------------------------
    def make_schedule(self, total_steps: int):
        """(schedule, warm-up fractions, max lr): the recipe's three phases."""
        lr_max = float(self.request.max_lr or self.preset.max_lr)
        fractions = (self.preset.decoder_warmup, self.preset.full_warmup)
        return Schedule.from_fractions(total_steps, *fractions, lr_max), fractions, lr_max

    def make_optimizer(self, params):
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self.schedule.lr(0), weight_decay=self.preset.weight_decay)
        return torch.optim.SGD(params, lr=self.schedule.lr(0), momentum=self.preset.momentum, nesterov=True,
                               weight_decay=self.preset.weight_decay)

    def configure_optimisation(self):
        """Schedule, time budget, optimiser (the encoder frozen when the schedule starts with a decoder warm-up),
        loss and patch sampler."""
        from sslseg.networks import split_parameters

        r, preset = self.request, self.preset
        self.schedule, self.fractions, self.lr_max = self.make_schedule(int(r.steps or preset.steps))
        self.time_limit = self.effective_time_limit()
        self.encoder_params, self.decoder_params = split_parameters(self.network, self.spec)
        self.optimizer_name = r.optimizer or preset.optimizer
        self.frozen = self.schedule.encoder_frozen(0)
        if self.frozen:
            for _, parameter in self.encoder_params:
                parameter.requires_grad_(False)
            self.optimizer = self.make_optimizer([p for _, p in self.decoder_params])
        else:
            self.optimizer = self.make_optimizer([p for _, p in self.encoder_params + self.decoder_params])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)  # fp16 only
        self.loss_function = make_loss_function()
        self.ds_weights = deep_supervision_weights(len(self.network.decoder.stages))
        self.sampler = training_data.PatchSampler(self.train_cases, self.patch, self.batch,
                                                  preset.foreground_oversampling, preset.augment, r.seed,
                                                  rotation_axis=self.plan.slice_axis if self.plan.slice_axis
                                                  is not None else "auto")  # slice-wise: in-plane only
        windows = sum(window_count(case.label.shape, self.patch, VALIDATION_OVERLAP) for case in self.val_cases)
        self.budget = TimeBudget(self.time_limit, self.started, self.fractions, preset.val_every, r.steps,
                                 validation_windows=windows, batch_size=self.batch)

    def effective_time_limit(self):
        """Seconds, or None: the option, else the preset's; an explicit step count without one means no limit."""
        r = self.request
        if r.steps is not None and r.time_limit is None:
            return None
        return self.preset.time_limit if r.time_limit is None else (float(r.time_limit) or None)

    def recipe_text(self) -> str:
        return (f"decoder warm-up {self.schedule.decoder_steps} + whole-network warm-up {self.schedule.full_steps} "
                f"steps, then PolyLR")

    def announce(self):
        """The start event and what the run will do."""
        note = self.device_note
        if self.device.type == "cpu" and self.preset.name not in ("cpu", "test"):
            note += f"; preset {self.preset.name} is meant for a GPU (try --preset cpu)"
        self.reporter.start(total_steps=self.schedule.total, device=str(self.device), note=note)
        for reason in self.plan.reasons:
            self.reporter.log(f"plan: {reason}")
        spacing = [round(s, 3) for s in self.plan.spacing]
        self.reporter.log(f"{len(self.train_ids)} training case(s), {len(self.val_ids)} validation case(s); patch "
                          f"{self.patch} (z, y, x), batch {self.batch}, spacing {spacing} mm, "
                          f"{self.plan.normalization} normalisation")
        limit = f", time limit {self.time_limit:.0f} s" if self.time_limit else ""
        self.reporter.log(f"{self.spec.get('name', 'network')}, preset {self.preset.name}: {self.recipe_text()}, "
                          f"{self.optimizer_name} max lr {self.lr_max:g}{limit}")

    # --- the training loop -----------------------------------------------------------------------------------
    def train(self):
        """Optimiser steps until the schedule ends (its length may change under a time limit). Batches come from
        a ``BatchFeed`` (loader processes and pinned memory on CUDA); the loss stays on the device and is read only
        when reported, so that the GPU never waits for the host between steps."""
        from sslseg.finetuning.loader import BatchFeed

        self.step, self.losses, self.history, self.last_emit = 0, collections.deque(maxlen=20), [], 0.0
        self.nonfinite = torch.zeros((), dtype=torch.int32, device=self.device)  # non-finite losses so far
        self.best = {"mean": -1.0, "dice": None, "step": None, "state": None}
        self.train_started = time.monotonic()
        self.budget.start_window(0, self.train_started)
        self.resume_saved()
        self.feed = BatchFeed(self.sampler, self.device, first_step=self.step)
        try:
            while self.step < self.schedule.total:
                self.maybe_unfreeze()
                loss, lr = self.train_step()
                phase = self.schedule.phase(self.step - 1)
                if self.request.step_callback is not None:
                    self.request.step_callback(step=self.step, phase=phase, loss=float(loss), network=self.network,
                                               optimizer=self.optimizer)
                if self.device.type == "cuda" and self.budget.estimate_due(self.step):
                    torch.cuda.synchronize(self.device)  # the time budget times finished steps
                self.maybe_rescale()
                validated = self.maybe_validate()
                if validated:
                    self.feed.clock.pause()  # validation is no wait for data
                self.maybe_report(phase, loss, lr, validated)
                self.checkpointer.maybe_save(self)
        finally:
            self.feed.close()
            if self.memory_fit is not None and self.request.max_memory_gb:
                from sslseg.finetuning.memory import release_limit

                release_limit(self.device)
        self.train_seconds = time.monotonic() - self.train_started
        self.report_resources()

    def resume_saved(self):
        """With ``resume``: continue from the interrupted run's checkpoint (``sslseg.finetuning.resume``)."""
        from sslseg.finetuning.resume import restore

        if self.saved is not None:
            restore(self, self.saved, self.checkpointer.path)
            self.saved = None
            self.reporter.log(f"resumed at step {self.step} of {self.schedule.total} from {self.checkpointer.path}")

    def maybe_unfreeze(self):
        """At the end of the decoder warm-up the encoder joins the optimiser."""
        if not self.frozen or self.schedule.encoder_frozen(self.step):
            return
        for _, parameter in self.encoder_params:
            parameter.requires_grad_(True)
        self.optimizer.add_param_group({"params": [p for _, p in self.encoder_params]})
        self.frozen = False
        self.reporter.log(f"step {self.step}: encoder unfrozen, whole-network warm-up")
        # whole-network steps cost more than decoder-only ones (measured: ~2x on CPU): time them afresh
        self.budget.start_window(self.step, time.monotonic())

    def train_step(self):
        """One optimiser step on the batch of this step; returns (the loss as a tensor on the device, lr)."""
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.feed.batch(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        precision = self.precision
        with torch.autocast(device_type=self.device.type, dtype=precision.dtype, enabled=precision.enabled):
            outputs = self.network(images)
            loss = supervised_loss(outputs, labels, self.loss_function, self.ds_weights)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                       self.preset.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.feed.clock.step_ended()
        self.step += 1
        loss = loss.detach()
        self.losses.append(loss)
        self.nonfinite += ~torch.isfinite(loss)
        return loss, lr

    def maybe_rescale(self):
        """Under a time limit: the run's length refitted to the measured speed; cut short past 1.1x the limit."""
        if self.budget.estimate_due(self.step):
            self.schedule, per_step = self.budget.rescale(self.schedule, self.step, time.monotonic())
            if self.step == self.budget.calibration_steps:
                self.reporter.log(f"time limit {self.time_limit:.0f} s: {self.schedule.total} steps at "
                                  f"{per_step:.2f} s/step")
        cut = self.budget.overrun(self.schedule, self.step, time.monotonic())
        if cut is not None:
            self.reporter.log(f"time limit reached at step {self.step}")
            self.schedule = cut

    def maybe_validate(self) -> bool:
        """Dice on the validation cases every ``val_every`` steps and at the end; the best weights kept."""
        if not self.val_cases or (self.step % self.budget.val_every and self.step != self.schedule.total):
            return False
        began = time.monotonic()
        scores, component_scores = validate(self.network, self.val_cases, self.patch, self.device, self.num_classes,
                                            component_classes=self.component_classes)
        self.budget.add_validation(time.monotonic() - began)
        mean = float(np.mean(scores))
        per_label = {label["name"]: float(s) for label, s in zip(self.labels, scores)}
        self.history.append({"step": self.step, "mean_dice": mean, "dice": per_label,
                             "seconds": round(time.monotonic() - self.started, 1)})
        self.reporter.validation(self.step, per_label, mean)
        if mean > self.best["mean"] and (self.request.keep_best or self.step == self.schedule.total):
            self.best = {"mean": mean, "dice": per_label, "step": self.step, "state": self.cpu_state(),
                         "component_scores": component_scores}
        return True

    def maybe_report(self, phase, loss, lr, validated):
        """A progress event at the first and last steps, after a validation, and at most every 0.5 s otherwise.
        Only then is the loss read from the device; a non-finite loss at any step since stops the run."""
        now = time.monotonic()
        if not (self.step == 1 or self.step == self.schedule.total or validated or
                now - self.last_emit >= PROGRESS_INTERVAL):
            return
        value, bad = torch.stack([loss.float(), self.nonfinite.float()]).tolist()  # one host sync
        if bad or not math.isfinite(value):
            raise UserError(f"training diverged by step {self.step} (loss {value}); try a lower --max-lr or "
                            f"another preset. No model was written.")
        self.feed.clock.collect()
        self.reporter.progress(phase=phase, step=self.step, total=self.schedule.total, loss=value, lr=lr)
        self.last_emit = now

    def report_resources(self):
        """How the run used the device: the share of step time spent waiting for data and, on CUDA, the memory
        peaks (log and model.json)."""
        from sslseg.finetuning.memory import peaks

        share = self.feed.clock.share()
        self.loader_stats = {"workers": self.feed.workers, "pin_memory": self.feed.pin_memory,
                             "data_wait_share": None if share is None else round(share, 4)}
        self.memory_stats = None
        text = f"data: {self.feed.describe()}"
        if share is not None:
            text += f"; the {self.device.type.upper()} waited for data {100 * share:.1f} % of the step time"
        self.reporter.log(text)
        if self.memory_fit is not None:
            self.memory_stats = {**self.memory_fit.to_dict(), **peaks(self.device)}
            self.reporter.log(f"GPU memory: peak {self.memory_stats['peak_reserved_gb']} GB reserved "
                              f"({self.memory_stats['peak_allocated_gb']} GB allocated), limit "
                              f"{self.memory_stats['limit_gb']} GB")

    def choose_postprocessing(self):
        """Largest-component post-processing for the single-piece classes whose validation Dice (of the kept
        weights) it does not lower; all of them without validation cases (``sslseg.postprocessing``)."""
        from sslseg.postprocessing import choose_largest_component

        raw = None if self.best["dice"] is None else [self.best["dice"][label["name"]] for label in self.labels]
        values, reasons = choose_largest_component(self.labels, self.component_classes, raw,
                                                   self.best.get("component_scores"))
        self.postprocessing = {"largest_component": values, "reasons": reasons}
        for reason in reasons:
            self.reporter.log(f"post-processing: {reason}")

    def cpu_state(self) -> dict:
        from sslseg.model_folder import cpu_state_dict

        return cpu_state_dict(self.network.state_dict(), copy=True)

    # --- the model folder ------------------------------------------------------------------------------------
    def save(self) -> str:
        """The kept weights (best validation, else the last) and model.json, written atomically."""
        from sslseg.model_folder import save_model

        state = self.best["state"] if self.best["state"] is not None else self.cpu_state()
        self.network.decoder.deep_supervision = False
        path = save_model(self.request.out, self.model_meta(), state)
        self.checkpointer.remove()  # the run is finished: nothing to resume
        seconds = self.checkpointer.seconds
        if seconds:
            self.reporter.log(f"{len(seconds)} checkpoint(s) of {self.checkpointer.size / 1e6:.1f} MB for --resume: "
                              f"mean {sum(seconds) / len(seconds):.3f} s, at most {max(seconds):.3f} s each")
        self.reporter.done(model=path)
        return path

    def model_meta(self) -> dict:
        meta = {
            "network": self.spec,
            "in_channels": self.in_channels,
            "channel_names": list(self.dataset.channel_names),
            "labels": self.labels,
            "preprocessing": {**self.preprocessor.to_dict()},
            "patch_size": self.patch,
            "backbone": self.start.backbone,
            "plan": self.plan_meta(),
            "postprocessing": self.postprocessing,
            "recipe": self.recipe_meta(),
            "training": self.training_meta(),
            "validation": {
                "kept_step": self.best["step"],
                "mean_dice": self.best["mean"] if self.best["dice"] is not None else None,
                "dice": self.best["dice"],
                "history": self.history,
                "note": None if self.val_ids and self.request.keep_best else "the last weights are kept",
            },
        }
        if self.start.initial_model is not None:
            meta["initial_model"] = self.start.initial_model
        return meta

    def plan_meta(self) -> dict:
        """What the plan chose and why; patch and batch as trained (fitting GPU memory may have shrunk them)."""
        plan = self.plan.to_dict()
        if [plan["patch_size"], plan["batch_size"]] != [list(self.patch), self.batch]:
            plan["reasons"].append(f"patch {list(self.patch)}, batch {self.batch}: fitted to the GPU's memory")
        return {**plan, "patch_size": list(self.patch), "batch_size": self.batch}

    def recipe_meta(self) -> dict:
        preset = self.preset
        return {
            "preset": preset.name,
            "from_scratch": self.start.from_scratch,
            "optimizer": self.optimizer_name,
            "momentum": preset.momentum if self.optimizer_name == "sgd" else None,
            "weight_decay": preset.weight_decay,
            "schedule": self.schedule.to_dict(),
            "steps_run": self.step,
            "batch_size": self.batch,
            "loss": "Dice + cross-entropy (MONAI DiceCELoss), deep supervision",
            "grad_clip": preset.grad_clip,
            "mixed_precision": self.amp,
            "precision": str(self.precision.dtype).replace("torch.", ""),
            "grad_scaler": self.precision.use_scaler,
            "gradient_checkpointing": self.checkpointing,
            "foreground_oversampling": preset.foreground_oversampling,
            "augmentation": {**preset.augment, "rotation": training_data.rotation_text(self.plan.anisotropy_axis)},
            "time_limit_s": self.time_limit,
            "seed": self.request.seed,
        }

    def training_meta(self) -> dict:
        data = self.request.data
        return {
            "train_cases": self.train_ids,
            "val_cases": self.val_ids,
            "device": str(self.device),
            "seconds": round(time.monotonic() - self.started, 1),
            "train_seconds": round(self.train_seconds, 1),
            "final_loss": float(torch.stack(list(self.losses)).float().mean()) if self.losses else None,
            "data_loader": self.loader_stats,
            "gpu_memory": self.memory_stats,
            "data": os.path.abspath(data) if data is not None else None,
        }


class ScratchTrainer(FineTuner):
    """``backbone="none"``: a fresh network with nnU-Net's from-scratch defaults (no warm-ups, lr 1e-2; the cpu
    preset: AdamW at its own ``scratch_lr``)."""

    def starting_point(self):
        """The network the data plan chose (the preset's network with planned strides and kernels); an explicit
        ``arch`` is built as given, and the plan adapts around it."""
        if self.request.arch is not None:
            return from_scratch(self.request.arch, self.preset.arch, self.num_classes, self.in_channels)
        self.plan = self.data_plan(stride=None)
        return from_scratch(self.plan.spec, self.preset.arch, self.num_classes, self.in_channels)

    def make_schedule(self, total_steps: int):
        lr_max = float(self.request.max_lr or self.preset.scratch_lr)
        return Schedule(total_steps, 0, 0, lr_max), (0.0, 0.0), lr_max

    def recipe_text(self) -> str:
        return "from scratch (nnU-Net defaults, no warm-ups)"


class ModelTuner(FineTuner):
    """``init_model=``: continues from a fine-tuned model (a folder or ``.sslmodel`` file): its network and every
    weight (a fresh segmentation head when the label count differs), its spacing, normalisation and patch; the
    recipe's warm-ups run again, so the decoder (and a new head) adapts before the encoder moves."""

    def check_options(self):
        from sslseg.model_folder import load_model

        if self.request.backbone not in (None, "", "none"):
            raise UserError("give either --backbone or --init-model, not both")
        super().check_options()
        self.initial = load_model(self.request.init_model)

    def starting_point(self):
        return from_model(self.initial, self.num_classes, self.in_channels, self.reporter)


def trainer_class(request: Request) -> type:
    """The variant a request asks for."""
    if request.init_model is not None:
        return ModelTuner
    return ScratchTrainer if request.backbone in (None, "", "none") else FineTuner


def finetune(backbone="none", data=None, images=None, labels=None, out=None, preset=None, device="auto",
             steps=None, val_cases=None, seed=0, progress="bar", label_names=None, label_info=None,
             time_limit=None, max_memory_gb=None, batch_size=None, patch_size=None, val_case_ids=None,
             max_lr=None, optimizer=None, train_case_ids=None, keep_best=True,
             step_callback=None, arch=None, init_model=None, resume=False, checkpoint_every=None,
             config="auto", unlabelled=None):
    """Fine-tune ``backbone`` (a backbone name or checkpoint file, or ``"none"`` to train from scratch) on a dataset
    folder ``data`` (nnU-Net/MSD layout) or on explicit ``images``/``labels`` lists; write the model folder ``out``.
    Returns the model folder's path. Every input is checked before training starts.

    ``init_model``: continue from a fine-tuned model (a model folder or ``.sslmodel`` file) instead of a backbone:
    its network and weights (a fresh segmentation head when the label count differs) and its preprocessing plan;
    the recipe's warm-ups run again. ``resume``: continue the interrupted run of ``out`` from its checkpoint, saved
    every ``checkpoint_every`` seconds (default 300; 0 = none) beside ``out`` (``sslseg.finetuning.resume``).
    ``time_limit`` (seconds; 0 = none; default from the preset) fixes the number
    of steps from the speed measured in the first steps, so that the whole run (validation included) ends in about
    that time. ``keep_best``: keep the weights with the best validation Dice (default) rather than the last ones.
    ``step_callback(step=, phase=, loss=, network=, optimizer=)`` is called after every optimiser step (raising in it
    cancels the run: nothing is written). ``arch``: the network for ``backbone="none"`` (a name or a spec; default
    the preset's). ``config``: "auto" (default: slice-wise 2D for thick-slice data, else 3D; the reason is logged and
    stored in model.json's ``plan``), "2d" or "3d"; a backbone or ``init_model`` keeps its own. ``unlabelled``: a
    folder or list file of unlabelled images of the same kind, used within the same total time
    (``sslseg.finetuning.unlabelled``: pseudo-labels from a first round, then a second round).

    Example::

        import sslseg
        model_dir = sslseg.finetune("none", data="../shared/data/Task04_Hippocampus", out="models/hippo",
                                    preset="cpu", steps=300, progress="bar")
    """
    request = Request(**locals())  # every keyword argument above, by name

    def train(phase):
        trainer = trainer_class(phase)(phase)
        with trainer.held:  # the --out lock, released however the run ends
            return trainer.run()

    if unlabelled is not None:
        from sslseg.finetuning.unlabelled import finetune_with_unlabelled

        return finetune_with_unlabelled(request, train=train)
    return train(request)
