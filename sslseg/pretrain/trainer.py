"""The pretraining loop: S3D / MAE / Volume Fusion on a ResidualEncoderUNet, single process or DDP under torchrun.

Optimisation follows the paper: SGD lr 1e-2, Nesterov momentum 0.99, weight decay 3e-5, PolyLR (exponent 0.9),
mixed precision on CUDA, gradient clipping at 12. ``out/checkpoint_latest.pth`` is written atomically every
``save_every`` steps (and when a run is cancelled); ``resume=True`` restores model, optimiser, grad scaler, step and
RNG state. Batches and masks are seeded per step, so a resumed run continues exactly as if never stopped.

Distributed: launched by torchrun (``WORLD_SIZE`` > 1) it uses NCCL on GPUs and gloo on CPU; each rank trains on
its own shard of the images; rank 0 is the only one that writes checkpoints, the final backbone and progress.
"""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass, field

from sslseg.device import resolve_device
from sslseg.errors import UserError

METHODS = ("s3d", "mae", "volf")


@dataclass
class PretrainConfig:
    method: str
    images: str
    out: str
    arch: str = "ResEncL"
    steps: int = 250_000
    batch: int = 2
    patch: tuple = (160, 160, 160)  # z, y, x voxels
    spacing: tuple = (1.0, 1.0, 1.0)  # x, y, z mm
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    save_every: int = 1000
    workers: int = -1  # -1: 4 on CUDA, 0 on CPU
    lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    clip: float = 12.0
    volf_variant: str = "pymic"
    modality: str = None
    report_every: int = 0  # 0: about 500 progress events per run
    val_every: int = 0  # 0: about 20 validations per run (fixed batch, fixed masks: a smooth curve)
    val_batch: int = 4
    register: str = None
    amp: bool = True
    stop_at: int = None  # save and stop (resumably) at this step, e.g. for time-limited cluster jobs
    extra: dict = field(default_factory=dict)

    def signature(self) -> dict:
        """What must match for --resume to continue the same run."""
        return {"method": self.method, "arch": self.arch, "batch": self.batch, "patch": list(self.patch),
                "spacing": list(self.spacing), "seed": self.seed, "volf_variant": self.volf_variant}


def poly_lr(base: float, step: int, total: int, exponent: float) -> float:
    return base * (1 - min(step, total) / total) ** exponent


