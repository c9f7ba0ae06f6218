"""Self-supervised pretraining of ResidualEncoderUNet backbones on a site's own unlabelled volumes.

Methods (:data:`METHODS`): ``s3d`` (sparse masked image modelling, Wald et al., "Revisiting MAE pre-training for 3D
medical image segmentation", CVPR 2025, arXiv:2410.23132), ``mae`` (its plain dense variant) and ``volf`` (Volume
Fusion, Wang et al., "MIS-FM", arXiv:2306.16925). The result is an nnssl-format ``checkpoint_final.pth`` +
``adaptation_plan.json`` (github.com/MIC-DKFZ/nnssl) that ``sslseg.load_backbone`` reads like a public checkpoint.

The package, one line per module:

- ``config``: :class:`PretrainConfig`, the option checks, the GPU and CPU defaults, :data:`METHODS`;
- ``trainer``: :class:`PretrainingRun`, the run as short named steps (resume, DDP, SIGTERM -> checkpoint);
- ``methods``: the pretext tasks (S3D, MAE, Volume Fusion), one class each, pluggable;
- ``data``: finding images, the pre-flight (header checks, voxel cap), preprocessing cache, patch sampling;
- ``batches``: the batches of a step as a map-style dataset (seeded by seed, rank, step);
- ``s3d``: block masks, the masked image model, the masked L2 loss;
- ``sparse``: sparse convolution and instance normalisation (SparK-style);
- ``volume_fusion``: the fused images and their labels (PyMIC and paper variants);
- ``distributed``: torchrun's ranks and collectives, SIGTERM as a cancel request;
- ``export``: the nnssl checkpoint and adaptation plan;
- ``reporting``: the progress events of a run.

Importing this package is cheap (no torch): the work is imported when :func:`pretrain` runs.

Example (Python console, also inside Slicer)::

    import sslseg
    result = sslseg.pretrain("s3d", images="/data/unlabelled", out="/models/my_s3d", arch="ResEncS-cpu",
                             steps=2000, batch=2, patch=(64, 64, 64))
    result["checkpoint"]  # /models/my_s3d/checkpoint_final.pth
"""

from __future__ import annotations

from sslseg.pretraining.config import CPU_DEFAULTS, GPU_DEFAULTS, METHODS, PretrainConfig, option_names, triple

__all__ = ["METHODS", "CPU_DEFAULTS", "GPU_DEFAULTS", "PretrainConfig", "pretrain", "command_line"]


def pretrain(method: str, images, out, arch: str = None, steps: int = 250_000, batch: int = None, patch=None,
             spacing=(1.0, 1.0, 1.0), device: str = "auto", resume: bool = False, progress="none",
             register: str = None, seed: int = 0, save_every: int = 1000, workers: int = -1,
             volf_variant: str = "pymic", modality: str = None, **options) -> dict:
    """Pretrain a backbone; mirrors ``sslseg pretrain`` (see its ``--help``). ``patch`` is (z, y, x) voxels,
    ``spacing`` (x, y, z) mm; a single number means isotropic. ``arch``, ``batch`` and ``patch`` left at None take
    the device's defaults (:data:`GPU_DEFAULTS`: the paper's ResEncL, 160^3; :data:`CPU_DEFAULTS` on a CPU). Other
    keyword options go to :class:`PretrainConfig` (``lr``, ``momentum``, ``weight_decay``, ``clip``,
    ``report_every``, ``val_every``, ``stop_at``, ``amp``). ``progress`` is a mode ("bar", "json", "none") or a
    :class:`sslseg.pretraining.reporting.PretrainReporter`. Returns ``{"checkpoint", "out", "steps", "final_loss",
    "losses", "validation", "registered", "stopped"}``."""
    from sslseg.errors import UserError
    from sslseg.progress import Reporter
    from sslseg.pretraining.reporting import PretrainReporter
    from sslseg.pretraining.trainer import PretrainingRun

    unknown = sorted(set(options) - option_names())
    if unknown:
        raise UserError(f"unknown pretraining option(s) {', '.join(unknown)}")
    config = PretrainConfig(
        method=method, images=str(images), out=str(out), arch=arch, steps=steps, batch=batch, patch=patch,
        spacing=spacing, device=device, resume=resume, seed=seed, save_every=save_every, workers=workers,
        volf_variant=volf_variant, modality=modality, register=register, **options,
    )
    reporter = progress if isinstance(progress, Reporter) else PretrainReporter(progress)
    return PretrainingRun(config, reporter).run()


def command_line(method: str, images, out, arch: str = GPU_DEFAULTS["arch"], steps: int = 250_000,
                 batch: int = GPU_DEFAULTS["batch"], patch=GPU_DEFAULTS["patch"], spacing=(1.0, 1.0, 1.0),
                 processes: int = 1, nodes: int = 1, progress: str = None, register: str = None, **options) -> str:
    """The equivalent shell command (``torchrun`` when ``processes`` or ``nodes`` > 1), e.g. for the SSLPretrain
    module's "Run on a server" box (GPU defaults). Extra ``options`` become ``--name value`` flags (``True`` -> bare
    flag)."""
    import shlex

    patch, spacing = triple("patch", patch, int), triple("spacing", spacing, float)
    words = ["--method", method, "--images", str(images), "--out", str(out), "--arch", arch, "--steps", str(steps),
             "--batch", str(batch), "--patch", *(map(str, patch) if len(set(patch)) > 1 else [str(patch[0])]),
             "--spacing", *(f"{s:g}" for s in (spacing if len(set(spacing)) > 1 else spacing[:1]))]
    if progress:
        words += ["--progress", progress]
    if register:
        words += ["--register", register]
    for name, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + name.replace("_", "-"))
        if value is not True:
            words.append(str(value))
    if processes > 1 or nodes > 1:
        head = ["torchrun"]
        if nodes > 1:
            head += ["--nnodes", str(nodes), "--node_rank", "NODE_RANK", "--rdzv_backend", "c10d",
                     "--rdzv_endpoint", "HOST:29500"]
        else:
            head += ["--standalone"]
        head += ["--nproc_per_node", str(processes), "-m", "sslseg", "pretrain"]
    else:
        head = ["sslseg", "pretrain"]
    return " ".join(shlex.quote(w) if w not in ("NODE_RANK", "HOST:29500") else w for w in head + words)
