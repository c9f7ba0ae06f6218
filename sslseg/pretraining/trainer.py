"""The pretraining run: S3D / MAE / Volume Fusion on a ResidualEncoderUNet, single process or DDP under torchrun.

:class:`PretrainingRun` is the run; :meth:`PretrainingRun.run` lists its steps (check the options, find the images,
prepare the output folder and the data, build the model, resume, train, save, export, register), each a short
method, in the manner of nnU-Net v2's ``nnUNetTrainer.run_training`` (Isensee et al., Nature Methods 2021;
github.com/MIC-DKFZ/nnUNet). What differs between methods lives in :mod:`sslseg.pretraining.methods`.

Optimisation follows Wald et al. (arXiv:2410.23132): SGD lr 1e-2, Nesterov momentum 0.99, weight decay 3e-5,
PolyLR (exponent 0.9; :class:`sslseg.schedule.Schedule` without warm-ups), mixed precision on CUDA, gradient
clipping at 12. ``out/checkpoint_latest.pth`` is written atomically every ``save_every`` steps (and when a run is
cancelled by SIGTERM or stopped at ``stop_at``); ``resume=True`` restores model, optimiser, grad scaler, step, loss
history and RNG state. Batches and masks are seeded per step, so a resumed run continues exactly as if never stopped.

Distributed: launched by torchrun (``WORLD_SIZE`` > 1) it uses NCCL on GPUs and gloo on CPU; each rank trains on
its own shard of the images; rank 0 is the only one that writes checkpoints, the final backbone and progress.

Example::

    config = PretrainConfig("s3d", images="/data/unlabelled", out="/runs/s3d", steps=1000)
    result = PretrainingRun(config, PretrainReporter("bar")).run()
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict

from sslseg.atomic import remove_stale_partials, torch_save_atomic, write_json_atomic
from sslseg.device import mixed_precision, resolve_device
from sslseg.errors import UserError
from sslseg.pretraining import data
from sslseg.pretraining.config import PretrainConfig, check_options, check_patch_fits, with_device_defaults
from sslseg.pretraining.distributed import CancelRequest, Distributed
from sslseg.pretraining.reporting import PretrainReporter
from sslseg.schedule import Schedule


class PretrainingRun:
    """One run of :class:`PretrainConfig`; ``run()`` returns ``{"checkpoint", "out", "steps", "final_loss",
    "losses", "validation", "registered", "stopped"}`` (``checkpoint`` is None on ranks other than 0 and when
    stopped early)."""

    def __init__(self, config: PretrainConfig, reporter=None):
        self.config = config
        self.dist = Distributed()
        reporter = reporter or PretrainReporter("none")
        self.reporter = reporter if self.dist.is_main else PretrainReporter("none")
        self.start_step = self.step = 0
        self.loss_history, self.validation_history = [], []
        self.lr = config.lr

    def run(self) -> dict:
        """The steps of a run, in order; each is a method below (a subclass may override any one)."""
        self.check_options()
        paths = self.find_images()
        self.choose_device()
        self.start_processes()
        try:
            self.prepare_output()
            self.prepare_data(paths)
            self.build_model()
            self.resume()
            self.report_start(len(paths))
            stopped = self.train()
            self.save_latest()
            result = self.result(stopped)
            if not stopped and self.dist.is_main:
                result["checkpoint"] = self.export()
                result["registered"] = self.register(result["checkpoint"])
                self.reporter.done(model=self.out, checkpoint=result["checkpoint"], registered=result["registered"],
                                   final_loss=result["final_loss"])
            self.dist.barrier()
            return result
        finally:
            self.dist.close()

    # --- before any work ----------------------------------------------------------------------------------------
    def check_options(self):
        """Every option on its own and the --register name: before anything is read or written."""
        self.config = check_options(self.config)
        if self.config.arch is not None and self.config.patch is not None:
            check_patch_fits(self.config)  # else once the device's defaults are known
        check_register_name(self.config.register)

    def choose_device(self):
        """The device, its defaults for what the user left unset (logged), the patch against the network's stride,
        the precision, the schedule and the pretext task."""
        from sslseg.pretraining.methods import TASKS

        local_rank = self.dist.local_rank if self.dist.enabled else None
        self.device, self.note = resolve_device(self.config.device, local_rank)
        config, chosen = with_device_defaults(self.config, self.device.type)
        if chosen:
            self.reporter.log(chosen)
        self.arch_kwargs, stride = check_patch_fits(config)
        self.config = config
        self.precision = mixed_precision(self.device if config.amp else "cpu")  # "cpu": no autocast, no scaler
        self.schedule = Schedule(total=config.steps, max_lr=config.lr, exponent=config.poly_exponent)
        self.workers = config.workers if config.workers >= 0 else (4 if self.device.type == "cuda" else 0)
        grid_shape = [p // s for p, s in zip(config.patch, stride)]  # one S3D mask cell per stride block
        self.task = TASKS[config.method](config, grid_shape, self.device, self.precision, self.dist.rank)

    def find_images(self) -> list:
        paths = data.list_images(self.config.images)
        if len(paths) < self.dist.world_size:
            raise UserError(f"{len(paths)} images for {self.dist.world_size} processes: each process needs at "
                            "least one")
        return paths

    def start_processes(self):
        import torch

        self.dist.init(self.device.type)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels

    def prepare_output(self):
        """Refuse to overwrite a finished or resumable run unless asked to resume; create the folder."""
        self.out = os.path.abspath(self.config.out)
        self.latest = os.path.join(self.out, "checkpoint_latest.pth")
        final = os.path.join(self.out, "checkpoint_final.pth")
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise UserError(f"--out {self.out} is a file; choose a folder")
        if not self.config.resume and (os.path.exists(self.latest) or os.path.exists(final)):
            raise UserError(f"{self.out} already holds a pretraining run; pass --resume to continue it or choose "
                            "another --out folder")
        if self.dist.is_main:
            os.makedirs(self.out, exist_ok=True)
            remove_stale_partials(self.out)  # checkpoints a killed run was writing: never taken for one, no pile-up
        self.dist.barrier()

    # --- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self, paths):
        """Each rank pre-flights and caches its own shard; rank 0 writes what every rank skipped to preflight.json."""
        mine = data.shard(paths, self.dist.rank, self.dist.world_size)
        self.volumes, skipped = data.preflight(mine, self.config.spacing, os.path.join(self.out, "cache"),
                                               workers=self.workers)
        gathered = self.dist.gather({"usable": len(self.volumes), "skipped": skipped})
        self.skipped = [item for part in gathered for item in part["skipped"]]
        self.usable = sum(part["usable"] for part in gathered)
        for path, reason in self.skipped:
            self.reporter.log(f"skipped {path}: {reason}")
        report = os.path.join(self.out, "preflight.json")
        if self.dist.is_main:
            write_json_atomic({"images": len(paths), "usable": self.usable,
                               "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}, report)
        if any(part["usable"] == 0 for part in gathered):
            raise UserError(f"no usable images{' for some process' if self.dist.enabled else ''}: "
                            f"{len(self.skipped)} of {len(paths)} were skipped (see {report})")

    def make_loader(self):
        """Batches ``start_step .. steps - 1`` (worker processes on CUDA), and the fixed validation batch."""
        import torch

        from sslseg.finetuning.loader import PREFETCH
        from sslseg.pretraining.batches import PretrainBatches
        from sslseg.pretraining.methods import VALIDATION_SEED_OFFSET

        config, workers = self.config, self.workers
        # No augmentation and its own seed: the training loss jumps with every random batch and mask ratio, the
        # loss on this batch does not.
        self.validation_batch = PretrainBatches(self.volumes, config.method, config.patch, config.val_batch,
                                                config.seed + VALIDATION_SEED_OFFSET, self.dist.rank,
                                                config.volf_variant, augment=False)[0]
        dataset = PretrainBatches(self.volumes, config.method, config.patch, config.batch, config.seed,
                                  self.dist.rank, config.volf_variant)
        return torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=range(self.start_step, config.steps), num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            prefetch_factor=PREFETCH if workers > 0 else None,
        )

    # --- model ----------------------------------------------------------------------------------------------------
    def build_model(self):
        import torch

        from sslseg import networks

        torch.manual_seed(self.config.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
        network = networks.build_resenc(self.arch_kwargs, in_channels=1, num_classes=self.task.num_outputs)
        self.model = self.task.build(network).to(self.device)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.parameters, lr=self.config.lr, momentum=self.config.momentum,
                                         nesterov=True, weight_decay=self.config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.use_scaler)

    def resume(self):
        """Continue the run saved in ``out`` (same signature only)."""
        import torch

        if not self.config.resume:
            return
        if not os.path.exists(self.latest):
            self.reporter.log(f"--resume: no checkpoint in {self.out} yet; starting from step 0")
            return
        state = load_checkpoint(self.latest)
        saved = state["signature"]
        if saved != self.config.signature():
            changed = {k: (saved.get(k), v) for k, v in self.config.signature().items() if saved.get(k) != v}
            raise UserError(f"--resume: the saved run in {self.out} differs in {changed} (saved, requested)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["grad_scaler"]:  # empty when saved without a scaler (CPU, bf16)
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_step = self.step = int(state["step"])
        self.loss_history = [tuple(x) for x in state["loss_history"]]
        self.validation_history = [tuple(x) for x in state.get("validation_history", [])]
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.reporter.log(f"resumed from {self.latest} at step {self.start_step}")
        if self.start_step >= self.config.steps:
            self.reporter.log(f"the saved run already reached step {self.start_step} of {self.config.steps}")

    def report_start(self, images: int):
        config = self.config
        self.reporter.start(total_steps=config.steps, device=str(self.device), note=self.note, method=config.method,
                            arch=config.arch, images=images, usable=self.usable, skipped=len(self.skipped),
                            processes=self.dist.world_size, first_step=self.start_step)

    # --- the loop -------------------------------------------------------------------------------------------------
    def train(self) -> bool:
        """Train to ``steps``; True when stopped early at ``stop_at``. SIGTERM saves and raises KeyboardInterrupt."""
        loader = self.make_loader()
        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=device_ids)
        self.model.train()
        self.window = []
        if self.start_step == 0:
            self.validate(0)
        with CancelRequest() as cancel:
            for batch in loader:
                self.train_step(batch)
                if self.after_step(cancel):
                    return True
        return False

    def train_step(self, batch):
        """One optimiser step on ``batch`` (its ``step`` sets the learning rate). The loss stays on the device until
        it is reported (``read_window``): no host synchronisation per step."""
        import torch

        self.lr = self.schedule.lr(batch["step"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.training_loss(self.train_model, batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step = batch["step"] + 1
        self.window.append(loss.detach())

    def read_window(self) -> list:
        """The losses since the last report as floats (one host synchronisation). A non-finite loss stops the run,
        as it stops fine-tuning: this runs before every report and every save, so no diverged weights are saved."""
        import torch

        if self.window and isinstance(self.window[0], torch.Tensor):
            self.window = torch.stack(self.window).tolist()
        bad = [value for value in self.window if not math.isfinite(value)]
        if bad:
            raise RuntimeError(f"the loss became {bad[0]} by step {self.step}; lower --lr or check the images "
                               "(see preflight.json)")
        return self.window

    def after_step(self, cancel) -> bool:
        """Report, validate and save on their intervals; True to stop here (``stop_at``)."""
        config, step = self.config, self.step
        report_every = config.report_every or max(1, config.steps // 500)
        val_every = config.val_every or max(10, config.steps // 20)
        if step % report_every == 0 or step == config.steps:
            self.report_loss()
        if step % val_every == 0 or step == config.steps:
            self.validate(step)
        if step % config.save_every == 0 and step < config.steps:
            self.save_latest()
        if config.stop_at is not None and config.stop_at <= step < config.steps:
            self.reporter.log(f"stopped at step {step} as asked (--stop-at); continue with --resume")
            return True
        if cancel.requested:
            self.save_latest()
            self.reporter.log(f"cancelled at step {step}; resume with --resume")
            raise KeyboardInterrupt
        return False

    def report_loss(self):
        """The mean training loss since the last report, over all ranks."""
        window = self.read_window()
        mean_loss = self.dist.mean(sum(window) / len(window) if window else float("nan"), self.device)
        self.window = []
        self.loss_history.append((self.step, mean_loss))
        self.reporter.progress("pretrain", self.step, self.config.steps, loss=mean_loss, lr=self.lr)

    def validate(self, step: int):
        """The loss (and Volume Fusion's Dice) on the fixed validation batch, averaged over the ranks."""
        import torch

        self.model.eval()
        with torch.no_grad():
            loss, dice = self.task.validation_score(self.model, self.validation_batch)
        self.model.train()
        loss = self.dist.mean(loss, self.device)
        dice = {name: self.dist.mean(value, self.device) for name, value in dice.items()}
        self.validation_history.append((step, loss))
        self.reporter.validation(step, dice, sum(dice.values()) / len(dice) if dice else None, loss=loss)

    # --- saving ---------------------------------------------------------------------------------------------------
    def save_latest(self):
        """The resumable state (rank 0 writes it, atomically), never of a diverged run."""
        import torch

        if not self.dist.is_main:
            return
        self.read_window()
        cuda = self.device.type == "cuda"
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "step": int(self.step),
            "signature": self.config.signature(),
            "steps": int(self.config.steps),
            "loss_history": [[int(s), float(v)] for s, v in self.loss_history],
            "validation_history": [[int(s), float(v)] for s, v in self.validation_history],
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None},
        }
        torch_save_atomic(state, self.latest)

    def result(self, stopped: bool) -> dict:
        return {"out": self.out, "steps": self.step,
                "final_loss": self.loss_history[-1][1] if self.loss_history else None,
                "losses": self.loss_history, "validation": self.validation_history, "registered": None,
                "checkpoint": None, "stopped": stopped}

    def export(self) -> str:
        """``checkpoint_final.pth`` + ``adaptation_plan.json`` in the nnssl format; returns the checkpoint path."""
        from sslseg.pretraining import export

        config = self.config
        plan = export.adaptation_plan(self.task.plan_name, config.arch, self.arch_kwargs, config.patch,
                                      config.spacing, modality=config.modality,
                                      extra={"steps": self.step, "images": self.usable, **self.task.plan_extra()})
        init_args = {"sslseg": {**asdict(config), "patch": list(config.patch), "spacing": list(config.spacing)},
                     "processes": self.dist.world_size}
        return export.write_final(self.out, self.task.export_network(self.model), self.task.trainer_name, plan,
                                  init_args)

    def register(self, checkpoint: str):
        if not self.config.register:
            return None
        return register_backbone(checkpoint, self.config.register, self.reporter)