class _Cancel:
    """SIGTERM (the Slicer module's Cancel, a scheduler's preemption) ends the run after the current step with a
    checkpoint to resume from."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Distributed:
    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def init(self, device_type: str):
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float, device) -> float:
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _check_config(config: PretrainConfig):
    from sslseg.networks import architecture_kwargs, total_stride

    if config.method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)} (got {config.method!r})")
    if config.volf_variant not in ("pymic", "paper"):
        raise UserError("--volf-variant must be pymic or paper")
    if config.steps < 1 or config.batch < 1:
        raise UserError("--steps and --batch must be at least 1")
    if len(config.patch) != 3 or len(config.spacing) != 3:
        raise UserError("--patch and --spacing take 3 values (or 1 for isotropic)")
    if any(s <= 0 for s in config.spacing):
        raise UserError("--spacing must be positive millimetres")
    kwargs = architecture_kwargs(config.arch)
    stride = total_stride(kwargs)
    bad = [p for p, s in zip(config.patch, stride) if p < s or p % s]
    if bad:
        suggestion = [max(s, int(round(p / s)) * s) for p, s in zip(config.patch, stride)]
        raise UserError(f"--patch {' '.join(map(str, config.patch))} must be a multiple of the network's total "
                        f"stride {stride} per axis for {config.arch}; e.g. --patch {' '.join(map(str, suggestion))}")
    return kwargs, stride


def _checkpoint_state(model, optimizer, scaler, step, config, loss_history, rng_state):
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "grad_scaler": scaler.state_dict(),
        "step": int(step),
        "signature": config.signature(),
        "steps": int(config.steps),
        "loss_history": [[int(s), float(l)] for s, l in loss_history],
        "rng": rng_state,
    }


def run_pretraining(config: PretrainConfig, reporter=None) -> dict:
    """Run (or resume) a pretraining; returns ``{"checkpoint": path, "out": dir, "steps", "final_loss",
    "registered", "losses", "validation"}`` on rank 0 (other ranks get the same without ``checkpoint``)."""
    import torch

    from sslseg import networks
    from sslseg.pretrain import data as data_module
    from sslseg.pretrain import export
    from sslseg.pretrain.batches import PretrainBatches
    from sslseg.pretrain.events import Reporter
    from sslseg.pretrain.s3d import MaskedImageModel, draw_mask_ratio, expand_mask, masked_l2_loss, random_block_mask
    from sslseg.pretrain.volume_fusion import NUM_CLASSES

    arch_kwargs, stride = _check_config(config)
    check_register_name(config.register)
    dist = Distributed()
    device, note = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    dist.init(device.type)
    reporter = reporter or Reporter("none")
    if not dist.is_main:
        reporter = Reporter("none")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest kernels
    out = os.path.abspath(config.out)
    latest = os.path.join(out, "checkpoint_latest.pth")
    final = os.path.join(out, "checkpoint_final.pth")

    try:
        # --- refuse to overwrite a finished or resumable run unless asked to resume ------------------------
        if not config.resume and (os.path.exists(latest) or os.path.exists(final)):
            raise UserError(f"{out} already holds a pretraining run; pass --resume to continue it or choose another "
                            "--out folder")
        if dist.is_main:
            os.makedirs(out, exist_ok=True)
        dist.barrier()

        # --- data: each rank prepares and trains on its own shard -----------------------------------------
        paths = data_module.list_images(config.images)
        if len(paths) < dist.world_size:
            raise UserError(f"{len(paths)} images for {dist.world_size} processes: each process needs at least one")
        mine = data_module.shard(paths, dist.rank, dist.world_size)
        workers = config.workers if config.workers >= 0 else (4 if device.type == "cuda" else 0)
        volumes, skipped = data_module.preflight(mine, config.spacing, os.path.join(out, "cache"), workers=workers)
        gathered = dist.gather({"usable": len(volumes), "skipped": skipped})
        all_skipped = [item for part in gathered for item in part["skipped"]]
        usable = sum(part["usable"] for part in gathered)
        for path, reason in all_skipped:
            reporter.log(f"skipped {path}: {reason}")
        if dist.is_main:
            export.atomic_json({"images": len(paths), "usable": usable,
                                "skipped": [{"path": p, "reason": r} for p, r in all_skipped]},
                               os.path.join(out, "preflight.json"))
        if any(part["usable"] == 0 for part in gathered):
            raise UserError(f"no usable images{' for some process' if dist.enabled else ''}: {len(all_skipped)} of "
                            f"{len(paths)} were skipped (see {os.path.join(out, 'preflight.json')})")

        # --- model --------------------------------------------------------------------------------------------
        torch.manual_seed(config.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
        num_outputs = NUM_CLASSES if config.method == "volf" else 1
        network = networks.build_resenc(arch_kwargs, in_channels=1, num_classes=num_outputs)
        if config.method == "volf":
            from monai.losses import DiceCELoss

            model = network
            for layer in network.decoder.seg_layers[:-1]:
                layer.requires_grad_(False)  # unused without deep supervision; DDP needs every trained param used
            volf_loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)
        else:
            model = MaskedImageModel(network, sparse=config.method == "s3d")
        model.to(device)
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=True,
                                    weight_decay=config.weight_decay)
        use_amp = config.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        start_step, loss_history, validation_history = 0, [], []
        if config.resume and os.path.exists(latest):
            state = torch.load(latest, map_location="cpu", weights_only=True)
            if state["signature"] != config.signature():
                changed = {k: (state["signature"].get(k), v) for k, v in config.signature().items()
                           if state["signature"].get(k) != v}
                raise UserError(f"--resume: the saved run in {out} differs in {changed} (saved, requested)")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["grad_scaler"])
            start_step = int(state["step"])
            loss_history = [tuple(x) for x in state["loss_history"]]
            validation_history = [tuple(x) for x in state.get("validation_history", [])]
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            reporter.log(f"resumed from {latest} at step {start_step}")
        elif config.resume:
            reporter.log(f"--resume: no checkpoint in {out} yet; starting from step 0")
        if start_step >= config.steps:
            reporter.log(f"the saved run already reached step {start_step} of {config.steps}")

        train_model = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        dataset = PretrainBatches(volumes, config.method, config.patch, config.batch, config.seed, dist.rank,
                                  config.volf_variant)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=range(start_step, config.steps), num_workers=workers,
            pin_memory=device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        grid_shape = tuple(p // s for p, s in zip(config.patch, stride))

        def forward_loss(net, image, label=None, grid=None):
            """The forward pass in mixed precision (CUDA), the loss in float32."""
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                output = net(image) if grid is None else net(image, grid)
            output = output.float()
            if grid is None:
                return volf_loss(output, label), output
            return masked_l2_loss(output, image, expand_mask(grid, image.shape[2:])), output

        # A fixed validation batch (no augmentation, fixed masks) from this rank's volumes: the training loss
        # jumps with every random batch and mask ratio, this curve does not.
        val_batch = PretrainBatches(volumes, config.method, config.patch, config.val_batch, config.seed + 7919,
                                    dist.rank, config.volf_variant, augment=False)[0]
        val_grid = random_block_mask(config.val_batch, grid_shape, 0.75,
                                     torch.Generator().manual_seed(config.seed + 7919 + dist.rank))

        def validate(step):
            model.eval()
            with torch.no_grad():
                image = val_batch["image"].to(device)
                if config.method == "volf":
                    label = val_batch["label"].to(device)
                    loss, logits = forward_loss(model, image, label=label)
                    dice = float(_mean_dice(logits.argmax(1, keepdim=True), label, NUM_CLASSES))
                else:
                    loss, _ = forward_loss(model, image, grid=val_grid.to(device))
                    dice = None
                value = float(loss)
            model.train()
            value = dist.mean(value, device)
            dice = None if dice is None else dist.mean(dice, device)
            validation_history.append((step, value))
            reporter.validation(step, value, dice)
            return value
        report_every = config.report_every or max(1, config.steps // 500)
        val_every = config.val_every or max(10, config.steps // 20)
        save_every = max(1, int(config.save_every))

        reporter.start(total_steps=config.steps, device=str(device), note=note, method=config.method,
                       arch=config.arch, images=len(paths), usable=usable, skipped=len(all_skipped),
                       processes=dist.world_size, first_step=start_step)

        def save_latest(step):
            if dist.is_main:
                rng_state = {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
                state = _checkpoint_state(model, optimizer, scaler, step, config, loss_history, rng_state)
                state["validation_history"] = [[int(s), float(v)] for s, v in validation_history]
                export.atomic_torch_save(state, latest)

        cancel = _Cancel()
        cancel.install()
        model.train()
        step = start_step
        stopped = False
        window, non_finite = [], 0
        if start_step == 0:
            validate(0)
        try:
            for batch in loader:
                batch_step = batch["step"]
                image = batch["image"].to(device, non_blocking=True)
                lr = poly_lr(config.lr, batch_step, config.steps, config.poly_exponent)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                if config.method == "volf":
                    loss, _ = forward_loss(train_model, image, label=batch["label"].to(device, non_blocking=True))
                else:
                    generator = torch.Generator().manual_seed(_step_seed(config.seed, dist.rank, batch_step))
                    grid = random_block_mask(image.shape[0], grid_shape, draw_mask_ratio(generator), generator)
                    loss, _ = forward_loss(train_model, image, grid=grid.to(device))
                finite = bool(torch.isfinite(loss))
                # fp16 overflow (CUDA): the grad scaler skips the step, as in nnU-Net; in fp32 it is divergence
                non_finite = 0 if finite else non_finite + 1
                if not finite and (not use_amp or non_finite >= 50):
                    raise RuntimeError(f"the loss became {loss.item()} at step {batch_step + 1}; lower --lr or check "
                                       "the images (see preflight.json)")
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, config.clip)
                scaler.step(optimizer)
                scaler.update()
                step = batch_step + 1
                if finite:
                    window.append(float(loss.detach()))
                if step % report_every == 0 or step == config.steps:
                    mean_loss = dist.mean(sum(window) / len(window) if window else float("nan"), device)
                    window = []
                    loss_history.append((step, mean_loss))
                    reporter.progress(step, config.steps, mean_loss, lr)
                if step % val_every == 0 or step == config.steps:
                    validate(step)
                if step % save_every == 0 and step < config.steps:
                    save_latest(step)
                if config.stop_at is not None and step >= config.stop_at and step < config.steps:
                    save_latest(step)
                    reporter.log(f"stopped at step {step} as asked (--stop-at); continue with --resume")
                    stopped = True
                    break
                if cancel.requested:
                    save_latest(step)
                    reporter.error(f"cancelled at step {step}; resume with --resume")
                    raise KeyboardInterrupt
        finally:
            cancel.restore()

        # --- final backbone -------------------------------------------------------------------------------------
        save_latest(step)
        if stopped:
            dist.barrier()
            return {"out": out, "steps": step, "final_loss": loss_history[-1][1] if loss_history else None,
                    "losses": loss_history, "validation": validation_history, "registered": None,
                    "checkpoint": None, "stopped": True}
        result = {"out": out, "steps": step, "final_loss": loss_history[-1][1] if loss_history else None,
                  "losses": loss_history, "validation": validation_history, "registered": None}
        if dist.is_main:
            dense = model.dense_network() if config.method != "volf" else model
            plan = export.adaptation_plan(config.method, config.arch, arch_kwargs, config.patch, config.spacing,
                                          modality=config.modality,
                                          extra={"steps": step, "images": usable, "volf_variant": config.volf_variant
                                                 if config.method == "volf" else None})
            init_args = {"sslseg": {**asdict(config), "patch": list(config.patch), "spacing": list(config.spacing)},
                         "processes": dist.world_size}
            result["checkpoint"] = export.write_final(out, dense, config.method, plan, init_args)
            if config.register:
                result["registered"] = register_backbone(result["checkpoint"], config.register, reporter)
            reporter.done(model=out, checkpoint=result["checkpoint"], registered=result["registered"],
                          final_loss=result["final_loss"])
        dist.barrier()
        return result
    finally:
        dist.close()


def _step_seed(seed: int, rank: int, step: int) -> int:
    """The mask generator's seed of one step (independent of everything else, so resume is exact)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1, np.uint64)[0] >> 1)


