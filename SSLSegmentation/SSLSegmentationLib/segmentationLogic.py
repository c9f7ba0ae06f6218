"""The SSLSegmentation logic: fine-tune on (volume, segmentation) pairs from the scene, segment volumes into new
segmentation nodes, keep models across sessions. No GUI: the widget and console scripts call the same methods.

Long work runs in a separate process (the engine's CLI, ``python -m sslseg ... --progress json``; ``PythonSlicer``
inside Slicer) through :class:`~SSLCommonLib.jobs.Job`, so Slicer never freezes. Scene data goes out through
``trainingData`` / ``nodeBridge`` into a temporary work folder; results come back as files. A cancelled or failed
run leaves the scene and the models folder as they were; a finished model that cannot be added to the models folder
is kept where it is, and the error says where.

Console examples (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("SSLSegmentation")
    model = logic.finetune(backbone="ResEncL-OpenMind-S3D", trainingPairs=[(volumeNode, segmentationNode)],
                           waitForCompletion=True)      # preset: "quick" on a GPU, "cpu" without one
    segmentationNode = logic.segment(model, inputVolumeNode, uncertainty=True, waitForCompletion=True)
    logic.editInSegmentEditor(segmentationNode, inputVolumeNode)   # then open the Segment Editor module
    logic.segment(model, inputVolumeNode, writeInto=getNode("My segmentation"), waitForCompletion=True)

    # which case next: the most uncertain candidate first
    ranking = logic.rankCandidates(model, volumeNodes=[getNode("case7"), getNode("case8")], waitForCompletion=True)
    volume, segmentation = logic.loadCandidate(ranking[0])    # ready in the Segment Editor

    # without waitForCompletion the call returns at once with a Job (Slicer polls it with a timer):
    job = logic.finetune(backbone=None, trainingPairs=pairs, preset="cpu")
    job.cancel()                                       # kills the training process tree

    # human in the loop: correct the result in Segment Editor, add it, continue from the model
    logic.addCorrectedCase(inputVolumeNode, segmentationNode)
    model2 = logic.finetune(backbone=None, trainingPairs=logic.trainingPairs, initialModel=model,
                            waitForCompletion=True)
"""

from __future__ import annotations

import logging
import os
import shutil

from sslseg import validation
from sslseg.atomic import remove_quietly, write_json_atomic, write_text_atomic
from sslseg.device import device_type, parse_device
from sslseg.errors import UserError
from sslseg.presets import PRESETS, default_preset

from SSLCommonLib.jobs import RESUME_FILE, JobOwner, ResultKept
from SSLCommonLib.settings import applyHomeFolder, defaultDevice

from .modelStore import ModelStore, suggestModelName
from .trainingData import checkModality, checkPairs, exportDataset, segmentNamesFor

try:  # inside Slicer the logic is a ScriptedLoadableModuleLogic (parameter node support); plain object elsewhere
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic as _LogicBase
except ImportError:
    _LogicBase = object


def presetForDevice(device):
    """``(preset, note)``: the engine's default preset (``sslseg.presets.default_preset``) for the device that
    ``device`` ("auto", "cpu", "cuda", "cuda:N") runs on: ``quick`` on a GPU, ``cpu`` without one."""
    deviceType = device_type(device)
    preset = default_preset(deviceType)
    return preset, f"preset '{preset}' chosen for the {'GPU' if deviceType == 'cuda' else 'CPU'} (device {device or 'auto'})"


def presetNote(preset, device):
    """``(preset a run uses, one sentence for the panel)``: ``preset`` None follows the device (``presetForDevice``);
    a GPU preset chosen for a run on the CPU is kept but the sentence warns that it takes hours there."""
    byDevice, note = presetForDevice(device)
    if preset is None:
        return byDevice, note[0].upper() + note[1:] + "."
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if byDevice == "cpu" and preset in ("quick", "standard", "paper"):
        return preset, f"'{preset}' is made for a GPU: on the CPU it takes hours ('auto' would pick 'cpu')."
    return preset, f"Preset '{preset}' (chosen by you)."


