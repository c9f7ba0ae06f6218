"""The SSLSegmentation logic: fine-tune on (volume, segmentation) pairs from the scene, segment volumes into new
segmentation nodes, keep models across sessions. No GUI: the widget and console scripts call the same methods.

Long work runs in a separate process (the engine's CLI, ``python -m sslseg ... --progress json``; ``PythonSlicer``
inside Slicer) through :class:`~SSLSegmentationLib.processRunner.ProcessRunner`, so Slicer never freezes. Scene
data goes out through ``nodeBridge`` into a temporary folder; results come back as files. A cancelled or failed run
leaves the scene and the models folder as they were.

Console examples (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("SSLSegmentation")
    model = logic.finetune(backbone="ResEncL-OpenMind-S3D", trainingPairs=[(volumeNode, segmentationNode)],
                           preset="quick", waitForCompletion=True)      # path of the new model folder
    segmentationNode = logic.segment(model, inputVolumeNode, waitForCompletion=True)

    # without waitForCompletion the call returns at once with a Job (Slicer polls it with a timer):
    job = logic.finetune(backbone=None, trainingPairs=pairs, preset="cpu")
    job.cancel()                                       # kills the training process tree

    # human in the loop: correct the result in Segment Editor, add it, continue from the model
    logic.addCorrectedCase(inputVolumeNode, segmentationNode)
    model2 = logic.finetune(backbone=None, trainingPairs=logic.trainingPairs, initialModel=model,
                            waitForCompletion=True)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile

from sslseg.errors import UserError

from .modelStore import ModelStore, suggestModelName
from .processRunner import ProcessCancelled, ProcessFailed, ProcessRunner, pythonModuleCommand
from .settings import applyHomeFolder, defaultDevice

try:  # inside Slicer the logic is a ScriptedLoadableModuleLogic (parameter node support); plain object elsewhere
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = object

PRESETS = ("quick", "standard", "paper", "cpu", "test")  # sslseg.presets; "test" only for the test suite
DEVICES = ("auto", "cuda", "cpu")


def engineCommand(args):
    """``(argv, env)`` running the engine CLI ``sslseg <args>`` in a child process that imports the same ``sslseg``
    as Slicer does (PYTHONPATH points at the folder holding it)."""
    return pythonModuleCommand("sslseg", args)


def makeTemporaryFolder(prefix):
    """A new work folder under Slicer's temporary path (the system's outside Slicer); shared by both modules."""
    parent = None
    try:
        import slicer

        parent = getattr(getattr(slicer, "app", None), "temporaryPath", None)
    except ImportError:
        pass
    if parent:
        os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent or None)


class Job:
    """One background run (fine-tuning, segmentation, download). ``status``: "running", "succeeded", "failed",
    "cancelled"; ``result`` (model path, segmentation node, ...) when succeeded; ``errorMessage`` otherwise.

    Callbacks: ``onEvent(event)`` (JSON progress events), ``onLog(text)``, ``onFinished(job)``."""

    def __init__(self, kind, args, workFolder=None, complete=None, onEvent=None, onLog=None, onFinished=None):
        self.kind = kind
        self.workFolder = workFolder
        self._complete = complete  # called with the runner's "done" event on success; returns the result
        self.onFinished = onFinished
        self.result = None
        self.errorMessage = None
        self.status = "running"
        try:
            argv, env = engineCommand(args)
        except BaseException:
            self._removeWorkFolder()
            raise
        self.runner = ProcessRunner(argv, env=env, onEvent=onEvent, onLog=onLog, onFinished=self._processFinished)

    def _removeWorkFolder(self):
        if self.workFolder:
            shutil.rmtree(self.workFolder, ignore_errors=True)

    @property
    def events(self):
        return self.runner.events

    def start(self, autoPoll=None):
        try:
            self.runner.start(autoPoll=autoPoll)
        except BaseException as error:  # e.g. the Python executable could not be started
            self.status, self.errorMessage = "failed", str(error)
            self._removeWorkFolder()
            raise
        return self

    def poll(self):
        return self.runner.poll()

    def cancel(self):
        self.runner.cancel()
        self.runner.poll()

    def _processFinished(self, runner):
        try:
            if runner.status == "succeeded":
                try:
                    self.result = self._complete(runner.result or {}) if self._complete else runner.result
                    self.status = "succeeded"
                except Exception as error:  # noqa: BLE001 - importing the result failed: report, keep nothing
                    logging.exception("SSLSegmentation: %s result could not be used", self.kind)
                    self.status, self.errorMessage = "failed", str(error)
            else:
                self.status, self.errorMessage = runner.status, runner.errorMessage
        finally:
            self._removeWorkFolder()
            if self.onFinished:
                try:
                    self.onFinished(self)
                except Exception:  # noqa: BLE001
                    logging.exception("SSLSegmentation: onFinished callback failed")

    def waitForCompletion(self, timeout=None):
        """Block until done; returns ``result``. Raises ProcessCancelled, or ProcessFailed with the engine's
        message."""
        self.runner.waitForCompletion(timeout=timeout, raiseOnError=False)
        if self.status == "cancelled":
            raise ProcessCancelled(f"{self.kind} was cancelled")
        if self.status != "succeeded":
            raise ProcessFailed(f"{self.kind} failed: {self.errorMessage}", self.runner.returncode)
        return self.result


class JobOwner:
    """One background job at a time: what the logics of both modules share."""

    currentJob = None

    def _refuseIfRunning(self):
        job = self.currentJob
        if job is not None and job.status == "running" and job.poll():
            raise UserError(f"{job.kind} is still running: wait for it or cancel it first")

    def _run(self, job, waitForCompletion):
        try:
            self._refuseIfRunning()
        except UserError:
            if job.workFolder:  # the refused job's inputs were already written out
                shutil.rmtree(job.workFolder, ignore_errors=True)
            raise
        self.currentJob = job
        if waitForCompletion:
            job.start(autoPoll=False)
            return job.waitForCompletion()
        return job.start()

    def cancel(self):
        """Cancel the running job: its process tree is killed; nothing is registered or added to the scene."""
        if self.currentJob is not None and self.currentJob.status == "running":
            self.currentJob.cancel()


class SSLSegmentationLogic(JobOwner, _LogicBase):
    """Fine-tuning, segmentation, models and backbones, callable from the console (see the module docstring)."""

    def __init__(self, modelsFolder=None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        applyHomeFolder()  # the HomeFolder setting becomes SSLSEG_HOME (backbone cache) before anything reads it
        self.modelStore = ModelStore(modelsFolder)
        self.trainingPairs = []  # (volumeNode, segmentationNode) collected by addCorrectedCase and the widget
        self.currentJob = None

    # -- parameters (inside Slicer) --

    def getParameterNode(self):
        from .parameters import SSLSegmentationParameterNode

        return SSLSegmentationParameterNode(super().getParameterNode())

    # -- backbones --

    def listBackbones(self):
        """Catalog, imported and user-pretrained backbones (``sslseg.backbones.list_backbones``)."""
        from sslseg.backbones import list_backbones

        return list_backbones()

    def downloadBackbone(self, name, waitForCompletion=False, onEvent=None, onLog=None, onFinished=None):
        """Download a catalog backbone in the background (resumable); the result is the checkpoint path."""
        job = Job("download", ["models", "download", name, "--progress", "json"],
                  complete=lambda done: done.get("model"), onEvent=onEvent, onLog=onLog, onFinished=onFinished)
        return self._run(job, waitForCompletion)

    def importBackbone(self, path, name=None, waitForCompletion=False, onLog=None, onFinished=None):
        """Register a manually downloaded checkpoint (checked in the background: safe load, complete encoder)."""
        args = ["models", "import", os.fspath(path)] + (["--name", name] if name else [])
        job = Job("import", args, onLog=onLog, onFinished=onFinished)
        return self._run(job, waitForCompletion)

    # -- fine-tuning --

    def finetune(self, backbone, trainingPairs, segmentNames=None, preset="quick", device=None,
                 validationShare=None, initialModel=None, modelName=None, steps=None, timeLimit=None, seed=0,
                 modality="auto", patchSize=None, batchSize=None, maxLr=None, waitForCompletion=False,
                 onEvent=None, onLog=None, onFinished=None):
        """Fine-tune ``backbone`` (catalog/imported name, checkpoint path, or None to train from scratch) on
        ``trainingPairs`` [(volumeNode, segmentationNode), ...] and add the model to the models folder.

        ``segmentNames``: the segments to learn, matched by name in every pair (default: all segments of the first
        pair); value i+1 is ``segmentNames[i]``. ``validationShare``: share of the pairs held out for validation
        (None: the engine's default, none below 5 cases). ``initialModel``: continue training from this model
        (name or path) instead of ``backbone``: its trained encoder is the starting point and the recipe's warm-ups
        run again. ``modality``: "CT" (HU windowing), "MR" (z-score) or "auto" (CT when the first volume
        holds air-like values below -900). ``steps``, ``timeLimit`` (s), ``seed``, ``patchSize`` [z, y, x],
        ``batchSize``, ``maxLr`` override the preset like the CLI options of ``sslseg finetune``.

        Returns the new model's folder (``waitForCompletion=True``) or a :class:`Job` whose ``result`` is that
        path. Nothing is added to the models folder unless training finished."""
        pairs = self._checkPairs(trainingPairs)
        segmentNames = self._segmentNamesFor(pairs, segmentNames)
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS[:4])}")
        device = device or defaultDevice()  # None: the Device setting (auto when unset)
        if device not in DEVICES and not str(device).startswith("cuda:"):
            raise UserError(f"unknown device {device!r}; choose auto, cuda or cpu")
        initialModelPath = self.resolveModel(initialModel) if initialModel else None
        modelName = self.modelStore.uniqueName(modelName or self._defaultModelName(segmentNames, backbone))

        work = makeTemporaryFolder("SSLSegmentation-finetune-")
        try:
            dataset = os.path.join(work, "dataset")
            labels = self._exportDataset(pairs, segmentNames, dataset, modality)
            labelInfo = os.path.join(work, "labels.json")
            with open(labelInfo, "w", encoding="utf-8") as stream:
                json.dump(labels, stream)
            out = os.path.join(work, "model")
            args = ["finetune", "--backbone", os.fspath(backbone) if backbone else "none", "--data", dataset,
                    "--label-info", labelInfo, "--out", out, "--preset", preset, "--device", device,
                    "--seed", str(int(seed)), "--progress", "json"]
            valCases = self._validationCases(validationShare, len(pairs))
            if valCases is not None:
                args += ["--val-cases", str(valCases)]
            if steps:
                args += ["--steps", str(int(steps))]
            if timeLimit is not None:
                args += ["--time-limit", str(float(timeLimit))]
            if patchSize:
                args += ["--patch", *[str(int(p)) for p in patchSize]]
            if batchSize:
                args += ["--batch-size", str(int(batchSize))]
            if maxLr:
                args += ["--max-lr", str(float(maxLr))]
            if initialModelPath:
                if self._engineSupports("finetune", "--init-model"):
                    args += ["--init-model", initialModelPath]
                else:
                    args[args.index("--backbone") + 1] = self._modelAsBackbone(initialModelPath, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

        def complete(done):
            produced = done.get("model") or out
            if not os.path.isfile(os.path.join(produced, "model.json")):
                raise UserError(f"the engine reported a model at {produced} but it is not a model folder")
            # another model may have taken the name during the run: never lose a finished training to a clash
            name = modelName if not os.path.exists(self.modelStore.modelPath(modelName)) else \
                self.modelStore.uniqueName(modelName)
            return self.modelStore.addModel(produced, name)

        job = Job("fine-tuning", args, workFolder=work, complete=complete, onEvent=onEvent, onLog=onLog,
                  onFinished=onFinished)
        return self._run(job, waitForCompletion)

    @staticmethod
    def _modelAsBackbone(modelPath, work):
        """A fine-tuned model as a backbone checkpoint the engine loads (its ``model.pt`` state_dict with an
        ``adaptation_plan.json`` beside it, built from ``model.json``): the next run starts from the model's
        trained encoder and repeats the recipe's warm-ups (decoder first, encoder frozen)."""
        folder = os.path.join(work, "initial-model")
        os.makedirs(folder)
        # the file name becomes the backbone's name in the new model's provenance
        base = os.path.basename(modelPath.rstrip("/\\"))
        base = base[: -len(".sslmodel")] if base.lower().endswith(".sslmodel") else base
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("-.") or "model"
        weights = os.path.join(folder, safe + ".pt")
        if os.path.isdir(modelPath):
            with open(os.path.join(modelPath, "model.json"), encoding="utf-8") as stream:
                meta = json.load(stream)
            shutil.copyfile(os.path.join(modelPath, "model.pt"), weights)
        else:
            with zipfile.ZipFile(modelPath) as archive:
                meta = json.loads(archive.read("model.json").decode("utf-8"))
                with archive.open("model.pt") as source, open(weights, "wb") as target:
                    shutil.copyfileobj(source, target)
        network = meta.get("network") or {}
        if network.get("family", "ResEnc") != "ResEnc":
            raise UserError(f"continuing from a {network.get('family')} model is not supported; fine-tune from its "
                            "backbone instead")
        preprocessing = meta.get("preprocessing") or {}
        plan = {
            "architecture_plans": {"arch_class_name": network.get("name", "ResEnc-custom"),
                                   "arch_kwargs": network.get("config")},
            "pretrain_plan": {"spacing": preprocessing.get("spacing"),
                              "normalization": preprocessing.get("normalization", "zscore"),
                              "patch_size": meta.get("patch_size"), "method": "fine-tuned model",
                              "modality": (meta.get("backbone") or {}).get("modality")},
            "pretrain_num_input_channels": int(meta.get("in_channels", 1)),
            "recommended_downstream_patchsize": meta.get("patch_size"),
            "key_to_encoder": "encoder.stages",
            "key_to_stem": "encoder.stem",
            "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        }
        with open(os.path.join(folder, "adaptation_plan.json"), "w", encoding="utf-8") as stream:
            json.dump(plan, stream, indent=1)
        return weights

    def _checkPairs(self, trainingPairs):
        pairs = [tuple(pair) for pair in (trainingPairs or [])]
        if not pairs:
            raise UserError("no training data: give at least one (volume, segmentation) pair")
        for index, pair in enumerate(pairs, start=1):
            if len(pair) != 2 or pair[0] is None or pair[1] is None:
                raise UserError(f"training pair {index} needs a volume and a segmentation")
            volume, segmentation = pair
            if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
                raise UserError(f"training pair {index}: '{volume.GetName()}' is not a scalar volume")
            if not segmentation.IsA("vtkMRMLSegmentationNode"):
                raise UserError(f"training pair {index}: '{segmentation.GetName()}' is not a segmentation")
        return pairs

    def _segmentNamesFor(self, pairs, segmentNames):
        from .nodeBridge import segmentIDsByName

        if segmentNames is None:
            segmentation = pairs[0][1].GetSegmentation()
            segmentNames = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        segmentNames = [str(name) for name in segmentNames]
        if not segmentNames:
            raise UserError(f"segmentation '{pairs[0][1].GetName()}' has no segments to learn")
        for index, (volume, segmentation) in enumerate(pairs, start=1):
            try:
                segmentIDsByName(segmentation, segmentNames)
            except UserError as error:
                raise UserError(f"training pair {index} ({volume.GetName()} / {segmentation.GetName()}): "
                                f"{error} Rename the segment in Segment Editor or choose fewer segments.") from None
        return segmentNames

    @staticmethod
    def _validationCases(validationShare, count):
        if validationShare is None:
            return None
        share = float(validationShare)
        if not 0.0 <= share < 1.0:
            raise UserError("the validation share must be between 0 and 1")
        return min(int(round(share * count)), count - 1)

    @staticmethod
    def _defaultModelName(segmentNames, backbone):
        base = "-".join(segmentNames[:3]) + ("-etc" if len(segmentNames) > 3 else "")
        source = os.path.basename(os.fspath(backbone)) if backbone else "scratch"
        return suggestModelName(f"{base} ({source})")

    def _exportDataset(self, pairs, segmentNames, folder, modality):
        """The pairs as an nnU-Net dataset folder (imagesTr/, labelsTr/, dataset.json); returns the label list
        ([{value, name, color}], colours from the first pair)."""
        from . import nodeBridge

        os.makedirs(os.path.join(folder, "imagesTr"))
        os.makedirs(os.path.join(folder, "labelsTr"))
        labels = None
        for index, (volume, segmentation) in enumerate(pairs):
            case = f"case_{index:03d}"
            nodeBridge.writeVolume(volume, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            caseLabels = nodeBridge.writeLabels(segmentation, volume, os.path.join(folder, "labelsTr",
                                                                                  f"{case}.nii.gz"), segmentNames)
            labels = labels or caseLabels
        if modality == "auto":
            modality = self._guessModality(pairs[0][0])
        if modality not in ("CT", "MR"):
            raise UserError(f"unknown modality {modality!r}: CT, MR or auto")
        meta = {
            "name": "Slicer scene export",
            "channel_names": {"0": modality},
            "labels": {"background": 0, **{entry["name"]: entry["value"] for entry in labels}},
            "numTraining": len(pairs),
            "file_ending": ".nii.gz",
        }
        with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as stream:
            json.dump(meta, stream, indent=1)
        return labels

    @staticmethod
    def _guessModality(volumeNode):
        imageData = volumeNode.GetImageData()
        low = imageData.GetScalarRange()[0] if imageData is not None else 0
        return "CT" if low <= -900 else "MR"

    @staticmethod
    def _engineSupports(command, option):
        import argparse
        import importlib

        parser = argparse.ArgumentParser()
        importlib.import_module(f"sslseg.commands.{command}").add_parser(parser.add_subparsers())
        subparser = parser._subparsers._group_actions[0].choices[command]
        return any(option in action.option_strings for action in subparser._actions)

    # -- segmentation --

    def resolveModel(self, model):
        """A model name from the models folder, a model folder or a packed ``.sslmodel`` file -> its path."""
        if model is None:
            raise UserError("choose a model")
        model = os.fspath(model)
        if os.path.isfile(os.path.join(model, "model.json")) or os.path.isfile(model):
            return os.path.abspath(model)
        path = model if os.path.sep in model or "/" in model else self.modelStore.modelPath(model)
        if os.path.isfile(os.path.join(path, "model.json")):
            return path
        raise UserError(f"model {model!r} not found (neither in {self.modelStore.folder} nor as a path)")

    @staticmethod
    def modelLabels(modelPath):
        """The model's segments ``[{value, name, color}]`` from its model.json (folder or packed file)."""
        if os.path.isdir(modelPath):
            with open(os.path.join(modelPath, "model.json"), encoding="utf-8") as stream:
                return json.load(stream)["labels"]
        with zipfile.ZipFile(modelPath) as archive:
            return json.loads(archive.read("model.json").decode("utf-8"))["labels"]

    def segment(self, model, inputVolumeNode, tta=False, device=None, outputName=None, waitForCompletion=False,
                onEvent=None, onLog=None, onFinished=None):
        """Segment ``inputVolumeNode`` with ``model`` (name in the models folder, folder or ``.sslmodel`` path).
        The result is a NEW segmentation node with the model's segment names and colours on the input's geometry,
        under the input's study. ``tta``: average over mirrorings (8x slower on CPU).

        Returns the segmentation node (``waitForCompletion=True``) or a :class:`Job` whose ``result`` it is."""
        if inputVolumeNode is None or not inputVolumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise UserError("choose an input volume")
        device = device or defaultDevice()  # None: the Device setting (auto when unset)
        if device not in DEVICES and not str(device).startswith("cuda:"):
            raise UserError(f"unknown device {device!r}; choose auto, cuda or cpu")
        modelPath = self.resolveModel(model)
        labels = self.modelLabels(modelPath)
        modelName = os.path.basename(modelPath.rstrip("/\\"))
        name = outputName or f"{inputVolumeNode.GetName()} {modelName}"
        scene = inputVolumeNode.GetScene()

        from . import nodeBridge

        work = makeTemporaryFolder("SSLSegmentation-segment-")
        try:
            inputFile = nodeBridge.writeVolume(inputVolumeNode, os.path.join(work, "input", "volume_0000.nii.gz"))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        output = os.path.join(work, "output")
        args = ["predict", "--model", modelPath, "--input", inputFile, "--output", output, "--device", device,
                "--tta" if tta else "--no-tta", "--progress", "json"]

        def complete(done):
            from sslseg.imageio import read_image

            files = [f for f in done.get("outputs", []) if f.endswith(".nii.gz")]
            if len(files) != 1:
                raise UserError(f"the engine wrote {len(files)} label files, expected one")
            if scene is None or inputVolumeNode.GetScene() is None:
                raise UserError("the input volume was removed from the scene while it was being segmented")
            labelArray, geometry = read_image(files[0])
            if not geometry.same_grid(nodeBridge.volumeGeometry(inputVolumeNode)):
                raise UserError("the segmentation does not lie on the input volume's grid (was the volume moved "
                                "while it was being segmented?)")
            return nodeBridge.labelArrayToSegmentationNode(labelArray, labels, inputVolumeNode, name)

        job = Job("segmentation", args, workFolder=work, complete=complete, onEvent=onEvent, onLog=onLog,
                  onFinished=onFinished)
        return self._run(job, waitForCompletion)

    # -- human in the loop --

    def addCorrectedCase(self, volumeNode, segmentationNode):
        """Add a (volume, corrected segmentation) pair to ``trainingPairs`` (once); returns the list. Then continue
        training with ``finetune(..., trainingPairs=logic.trainingPairs, initialModel=model)``."""
        (pair,) = self._checkPairs([(volumeNode, segmentationNode)])
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise UserError(f"segmentation '{segmentationNode.GetName()}' has no segments")
        if not any(v is pair[0] and s is pair[1] for v, s in self.trainingPairs):
            self.trainingPairs.append(pair)
        return self.trainingPairs

