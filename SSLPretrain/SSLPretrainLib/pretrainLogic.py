"""The SSLPretrain logic: self-supervised pretraining (S3D, MAE, Volume Fusion) on unlabelled volumes from the scene or
a folder; the finished backbone joins the backbone list of the SSLSegmentation module. No GUI: the widget and
console scripts call the same methods.

The run is the engine's ``sslseg pretrain ... --progress json --register NAME`` in a separate process (``PythonSlicer``
inside Slicer), started and polled as a :class:`~SSLCommonLib.jobs.Job` (the job code both modules share), so
Slicer never freezes and Cancel kills the whole process tree. Scene volumes go out through ``nodeBridge.writeVolume``
into a temporary work folder (the nodes are never modified). The engine registers the backbone only after the last
step; a cancelled or failed run registers nothing and its work folder is removed.

Console examples (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("SSLPretrain")
    name = logic.pretrain(method="s3d", volumeNodes=[getNode("MRHead"), getNode("MRBrainTumor1")],
                          arch="ResEncS-cpu", steps=500, patch=64, backboneName="my-brain-s3d",
                          waitForCompletion=True)          # -> "my-brain-s3d", now in SSLSegmentation's list

    job = logic.pretrain(method="volf", imageFolder="/data/unlabelled", arch="ResEncL", steps=250000)
    job.cancel()                                            # kills the process tree; nothing is registered

    print(logic.serverCommand(method="s3d", imageFolder="/data/unlabelled", processes=8))
    # torchrun --standalone --nproc_per_node 8 -m sslseg pretrain --method s3d --images /data/unlabelled ...
"""

from __future__ import annotations

import logging
import os
import re
import shutil

from sslseg import validation
from sslseg.device import parse_device
from sslseg.errors import UserError
from sslseg.pretraining.config import PretrainConfig, check_options, check_patch_fits

from SSLCommonLib.jobs import Job, JobOwner, makeTemporaryFolder
from SSLCommonLib.settings import applyHomeFolder, defaultDevice

try:  # inside Slicer the logic is a ScriptedLoadableModuleLogic (parameter node support); plain object elsewhere
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = object

# The live chart (SSLCommonLib.progressChart curves): the interval loss of the progress events and the loss on
# a fixed validation batch (a smooth curve).
LOSS_CURVES = (
    ("loss", "Training loss", "progress", "loss", (0.85, 0.33, 0.10)),
    ("validation", "Validation loss", "validation", "loss", (0.00, 0.45, 0.74)),
)
# Shown in the server command when the images are scene volumes (they are not on the server).
SERVER_IMAGES_PLACEHOLDER = "/path/to/unlabelled/images"


class PretrainJob(Job):
    """A :class:`Job` that, when the run did not succeed, first undoes what the engine may have registered in its
    last instant (a Cancel that arrives while the finished backbone is being copied into the cache)."""

    def __init__(self, *args, cleanup=None, **kwargs):
        self._cleanup = cleanup
        Job.__init__(self, *args, **kwargs)

    def _processFinished(self, runner):
        if runner.status != "succeeded" and self._cleanup is not None:
            try:
                self._cleanup()
            except Exception:  # noqa: BLE001 - the run's outcome must still be reported
                logging.exception("SSLPretrain: cleaning up after the run failed")
        Job._processFinished(self, runner)


def removeBackboneFromRun(name, work):
    """Remove the backbone ``name`` (or a half-copied folder of it) from the cache only if it came from the run
    in ``work``: registration copies the checkpoint from there and writes backbone.json last."""
    from sslseg.backbones import cache

    folder = cache.entry_dir(name)
    if not os.path.isdir(folder):
        return
    meta = cache.read_meta(name)
    origin = os.path.abspath((meta or {}).get("origin") or "")
    if meta is None or origin.startswith(os.path.abspath(work) + os.sep):
        shutil.rmtree(folder, ignore_errors=True)