def _mean_dice(prediction, label, num_classes: int) -> float:
    """Mean Dice over the fusion classes present in the label or the prediction (a readable VolF score)."""
    scores = []
    for k in range(num_classes):
        p, t = prediction == k, label == k
        total = int(p.sum()) + int(t.sum())
        if total:
            scores.append(2.0 * int((p & t).sum()) / total)
    return sum(scores) / max(len(scores), 1)


def check_register_name(name: str):
    """Refuse a bad or taken --register name before hours of training, not after."""
    if not name:
        return
    try:
        from sslseg.backbones import cache
        from sslseg.backbones.catalog import is_catalog_name
    except ImportError:
        return
    cache.check_name(name)
    if is_catalog_name(name):
        raise UserError(f"--register: {name!r} is the name of a published backbone; choose another name")
    if cache.read_meta(name):
        raise UserError(f"--register: a backbone named {name!r} already exists; choose another name")


def register_backbone(checkpoint: str, name: str, reporter) -> str:
    """Register the finished backbone under ``name`` through the backbones area, when it is installed."""
    try:
        from sslseg.backbones import import_checkpoint
    except ImportError:
        reporter.log("not registered: sslseg.backbones.import_checkpoint is not available in this build; "
                     f"import {checkpoint} later")
        return None
    try:
        registered = import_checkpoint(checkpoint, name=name)
    except UserError as error:
        raise UserError(f"pretraining finished ({checkpoint}) but registering it as {name!r} failed: {error}") from None
    reporter.log(f"registered backbone {registered}")
    return registered