def load_checkpoint(path: str) -> dict:
    """A ``checkpoint_latest.pth`` of ours, loaded without unpickling code (``weights_only``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception:  # noqa: BLE001 - torch's own message advises unsafe loading: never pass that on
        raise UserError(f"--resume: {path} is not a checkpoint this program can read and trust; remove it or "
                        "choose another --out folder") from None
    needed = {"model", "optimizer", "grad_scaler", "step", "signature", "loss_history", "rng"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise UserError(f"--resume: {path} is not a pretraining checkpoint of sslseg")
    return state


def check_register_name(name: str):
    """Refuse a bad or taken --register name before hours of training, not after."""
    if not name:
        return
    from sslseg.backbones import cache
    from sslseg.backbones.catalog import is_catalog_name

    cache.check_name(name)
    if is_catalog_name(name):
        raise UserError(f"--register: {name!r} is the name of a published backbone; choose another name")
    if cache.read_meta(name):
        raise UserError(f"--register: a backbone named {name!r} already exists; choose another name")


def register_backbone(checkpoint: str, name: str, reporter) -> str:
    """Register the finished backbone under ``name`` in the backbone cache; the checkpoint stays where it is."""
    from sslseg.backbones import import_checkpoint

    try:
        registered = import_checkpoint(checkpoint, name=name)
    except UserError as error:
        raise UserError(f"pretraining finished ({checkpoint}) but registering it as {name!r} failed: {error}") from None
    reporter.log(f"registered backbone {registered}")
    return registered
