"""What a pretraining run is asked to do: :class:`PretrainConfig`, its checks (on :mod:`sslseg.validation`, so every
bad option is one line naming it, before any work) and the defaults that depend on the device.

The GPU defaults are the paper's (Wald et al., arXiv:2410.23132): ResEnc-L, 160^3 patches, 1 mm. On a CPU that
network and patch take minutes per step, so a run that names no ``--arch``/``--patch``/``--batch`` gets the small
:data:`CPU_DEFAULTS` instead (the SSLPretrain module's CPU choice), and the log says so.

Example::

    config = check_options(PretrainConfig("s3d", images="/data", out="/runs/s3d", patch=64))
    config = with_device_defaults(config, "cpu")   # arch ResEncS-cpu, batch 2; patch 64 kept
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sslseg import validation
from sslseg.errors import UserError

METHODS = ("s3d", "mae", "volf")
VOLF_VARIANTS = ("pymic", "paper")

# arch, patch (z, y, x voxels), batch
GPU_DEFAULTS = {"arch": "ResEncL", "patch": (160, 160, 160), "batch": 2}
CPU_DEFAULTS = {"arch": "ResEncS-cpu", "patch": (64, 64, 64), "batch": 2}


@dataclass
class PretrainConfig:
    method: str
    images: str
    out: str
    arch: str = None  # None: by device (GPU_DEFAULTS / CPU_DEFAULTS)
    steps: int = 250_000
    batch: int = None  # None: by device
    patch: tuple = None  # z, y, x voxels; None: by device (a multiple of the network's total stride)
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


def option_names() -> set:
    return {f.name for f in dataclasses.fields(PretrainConfig)}


def triple(name: str, value, kind):
    """One value (isotropic) or three, as a tuple of ``kind``; ``None`` stays ``None`` (a default by device)."""
    if value is None:
        return None
    values = [value] if isinstance(value, (int, float, str)) else list(value)
    if len(values) not in (1, 3):
        raise UserError(f"{name} takes 1 value (isotropic) or 3, got {len(values)}")
    values = values * 3 if len(values) == 1 else values
    if kind is int:
        return tuple(validation.patch_size(name, values))
    return tuple(validation.positive_float(name, v) for v in values)


def check_options(config: PretrainConfig) -> PretrainConfig:
    """Every option on its own (nothing that needs the device or the images); returns the normalised config."""
    from sslseg.device import parse_device

    validation.one_of("--method", config.method, METHODS)
    validation.one_of("--volf-variant", config.volf_variant, VOLF_VARIANTS)
    changes = {
        "steps": validation.positive_int("--steps", config.steps),
        "batch": None if config.batch is None else validation.positive_int("--batch", config.batch),
        "patch": triple("--patch", config.patch, int),
        "spacing": triple("--spacing", config.spacing, float),
        "device": parse_device(config.device),
        "seed": validation.seed(config.seed),
        "save_every": validation.positive_int("--save-every", config.save_every),
        "workers": validation.int_in_range("--workers", config.workers, -1),
        "lr": validation.positive_float("--lr", config.lr),
        "momentum": validation.float_in_range("momentum", config.momentum, 0.0, 1.0, strict_maximum=True),
        "weight_decay": validation.float_in_range("weight_decay", config.weight_decay, 0.0),
        "poly_exponent": validation.positive_float("poly_exponent", config.poly_exponent),
        "clip": validation.positive_float("clip", config.clip),
        "report_every": validation.int_in_range("--report-every", config.report_every, 0),
        "val_every": validation.int_in_range("val_every", config.val_every, 0),
        "val_batch": validation.positive_int("val_batch", config.val_batch),
        "stop_at": None if config.stop_at is None else validation.positive_int("--stop-at", config.stop_at),
    }
    if config.arch is not None:
        from sslseg.networks import architecture_kwargs

        architecture_kwargs(config.arch)  # an unknown name: one line listing the known ones
    return dataclasses.replace(config, **changes)


def with_device_defaults(config: PretrainConfig, device_type: str):
    """Fill what the user left unset (arch, patch, batch) for ``device_type`` ("cuda" or "cpu"). Returns the new
    config and a sentence saying what was chosen (``None`` when nothing was)."""
    from sslseg.networks import architecture_kwargs, total_stride

    defaults = CPU_DEFAULTS if device_type == "cpu" else GPU_DEFAULTS
    chosen = {}
    if config.arch is None:
        chosen["arch"] = defaults["arch"]
    if config.batch is None:
        chosen["batch"] = defaults["batch"]
    if config.patch is None:
        stride = total_stride(architecture_kwargs(chosen.get("arch", config.arch)))
        chosen["patch"] = tuple(max(s, round(p / s) * s) for p, s in zip(defaults["patch"], stride))
    if not chosen:
        return config, None
    words = " ".join(f"--{name} {' '.join(map(str, value)) if name == 'patch' else value}"
                     for name, value in chosen.items())
    kind = "CPU-sized defaults" if device_type == "cpu" else "the paper's GPU defaults"
    return dataclasses.replace(config, **chosen), f"using {kind}: {words} (pass these options to choose others)"


def check_patch_fits(config: PretrainConfig):
    """The patch must be a multiple of the network's total stride per axis (the S3D mask grid has one cell per
    stride block). Returns ``(arch_kwargs, stride)``."""
    from sslseg.networks import architecture_kwargs, total_stride

    kwargs = architecture_kwargs(config.arch)
    stride = total_stride(kwargs)
    if any(p < s or p % s for p, s in zip(config.patch, stride)):
        suggestion = [max(s, int(round(p / s)) * s) for p, s in zip(config.patch, stride)]
        raise UserError(f"--patch {' '.join(map(str, config.patch))} must be a multiple of the network's total "
                        f"stride {stride} per axis for {config.arch}; e.g. --patch {' '.join(map(str, suggestion))}")
    return kwargs, stride
