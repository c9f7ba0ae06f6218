"""Self-supervised pretraining of ResidualEncoderUNet backbones on a site's own unlabelled volumes.

Methods: ``s3d`` (sparse masked image modelling, Wald et al.), ``mae`` (its plain dense variant) and ``volf``
(Volume Fusion, Wang et al.). The result is an nnssl-format ``checkpoint_final.pth`` + ``adaptation_plan.json``
that ``sslseg.load_backbone`` reads like a public checkpoint.

Modules: ``data`` (finding, pre-flight, preprocessing, patches), ``sparse`` (sparse conv/norm), ``s3d`` (masking,
model, loss), ``volume_fusion``, ``batches``, ``trainer`` (loop, resume, DDP), ``export`` (nnssl format),
``events`` (progress output).

Example (Python console, also inside Slicer)::

    import sslseg
    result = sslseg.pretrain("s3d", images="/data/unlabelled", out="/models/my_s3d", arch="ResEncS-cpu",
                             steps=2000, batch=2, patch=(64, 64, 64))
    result["checkpoint"]  # /models/my_s3d/checkpoint_final.pth
"""

from __future__ import annotations

from sslseg._callable import make_callable

METHODS = ("s3d", "mae", "volf")


def pretrain(method: str, images, out, arch: str = "ResEncL", steps: int = 250_000, batch: int = 2,
             patch=(160, 160, 160), spacing=(1.0, 1.0, 1.0), device: str = "auto", resume: bool = False,
             progress: str = "none", register: str = None, seed: int = 0, save_every: int = 1000,
             workers: int = -1, volf_variant: str = "pymic", modality: str = None, **options) -> dict:
    """Pretrain a backbone; mirrors ``sslseg pretrain`` (see its ``--help``). ``patch`` is (z, y, x) voxels,
    ``spacing`` (x, y, z) mm; a single number means isotropic. Other keyword options go to
    :class:`sslseg.pretrain.trainer.PretrainConfig` (``lr``, ``momentum``, ``weight_decay``, ``clip``,
    ``report_every``, ``val_every``, ``stop_at``, ``amp``). ``progress`` is a mode ("bar", "json", "none") or a
    :class:`sslseg.pretrain.events.Reporter`. Returns ``{"checkpoint", "out", "steps", "final_loss", "losses", "registered"}``."""
    from sslseg.pretrain.events import Reporter
    from sslseg.pretrain.trainer import PretrainConfig, run_pretraining

    config = PretrainConfig(
        method=method, images=str(images), out=str(out), arch=arch, steps=int(steps), batch=int(batch),
        patch=_triple(patch, int), spacing=_triple(spacing, float), device=device, resume=resume, seed=seed,
        save_every=save_every, workers=workers, volf_variant=volf_variant, modality=modality, register=register,
        **options,
    )
    reporter = progress if isinstance(progress, Reporter) else Reporter(progress)
    return run_pretraining(config, reporter)


def command_line(method: str, images, out, arch: str = "ResEncL", steps: int = 250_000, batch: int = 2,
                 patch=(160, 160, 160), spacing=(1.0, 1.0, 1.0), processes: int = 1, nodes: int = 1,
                 progress: str = None, register: str = None, **options) -> str:
    """The equivalent shell command (``torchrun`` when ``processes`` or ``nodes`` > 1), e.g. for the SSLPretrain
    module's "Run on a server" box. Extra ``options`` become ``--name value`` flags (``True`` -> bare flag)."""
    import shlex

    patch, spacing = _triple(patch, int), _triple(spacing, float)
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


def _triple(value, kind):
    if isinstance(value, (int, float, str)):
        value = [value]
    value = [kind(v) for v in value]
    return tuple(value * 3 if len(value) == 1 else value)


# ``sslseg.pretrain(...)`` calls pretrain() whichever way the package was imported
make_callable(__name__)