class SSLSegmentationLogic(JobOwner, _LogicBase):
    """Fine-tuning, segmentation, models and backbones, callable from the console (see the module docstring)."""

    moduleName = "SSLSegmentation"

    def __init__(self, modelsFolder=None):
        if _LogicBase is not object:
            _LogicBase.__init__(self)
        applyHomeFolder()  # the HomeFolder setting becomes SSLSEG_HOME (backbone cache) before anything reads it
        self.removeStaleWorkFolders()  # scene data that crashed runs left in work folders
        self.modelStore = ModelStore(modelsFolder)
        self.trainingPairs = []  # (volumeNode, segmentationNode) collected by addCorrectedCase and the widget
        self.currentJob = None
        self.rankingFolder = None  # the last ranking's files (segmentations, uncertainty maps) until the next one

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
        job = self.newJob("download", ["models", "download", name, "--progress", "json"],
                  complete=lambda done: done.get("model"), onEvent=onEvent, onLog=onLog, onFinished=onFinished)
        return self._run(job, waitForCompletion)

    def importBackbone(self, path, name=None, waitForCompletion=False, onLog=None, onFinished=None):
        """Register a manually downloaded checkpoint (checked in the background: safe load, complete encoder)."""
        args = ["models", "import", os.fspath(path)] + (["--name", name] if name else [])
        job = self.newJob("import", args, onLog=onLog, onFinished=onFinished)
        return self._run(job, waitForCompletion)

    # -- fine-tuning --

    def finetune(self, backbone, trainingPairs, segmentNames=None, preset=None, device=None,
                 validationShare=None, initialModel=None, modelName=None, steps=None, timeLimit=None, seed=0,
                 modality="auto", patchSize=None, batchSize=None, maxLr=None, unlabelledVolumes=None,
                 checkpointEvery=None, waitForCompletion=False, onEvent=None, onLog=None, onFinished=None):
        """Fine-tune ``backbone`` (catalog/imported name, checkpoint path, or None to train from scratch) on
        ``trainingPairs`` [(volumeNode, segmentationNode), ...] and add the model to the models folder.

        ``segmentNames``: the segments to learn, matched by name in every pair (default: all segments of the first
        pair); value i+1 is ``segmentNames[i]``. ``preset``: None picks by device (``cpu`` without a GPU, ``quick``
        with one) and logs the choice. ``validationShare``: share of the pairs held out for validation (None: the
        engine's default, ``sslseg.finetuning.data.default_val_cases``: none below 20 pairs). ``initialModel``: continue training from this model (name or path)
        instead of ``backbone`` (``sslseg finetune --init-model``). ``modality``: "CT" (HU windowing), "MR"
        (z-score) or "auto" (``nodeBridge.guessModality`` of the first volume). ``steps``, ``timeLimit`` (s),
        ``seed``, ``patchSize`` [z, y, x], ``batchSize``, ``maxLr`` override the preset like the CLI options.
        ``unlabelledVolumes``: unlabelled scans of the same kind, volume nodes or a folder (or list file) of images,
        used within the same time (``sslseg finetune --unlabelled``: pseudo-labels, then a second round).
        ``checkpointEvery`` (s): how often the engine saves the training state (``--checkpoint-every``; default
        300): a run that crashes or is killed keeps its work folder, and :meth:`resumeFinetune` continues it.

        Returns the new model's folder (``waitForCompletion=True``) or a :class:`Job` whose ``result`` is that
        path. Nothing is added to the models folder unless training finished. Every option is checked before any
        scene data is written."""
        pairs = checkPairs(trainingPairs)
        segmentNames = segmentNamesFor(pairs, segmentNames)
        checkUnlabelled(unlabelledVolumes, pairs)
        device = parse_device(device or defaultDevice())  # None: the Device setting (auto when unset)
        preset = self._checkPreset(preset, device, onLog)
        options = self._trainingOptions(steps, timeLimit, seed, patchSize, batchSize, maxLr)
        options += self._validationOptions(validationShare, len(pairs))
        if checkpointEvery is not None:
            options += ["--checkpoint-every", str(validation.float_in_range("checkpointEvery", checkpointEvery, 0.0))]
        modality = checkModality(modality, pairs[0][0])
        initialModelPath = self.resolveModel(initialModel) if initialModel else None
        modelName = self.modelStore.uniqueName(modelName or self._defaultModelName(segmentNames, backbone))
        self._refuseIfRunning()

        work = self.makeWorkFolder("finetune")
        try:
            dataset, out = os.path.join(work, "dataset"), os.path.join(work, "model")
            labelInfo = write_json_atomic(exportDataset(pairs, segmentNames, dataset, modality),
                                          os.path.join(work, "labels.json"))
            # a model to continue from replaces the backbone (its network carries the pretrained encoder)
            start = ["--init-model", initialModelPath] if initialModelPath else \
                ["--backbone", os.fspath(backbone) if backbone else "none"]
            args = ["finetune", *start, "--data", dataset, "--label-info", labelInfo, "--out", out,
                    "--preset", preset, "--device", device, "--progress", "json", *options,
                    *unlabelledOptions(unlabelledVolumes, work)]
            write_json_atomic({"args": args, "modelName": modelName, "out": out}, os.path.join(work, RESUME_FILE))
            job = self.newJob("fine-tuning", args, workFolder=work, complete=lambda done: self._addFinishedModel(
                work, out, modelName), onEvent=onEvent, onLog=onLog, onFinished=onFinished, resumable=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._run(job, waitForCompletion)

    def resumableFinetunes(self):
        """Work folders of fine-tunes that crashed or were killed (Slicer's too) after a checkpoint, newest first:
        ``[{"folder", "modelName"}]``. Console: ``logic.resumeFinetune(logic.resumableFinetunes()[0]["folder"])``."""
        from SSLCommonLib.jobs import holdsResumableRun, temporaryParent

        parent, found = temporaryParent(), []
        prefix = f"{self.moduleName}-finetune-"
        job = self.currentJob
        running = job.workFolder if job is not None and job.status == "running" else None
        for entry in sorted(os.scandir(parent), key=lambda e: e.stat().st_mtime, reverse=True) \
                if os.path.isdir(parent) else []:
            if entry.name.startswith(prefix) and holdsResumableRun(entry.path) and entry.path != running:
                found.append({"folder": entry.path, "modelName": self._readResume(entry.path)["modelName"]})
        return found

    @staticmethod
    def _readResume(folder):
        import json

        with open(os.path.join(folder, RESUME_FILE), encoding="utf-8") as stream:
            return json.load(stream)

    def resumeFinetune(self, folder, waitForCompletion=False, onEvent=None, onLog=None, onFinished=None):
        """Continue the interrupted fine-tune kept in ``folder`` (see :meth:`resumableFinetunes`) from its last
        checkpoint (``sslseg finetune --resume``): the same data, options and model name as the first start."""
        from SSLCommonLib.jobs import holdsResumableRun

        if not holdsResumableRun(folder):
            raise UserError(f"{folder} holds no interrupted fine-tune to resume")
        self._refuseIfRunning()
        saved = self._readResume(folder)
        out, modelName = saved["out"], saved["modelName"]
        job = self.newJob("fine-tuning", [*saved["args"], "--resume"], workFolder=folder,
                          complete=lambda done: self._addFinishedModel(folder, out, modelName), onEvent=onEvent,
                          onLog=onLog, onFinished=onFinished, resumable=True)
        return self._run(job, waitForCompletion)

    def discardResumable(self, folder):
        """Remove an interrupted fine-tune's work folder (its checkpoint and exported data)."""
        from SSLCommonLib.jobs import holdsResumableRun

        if holdsResumableRun(folder):
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _checkPreset(preset, device, onLog):
        if preset is None:
            preset, note = presetForDevice(device)
            logging.info("SSLSegmentation: %s", note)
            if onLog:
                onLog(note[0].upper() + note[1:])
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        return preset

    @staticmethod
    def _trainingOptions(steps, timeLimit, seed, patchSize, batchSize, maxLr):
        """The ``sslseg finetune`` options for the overrides given, checked with the engine's validation."""
        options = ["--seed", str(validation.seed(seed, "seed"))]
        if steps is not None:
            options += ["--steps", str(validation.positive_int("steps", steps))]
        if timeLimit is not None:
            options += ["--time-limit", repr(validation.float_in_range("timeLimit", timeLimit, 0.0))]
        if patchSize is not None:
            options += ["--patch", *map(str, validation.patch_size("patchSize", patchSize))]
        if batchSize is not None:
            options += ["--batch-size", str(validation.positive_int("batchSize", batchSize))]
        if maxLr is not None:
            options += ["--max-lr", repr(validation.positive_float("maxLr", maxLr))]
        return options

    @staticmethod
    def _validationOptions(validationShare, count):
        if validationShare is None:
            return []
        share = validation.float_in_range("validationShare", validationShare, 0.0, 1.0, strict_maximum=True)
        return ["--val-cases", str(min(int(round(share * count)), count - 1))]

    @staticmethod
    def _defaultModelName(segmentNames, backbone):
        base = "-".join(segmentNames[:3]) + ("-etc" if len(segmentNames) > 3 else "")
        source = os.path.basename(os.fspath(backbone)) if backbone else "scratch"
        return suggestModelName(f"{base} ({source})")

    def _addFinishedModel(self, work, out, modelName):
        """Move the engine's finished model into the models folder; when that fails, keep it (ResultKept)."""
        from sslseg.model_folder import MODEL_JSON

        if not os.path.isfile(os.path.join(out, MODEL_JSON)):
            raise UserError(f"the engine finished but wrote no model folder at {out}")
        # another model may have taken the name during the run: never lose a finished training to a clash
        store = self.modelStore
        name = modelName if not os.path.exists(store.modelPath(modelName)) else store.uniqueName(modelName)
        try:
            return store.addModel(out, name)
        except Exception as error:  # noqa: BLE001 - whatever failed (disk full, no permission), keep the model
            raise self._keepFinishedModel(work, out, error) from None

    def _keepFinishedModel(self, work, out, error):
        """A ResultKept error saying where the finished model stays; the exported scene data goes."""
        for exported in ("dataset", "labels.json"):
            remove_quietly(os.path.join(work, exported))
        reason = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else error
        return ResultKept(
            f"the fine-tuned model could not be added to the models folder {self.modelStore.folder} "
            f"({validation.one_line(reason)}). It is kept at {out}: make room or make the folder writable, then "
            f"add it with 'Import model' (logic.modelStore.importModel({out!r})).", out)

    # -- segmentation --

    def resolveModel(self, model):
        """A model name from the models folder, a model folder or a packed ``.sslmodel`` file -> its path."""
        from sslseg.model_folder import MODEL_JSON

        if model is None:
            raise UserError("choose a model")
        model = os.fspath(model)
        if os.path.isfile(os.path.join(model, MODEL_JSON)) or os.path.isfile(model):
            return os.path.abspath(model)
        path = model if os.path.sep in model or "/" in model else self.modelStore.modelPath(model)
        if os.path.isfile(os.path.join(path, MODEL_JSON)):
            return path
        raise UserError(f"model {model!r} not found (neither in {self.modelStore.folder} nor as a path)")

    @staticmethod
    def modelLabels(modelPath):
        """The model's segments ``[{value, name, color, terminology}]`` (colour and terminology optional;
        ``sslseg.model_folder.read_model_meta``: a checked model.json of a folder or packed file)."""
        from sslseg.model_folder import read_model_meta

        return read_model_meta(modelPath)["labels"]

    def segment(self, model, inputVolumeNode, tta=False, device=None, outputName=None, uncertainty=False,
                writeInto=None, waitForCompletion=False, onEvent=None, onLog=None, onFinished=None):
        """Segment ``inputVolumeNode`` with ``model`` (name in the models folder, folder or ``.sslmodel`` path).
        The result is a NEW segmentation node with the model's segment names, colours and terminology on the
        input's geometry, under the input's study; with ``writeInto`` (an existing segmentation node) the model's
        segments are written into that node instead, replacing its segments of the same names and leaving its
        other segments as they were. ``tta``: average over mirrorings (8x slower on CPU).

        ``uncertainty``: also compute the uncertainty map (normalised entropy, 0..1), added as a scalar volume over
        the input (``resultNodes.uncertaintyOf(result)`` gives it with its per-segment summary, also logged).

        Returns the segmentation node (``waitForCompletion=True``) or a :class:`Job` whose ``result`` it is."""
        if inputVolumeNode is None or not inputVolumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise UserError("choose an input volume")
        if writeInto is not None and (not writeInto.IsA("vtkMRMLSegmentationNode") or
                                      writeInto.GetScene() is not inputVolumeNode.GetScene()):
            raise UserError("writeInto must be a segmentation node of the input volume's scene")
        device = parse_device(device or defaultDevice())  # None: the Device setting (auto when unset)
        modelPath = self.resolveModel(model)
        labels = self.modelLabels(modelPath)
        modelName = os.path.basename(modelPath.rstrip("/\\"))
        name = outputName or f"{inputVolumeNode.GetName()} {modelName}"
        self._refuseIfRunning()

        from SSLCommonLib import nodeBridge

        work = self.makeWorkFolder("segment")
        try:
            inputFile = nodeBridge.writeVolume(inputVolumeNode, os.path.join(work, "input", "volume_0000.nii.gz"))
            args = ["predict", "--model", modelPath, "--input", inputFile, "--output", os.path.join(work, "output"),
                    "--device", device, "--progress", "json"]
            # with uncertainty the engine turns mirroring on itself: the map is the entropy of the TTA mean
            args += ["--uncertainty"] if uncertainty else ["--tta" if tta else "--no-tta"]
            args += ["--tta"] if uncertainty and tta else []
            job = self.newJob("segmentation", args, workFolder=work, onEvent=onEvent, onLog=onLog,
                              onFinished=onFinished, complete=lambda done: self._segmentResult(
                                  done, inputVolumeNode, labels, name, writeInto, uncertainty, onLog))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._run(job, waitForCompletion)

    @staticmethod
    def _segmentResult(done, inputVolumeNode, labels, name, writeInto, uncertainty, onLog):
        """The engine's files (read with its checked reader, on the input's grid) as scene nodes."""
        from SSLCommonLib import nodeBridge
        from . import resultNodes

        labelFile, uncertaintyFile = resultNodes.engineOutputs(done)
        labelArray = resultNodes.readOnGrid(labelFile, inputVolumeNode, "segmentation")
        if uncertainty and uncertaintyFile is None:
            raise UserError("the engine wrote no uncertainty map")
        uncertaintyArray = resultNodes.readOnGrid(uncertaintyFile, inputVolumeNode, "uncertainty map") \
            if uncertainty else None
        if writeInto is not None:
            nodeBridge.writeLabelArrayInto(writeInto, labelArray, labels, inputVolumeNode)
            result = writeInto
        else:
            result = nodeBridge.labelArrayToSegmentationNode(labelArray, labels, inputVolumeNode, name)
        if uncertainty:
            summary = resultNodes.caseSummary(done)
            volume = resultNodes.addUncertaintyVolume(uncertaintyArray, inputVolumeNode, f"{name} uncertainty",
                                                      summary)
            resultNodes.linkUncertainty(result, volume)
            text = f"{inputVolumeNode.GetName()}: {resultNodes.summaryText(summary)}"
            logging.info("SSLSegmentation: %s", text)
            if onLog:
                onLog(text)
        return result

    def editInSegmentEditor(self, segmentationNode, sourceVolumeNode, showIn3D=True):
        """Select the segmentation and its source volume in the Segment Editor (its parameter node) and show the
        segments as a 3D surface; then open the Segment Editor module to correct them. Returns the editor node."""
        from . import resultNodes

        if segmentationNode is None or sourceVolumeNode is None:
            raise UserError("a segmentation and its source volume are needed")
        return resultNodes.selectInSegmentEditor(segmentationNode, sourceVolumeNode, showIn3D)

    # -- which case next --

    def rankCandidates(self, model, volumeNodes=None, folder=None, device=None, tta=False, outputFolder=None,
                       waitForCompletion=False, onEvent=None, onLog=None, onFinished=None):
        """Segment candidate volumes (``volumeNodes`` from the scene, or the images of ``folder``) with their
        uncertainty and order them most uncertain first: the case to correct next is the first (uncertainty
        sampling). Runs ``sslseg rank`` in the background; results are kept in ``outputFolder`` (default: a
        folder in Slicer's temporary path, removed with the session's others).

        Returns the ranking (``waitForCompletion=True``) or a :class:`Job` whose ``result`` it is: a list of dicts
        ``{name, score, per_segment, volumeNode (scene candidates; None for files), input, segmentation,
        uncertainty_map, model}``. ``loadCandidate(ranking[0])`` loads one, ready in the Segment Editor."""
        from .ranking import RankingRun

        run = RankingRun(self, model, volumeNodes, folder, device or defaultDevice(), tta, outputFolder)
        self._refuseIfRunning()
        return self._run(run.job(onEvent, onLog, onFinished), waitForCompletion)

    def clearRanking(self):
        """Remove the last ranking's files (kept in Slicer's temporary path for ``loadCandidate``)."""
        if self.rankingFolder:
            shutil.rmtree(self.rankingFolder, ignore_errors=True)
            self.rankingFolder = None

    def loadCandidate(self, candidate, showIn3D=True):
        """Load a ranked candidate: its volume (the scene node, or read from its file), its segmentation and its
        uncertainty map, selected in the Segment Editor. Returns ``(volumeNode, segmentationNode)``; correct the
        segmentation, then ``addCorrectedCase(volumeNode, segmentationNode)``."""
        from .ranking import loadCandidate

        volume, segmentation = loadCandidate(candidate, self.modelLabels(candidate["model"]))
        self.editInSegmentEditor(segmentation, volume, showIn3D)
        return volume, segmentation

    # -- human in the loop --

    def addCorrectedCase(self, volumeNode, segmentationNode):
        """Add a (volume, corrected segmentation) pair to ``trainingPairs`` (once); returns the list. Then continue
        training with ``finetune(..., trainingPairs=logic.trainingPairs, initialModel=model)``."""
        (pair,) = checkPairs([(volumeNode, segmentationNode)])
        if segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise UserError(f"segmentation '{segmentationNode.GetName()}' has no segments")
        if not any(v is pair[0] and s is pair[1] for v, s in self.trainingPairs):
            self.trainingPairs.append(pair)
        return self.trainingPairs


def checkUnlabelled(unlabelledVolumes, pairs):
    """Unlabelled volumes are scalar volume nodes, none of them a training volume, or a folder/list file path."""
    if unlabelledVolumes is None or isinstance(unlabelledVolumes, (str, os.PathLike)):
        return
    training = {pair[0].GetID() for pair in pairs}
    for volume in unlabelledVolumes:
        if not hasattr(volume, "IsA") or not volume.IsA("vtkMRMLScalarVolumeNode"):
            raise UserError(f"unlabelled volumes must be volume nodes (got {volume!r:.60})")
        if volume.GetID() in training:
            raise UserError(f"'{volume.GetName()}' is a training volume; give each scan once")


def unlabelledOptions(unlabelledVolumes, work) -> list:
    """``--unlabelled`` for the engine: a folder/list file as given, or the volume nodes written into the job's
    work folder with a list file naming them."""
    from SSLCommonLib import nodeBridge

    if unlabelledVolumes is None:
        return []
    if isinstance(unlabelledVolumes, (str, os.PathLike)):
        return ["--unlabelled", os.fspath(unlabelledVolumes)]
    folder = os.path.join(work, "unlabelled")
    os.makedirs(folder, exist_ok=True)
    paths = [nodeBridge.writeVolume(volume, os.path.join(folder, f"unlabelled_{index:03d}.nii.gz"))
             for index, volume in enumerate(unlabelledVolumes)]
    listFile = write_text_atomic("".join(os.path.abspath(path) + "\n" for path in paths),
                                 os.path.join(work, "unlabelled.txt"))
    return ["--unlabelled", listFile]