class SSLPretrainLogic(JobOwner, _LogicBase):
    """Pretraining from the scene or a folder, callable from the console (see the module docstring).

    ``temporaryFolder``: a callable ``prefix -> new folder`` for the work folders (default: Slicer's temporary
    path)."""

    moduleName = "SSLPretrain"

    def __init__(self, temporaryFolder=None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        self.temporaryFolder = temporaryFolder or makeTemporaryFolder
        applyHomeFolder()  # the HomeFolder setting becomes SSLSEG_HOME: the backbone is registered there
        self.removeStaleWorkFolders()  # scene data that crashed runs left in work folders
        self.currentJob = None

    def getParameterNode(self):
        from .parameters import SSLPretrainParameterNode

        return SSLPretrainParameterNode(super().getParameterNode())

    # -- backbones --

    @staticmethod
    def listBackbones():
        """Catalog, imported and user-pretrained backbones (``sslseg.backbones.list_backbones``), the list the
        SSLSegmentation module shows."""
        from sslseg.backbones import list_backbones

        return list_backbones()

    @staticmethod
    def checkBackboneName(name):
        """Raise UserError when ``name`` is not a valid backbone name or already taken (the engine's own check of
        ``sslseg pretrain --register``); returns the name. Checked before training, not after hours of it."""
        from sslseg.pretraining.trainer import check_register_name

        if not name:
            raise UserError("choose a name for the new backbone")
        check_register_name(name)
        return name

    @classmethod
    def suggestBackboneName(cls, method="s3d", arch="ResEncL"):
        """A free name such as ``S3D-ResEncL-pretrained`` (``-2``, ``-3``... when taken)."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{str(method).upper()}-{arch}-pretrained").strip("-.")
        for index in range(1, 1000):
            candidate = base if index == 1 else f"{base}-{index}"
            try:
                return cls.checkBackboneName(candidate)
            except UserError:
                continue
        raise UserError("no free backbone name; choose one")

    # -- checks --

    @staticmethod
    def _checkOptions(method, arch, steps, batch, patch, spacing, device):
        """``(patch, spacing)`` as three values each, after checking every option with the engine's own checks of
        ``sslseg pretrain`` (``sslseg.pretraining.config``): the same one-line errors as the command."""
        config = check_options(PretrainConfig(method, images="", out="", arch=arch, steps=steps, batch=batch,
                                              patch=patch, spacing=spacing, device=device))
        check_patch_fits(config)
        return list(config.patch), list(config.spacing)

    @staticmethod
    def _checkVolumes(volumeNodes):
        nodes = []
        for node in volumeNodes or []:
            if node is None or any(node is other for other in nodes):
                continue
            if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise UserError(f"'{node.GetName()}' is not a scalar (image) volume")
            if node.GetImageData() is None:
                raise UserError(f"volume '{node.GetName()}' has no voxels")
            nodes.append(node)
        return nodes

    @staticmethod
    def _checkImageSource(nodes, imageFolder):
        if nodes and imageFolder:
            raise UserError("choose scene volumes or an image folder, not both")
        if not nodes and not imageFolder:
            raise UserError("no images: choose volumes from the scene or a folder of images")
        if imageFolder and not os.path.exists(os.fspath(imageFolder)):
            raise UserError(f"the image folder {imageFolder} does not exist")

    # -- pretraining --

    def pretrain(self, method="s3d", volumeNodes=None, imageFolder=None, arch="ResEncL", steps=10000, batch=2,
                 patch=160, spacing=1.0, device=None, backboneName=None, modality=None, seed=0,
                 waitForCompletion=False, onProgress=None, onLog=None, onFinished=None, extraArgs=None):
        """Pretrain a backbone on ``volumeNodes`` (scalar volume nodes of the scene) or on the images under
        ``imageFolder`` (NIfTI/NRRD/MHA, searched recursively, or a text file listing image paths) and register it
        as ``backboneName`` (default: a free generated name). ``method``: "s3d", "mae" or "volf"; ``arch``:
        "ResEncL" (the paper's network, GPU) or "ResEncS-cpu"; ``patch`` (z, y, x voxels) and ``spacing`` (x, y, z
        mm) take one value for a cube. ``modality`` ("CT", "MR", ...) is recorded in the backbone (guessed for scene
        volumes). ``extraArgs``: more ``sslseg pretrain`` options, e.g. ``["--volf-variant", "paper"]``.

        Callbacks: ``onProgress(event)`` for each JSON progress event (start, progress, validation, log, done),
        ``onLog(text)``, ``onFinished(job)``.

        Returns the registered backbone name (``waitForCompletion=True``) or a :class:`Job` whose ``result`` it is.
        Nothing is registered unless training finished; the input volumes are never modified."""
        from SSLCommonLib import nodeBridge

        device = parse_device(device or defaultDevice())  # None: the Device setting (auto when unset)
        patch, spacing = self._checkOptions(method, arch, steps, batch, patch, spacing, device)
        nodes = self._checkVolumes(volumeNodes)
        self._checkImageSource(nodes, imageFolder)
        name = self.checkBackboneName(backboneName) if backboneName else self.suggestBackboneName(method, arch)
        if modality is None and nodes:
            modality = nodeBridge.guessModality(nodes[0])
        seed = validation.seed(seed, "seed")
        self._refuseIfRunning()

        work = self.temporaryFolder(f"{self.moduleName}-")
        try:
            images = self._exportImages(nodes, work) if nodes else os.path.abspath(os.fspath(imageFolder))
            args = ["pretrain", "--method", method, "--images", images, "--out", os.path.join(work, "run"),
                    "--arch", arch, "--steps", str(int(steps)), "--batch", str(int(batch)), "--patch",
                    *map(str, patch), "--spacing", *(f"{s:g}" for s in spacing), "--device", device,
                    "--seed", str(seed), "--progress", "json", "--register", name]
            args += (["--modality", str(modality)] if modality else []) + [str(a) for a in (extraArgs or [])]
            job = PretrainJob("pretraining", args, self.moduleName, workFolder=work, onEvent=onProgress,
                              onLog=onLog, onFinished=onFinished, complete=lambda done: self._registered(done, name),
                              cleanup=lambda: removeBackboneFromRun(name, work))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        job.backboneName = name
        return self._run(job, waitForCompletion)

    @staticmethod
    def _exportImages(nodes, work):
        from SSLCommonLib import nodeBridge

        images = os.path.join(work, "images")
        for index, node in enumerate(nodes):
            nodeBridge.writeVolume(node, os.path.join(images, f"volume_{index:03d}.nii.gz"))
        return images

    @staticmethod
    def _registered(done, name):
        from sslseg.backbones import cache

        registered = done.get("registered")
        if registered != name or not cache.read_meta(name):
            raise UserError(f"pretraining finished but the backbone was not registered as '{name}' "
                            f"(engine reported: {registered!r})")
        return name

    def serverCommand(self, method="s3d", imageFolder=None, arch="ResEncL", steps=250000, batch=2, patch=160,
                      spacing=1.0, processes=8, nodes=1, backboneName=None, outputFolder=None):
        """The equivalent command for a GPU server (``torchrun`` with ``processes`` GPUs on each of ``nodes``
        machines; plain ``sslseg pretrain`` for one process), from the engine's ``sslseg.pretraining.command_line``.
        Scene volumes are not on the server: their place is a placeholder folder. The backbone lands in
        ``outputFolder`` (default ``runs/<backboneName>``) as ``checkpoint_final.pth``; bring it back with the
        SSLSegmentation module's "Import file..." (``importBackbone``)."""
        from sslseg.pretraining import command_line

        patch, spacing = self._checkOptions(method, arch, steps, batch, patch, spacing, "auto")
        out = outputFolder or f"runs/{backboneName or f'{method}-{arch}'}"
        return command_line(method, imageFolder or SERVER_IMAGES_PLACEHOLDER, out, arch=arch, steps=int(steps),
                            batch=int(batch), patch=patch, spacing=spacing, processes=max(int(processes), 1),
                            nodes=max(int(nodes), 1))
