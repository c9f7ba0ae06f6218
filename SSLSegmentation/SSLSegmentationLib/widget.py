"""The module panel: Qt wiring only. Every action calls ``SSLSegmentationLogic`` (the same calls work in the Python
console); long work runs in a background process polled by a timer, so Slicer stays responsive.

Runs inside Slicer only (Qt, CTK and MRML widgets). The widget names used here exist in
``Resources/UI/SSLSegmentation.ui`` (checked by the tests).
"""

from __future__ import annotations

import logging
import os

import qt
import slicer

from sslseg.errors import UserError

from SSLCommonLib.installLogic import InstallLogic
from SSLCommonLib.panelBase import ModulePanelBase, deviceNote, formatSeconds, torchReady
from SSLCommonLib.processRunner import ProcessFailed
from SSLCommonLib.progressChart import ProgressChart

from .modelStore import checkModelName
from .resultNodes import perSegmentText, showUncertainty, summaryText, uncertaintyOf
from .segmentationLogic import SSLSegmentationLogic, presetNote

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

SCRATCH = "none"
AUTO = "auto"  # the preset and validation-share widgets' entry for None (chosen by device / by the engine)
PHASES = {"decoder_warmup": _("decoder warm-up (encoder frozen)"), "full_warmup": _("whole-network warm-up"),
          "poly": _("training"), "train": _("training"), "predict": _("segmenting"), "download": _("downloading")}


class SSLSegmentationWidgetImpl(ModulePanelBase):
    """Created by ``SSLSegmentationWidget.setup`` (the module file) with the scripted module widget."""

    uiFile = "UI/SSLSegmentation.ui"

    def __init__(self, moduleWidget):
        ModulePanelBase.__init__(self, moduleWidget, SSLSegmentationLogic(),
                                 InstallLogic.forEngine("SSLSegmentation"))
        self._backbones = {}
        self.candidates = []  # the last ranking (SSLSegmentationLogic.rankCandidates), most uncertain first
        for table in (self.ui.backboneTable, self.ui.trainingPairsTable, self.ui.candidatesTable):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
            table.verticalHeader().hide()
        self.ui.backboneProgressBar.hide()

        self.ui.backboneTable.itemSelectionChanged.connect(self.onBackboneSelected)
        self.ui.downloadBackboneButton.clicked.connect(self.onDownloadBackbone)
        self.ui.importBackboneButton.clicked.connect(self.onImportBackbone)
        self.ui.refreshBackbonesButton.clicked.connect(self.refreshBackbones)
        self.ui.addPairButton.clicked.connect(self.onAddPair)
        self.ui.removePairButton.clicked.connect(self.onRemovePair)
        self.ui.segmentsListWidget.itemChanged.connect(self.onSegmentChecked)
        self.ui.validationPercentSpinBox.valueChanged.connect(self.onValidationPercentChanged)
        self.ui.presetComboBox.currentTextChanged.connect(self.onPresetChanged)
        self.ui.deviceComboBox.currentTextChanged.connect(self.onDeviceChanged)
        self.ui.finetuneButton.clicked.connect(self.onFinetuneOrCancel)
        self.ui.showChartButton.clicked.connect(self.showChart)
        self.ui.modelsListWidget.itemSelectionChanged.connect(self.onModelSelected)
        self.ui.renameModelButton.clicked.connect(self.onRenameModel)
        self.ui.deleteModelButton.clicked.connect(self.onDeleteModel)
        self.ui.exportModelButton.clicked.connect(self.onExportModel)
        self.ui.importModelButton.clicked.connect(self.onImportModel)
        self.ui.modelComboBox.currentTextChanged.connect(lambda text: self._setParameter("model", text))
        self.ui.segmentButton.clicked.connect(self.onSegmentOrCancel)
        self.ui.editInSegmentEditorButton.clicked.connect(self.onEditInSegmentEditor)
        self.ui.addCorrectedCaseButton.clicked.connect(self.onAddCorrectedCase)
        self.ui.candidateVolumesSelector.checkedNodesChanged.connect(self.onCandidatesChecked)
        self.ui.candidateFolderPathLineEdit.currentPathChanged.connect(
            lambda path: self._setParameter("candidateFolder", path))
        self.ui.rankButton.clicked.connect(self.onRankOrCancel)
        self.ui.loadCandidateButton.clicked.connect(self.onLoadCandidate)

        self.initializeParameterNode()
        self.refreshBackbones()
        self.refreshModels()
        self.updateDeviceNote()
        self.updateButtons()

    # -- parameter node --

    def cleanup(self):
        ModulePanelBase.cleanup(self)
        self.logic.clearRanking()  # the candidates' segmentations and maps go with the session

    def enter(self):
        """Entering the module lists what changed meanwhile: backbones pretrained in SSLPretrain, models."""
        ModulePanelBase.enter(self)
        self.refreshBackbones()
        self.refreshModels()

    def showParameterNode(self):
        parameterNode = self.parameterNode
        # widgets whose "auto" entry is None in the parameter node are bound here, not by connectGui
        self.ui.presetComboBox.setCurrentText(parameterNode.preset or AUTO)
        self.ui.validationPercentSpinBox.value = -1 if parameterNode.validationPercent is None \
            else parameterNode.validationPercent
        self.ui.deviceComboBox.setCurrentText(self.initialDevice())
        self.ui.candidateFolderPathLineEdit.currentPath = parameterNode.candidateFolder
        self._checkNodes(self.ui.candidateVolumesSelector, parameterNode.candidateVolumes)
        self.refreshPairs()
        self.updatePresetNote()

    # -- backbones --

    def refreshBackbones(self):
        table = self.ui.backboneTable
        try:
            backbones = self.logic.listBackbones()
        except Exception as error:  # the engine's packages may not be installed yet
            logging.warning("SSLSegmentation: cannot list backbones: %s", error)
            backbones = []
            self.ui.backboneInfoLabel.setText(_("Backbones are listed once the Python packages are installed."))
        rows = [{"name": SCRATCH, "title": _("no backbone: train from scratch"), "cached": True}] + backbones
        self._backbones = {entry["name"]: entry for entry in rows}
        table.setRowCount(len(rows))
        for row, entry in enumerate(rows):
            if entry["name"] == SCRATCH:
                status, size = "-", "-"
            elif entry.get("cached"):
                status = _("cached")
                path = entry.get("path")
                size = f"{os.path.getsize(path) / 1e6:.0f} MB" if path and os.path.isfile(path) else "-"
            else:
                status = _("manual download") if entry.get("download") == "manual" else _("not downloaded")
                size = "-"
            if entry.get("supported") is False:
                status += " " + _("(not supported yet)")
            cells = [entry["name"], status, size, entry.get("license") or "-", entry.get("modality") or "-"]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(str(text))
                item.setToolTip(entry.get("title") or entry["name"])
                item.setData(qt.Qt.UserRole, entry["name"])
                table.setItem(row, column, item)
        current = self.parameterNode.backbone if self.parameterNode else SCRATCH
        for row, entry in enumerate(rows):
            if entry["name"] == current:
                table.selectRow(row)

    def selectedBackbone(self):
        items = self.ui.backboneTable.selectedItems()
        return self._backbones.get(items[0].data(qt.Qt.UserRole)) if items else None

    def onBackboneSelected(self):
        entry = self.selectedBackbone()
        if entry is None:
            return
        self._setParameter("backbone", entry["name"])
        self.updateButtons()
        plan = entry.get("input") or {}
        details = [entry.get("title") or "", entry.get("method") and _("method: ") + str(entry["method"]),
                   plan.get("spacing") and _("spacing: ") + str(plan["spacing"]) + " mm",
                   entry.get("pretraining_data") and _("pretrained on: ") + str(entry["pretraining_data"])]
        self.ui.backboneInfoLabel.setText("; ".join(d for d in details if d))

    def onDownloadBackbone(self):
        entry = self.selectedBackbone()
        if not entry or entry["name"] == SCRATCH or not self._ensureDependencies():
            return
        if entry.get("download") == "manual":
            slicer.util.infoDisplay(_("This backbone cannot be downloaded automatically. Download the file from "
                                      "{url} and use 'Import file...'.").format(url=entry.get("homepage")))
            return
        self.ui.backboneProgressBar.show()
        self.ui.backboneProgressBar.setValue(0)

        def onEvent(event):
            if event.get("event") == "progress" and event.get("total"):
                self.ui.backboneProgressBar.setValue(int(100 * event["step"] / event["total"]))

        def onFinished(job):
            self.ui.backboneProgressBar.hide()
            self._jobFinished(job, _("Download"))
            self.refreshBackbones()

        self._startJob(lambda: self.logic.downloadBackbone(entry["name"], onEvent=onEvent, onLog=self.appendLog,
                                                          onFinished=onFinished))

    def onImportBackbone(self):
        path = qt.QFileDialog.getOpenFileName(self.moduleWidget.parent, _("Import a backbone checkpoint"), "",
                                              _("Checkpoints (*.pth *.pt *.ckpt);;All files (*)"))
        if not path or not self._ensureDependencies():
            return

        def onFinished(job):
            self._jobFinished(job, _("Import"))
            self.refreshBackbones()

        self._startJob(lambda: self.logic.importBackbone(path, onLog=self.appendLog, onFinished=onFinished))

    # -- training pairs --

    def _pairs(self):
        if self.parameterNode is None:
            return []
        return list(zip(self.parameterNode.trainingVolumes, self.parameterNode.trainingSegmentations))

    def _setPairs(self, pairs):
        self.parameterNode.trainingVolumes = [volume for volume, _ in pairs]
        self.parameterNode.trainingSegmentations = [segmentation for _, segmentation in pairs]
        self.refreshPairs()

    def onAddPair(self):
        volume = self.ui.trainingVolumeSelector.currentNode()
        segmentation = self.ui.trainingSegmentationSelector.currentNode()
        if volume is None or segmentation is None:
            slicer.util.warningDisplay(_("Choose a volume and its segmentation."))
            return
        pairs = self._pairs()
        if not any(v is volume and s is segmentation for v, s in pairs):
            self._setPairs(pairs + [(volume, segmentation)])

    def onRemovePair(self):
        rows = {index.row() for index in self.ui.trainingPairsTable.selectionModel().selectedRows()}
        self._setPairs([pair for row, pair in enumerate(self._pairs()) if row not in rows])

    def refreshPairs(self):
        pairs = [(v, s) for v, s in self._pairs() if v is not None and s is not None]
        table = self.ui.trainingPairsTable
        table.setRowCount(len(pairs))
        names = []
        for row, (volume, segmentation) in enumerate(pairs):
            table.setItem(row, 0, qt.QTableWidgetItem(volume.GetName()))
            table.setItem(row, 1, qt.QTableWidgetItem(segmentation.GetName()))
            seg = segmentation.GetSegmentation()
            for i in range(seg.GetNumberOfSegments()):
                if seg.GetNthSegment(i).GetName() not in names:
                    names.append(seg.GetNthSegment(i).GetName())
        chosen = self._chosenSegmentNames()
        listWidget = self.ui.segmentsListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        for name in names:
            present = sum(1 for _, s in pairs if s.GetSegmentation().GetSegmentIdBySegmentName(name))
            item = qt.QListWidgetItem(name if present == len(pairs) else
                                      _("{name} (missing in {count} pair(s))").format(name=name,
                                                                                      count=len(pairs) - present))
            item.setData(qt.Qt.UserRole, name)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if (not chosen and present == len(pairs)) or name in chosen
                               else qt.Qt.Unchecked)
            listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        self.updateButtons()

    def _chosenSegmentNames(self):
        text = self.parameterNode.segmentNames if self.parameterNode else ""
        return [name for name in text.split(",") if name]

    def _checkedSegmentNames(self):
        listWidget = self.ui.segmentsListWidget
        return [listWidget.item(i).data(qt.Qt.UserRole) for i in range(listWidget.count)
                if listWidget.item(i).checkState() == qt.Qt.Checked]

    def onSegmentChecked(self, item=None):
        self._setParameter("segmentNames", ",".join(self._checkedSegmentNames()))

    # -- fine-tuning --

    def updateDeviceNote(self):
        self.ui.deviceNoteLabel.setText(deviceNote(self.installLogic, _(
            "No CUDA GPU visible to PyTorch: training runs on the CPU and is slow. The 'auto' preset picks 'cpu' (a "
            "small network); a CUDA build of torch comes with the PyTorch extension.")))
        self.updatePresetNote()

    def onPresetChanged(self, text):
        self._setParameter("preset", None if text == AUTO else text)
        self.updatePresetNote()

    def onDeviceChanged(self, text):
        ModulePanelBase.onDeviceChanged(self, text)
        self.updatePresetNote()

    def onValidationPercentChanged(self, value):
        self._setParameter("validationPercent", None if value < 0 else int(value))

    def updatePresetNote(self):
        """Say which preset a run will use (``presetNote``): the device's for "auto", else the one chosen, with a
        warning when a GPU preset would run on the CPU."""
        chosen = self.ui.presetComboBox.currentText
        if torchReady(self.installLogic):  # telling the device imports torch: not before the install check
            _preset, text = presetNote(None if chosen == AUTO else chosen, self.ui.deviceComboBox.currentText or AUTO)
        else:
            text = _("The preset is chosen by device once torch is installed.")
        self.ui.presetNoteLabel.setText(text)

    def _startJob(self, start):
        try:
            self.job = start()
        except (UserError, ProcessFailed) as error:
            slicer.util.errorDisplay(str(error))
            self.job = None
        self.updateButtons()
        return self.job

    def _jobFinished(self, job, what):
        self.job = None
        self.updateButtons()
        if job.status == "failed":
            resumable = _(" It can be resumed from its last checkpoint: press Fine-tune again.") \
                if job.keptPath and job.resumable else ""
            slicer.util.errorDisplay(_("{what} failed: {message}").format(what=what, message=job.errorMessage) +
                                     resumable)
        elif job.status == "cancelled":
            self.ui.statusLabel.setText(_("Ended because {reason}: nothing was changed.").format(reason=job.endReason)
                                        if job.endReason else _("Cancelled: nothing was changed."))

    def updateButtons(self):
        running = self.isRunning()
        kind = self.job.kind if running else None
        self.ui.finetuneButton.text = _("Cancel") if kind == "fine-tuning" else _("Fine-tune")
        self.ui.segmentButton.text = _("Cancel") if kind == "segmentation" else _("Segment")
        self.ui.rankButton.text = _("Cancel") if kind == "ranking" else _("Rank by uncertainty")
        self.ui.finetuneButton.enabled = kind in (None, "fine-tuning") and bool(self._pairs())
        self.ui.segmentButton.enabled = kind in (None, "segmentation")
        self.ui.rankButton.enabled = kind in (None, "ranking")
        # switching to the Segment Editor leaves the module, which ends the run: not while one runs
        for button in (self.ui.importBackboneButton, self.ui.deleteModelButton, self.ui.renameModelButton,
                       self.ui.importModelButton, self.ui.addCorrectedCaseButton, self.ui.editInSegmentEditorButton):
            button.enabled = not running
        self.ui.loadCandidateButton.enabled = not running and bool(self.candidates)
        entry = self.selectedBackbone()
        self.ui.downloadBackboneButton.enabled = (not running and entry is not None and entry["name"] != SCRATCH
                                                  and not entry.get("cached"))

    def onProgressEvent(self, event):
        kind = event.get("event")
        if kind == "start":
            self.ui.progressBar.setValue(0)
            self.appendLog(_("Running on {device}. {note}").format(device=event.get("device"),
                                                                   note=event.get("note", "")))
        elif kind == "progress" and event.get("total"):
            self.ui.progressBar.setValue(int(100 * event["step"] / event["total"]))
            loss = event.get("loss")
            self.ui.statusLabel.setText(
                _("{phase}: step {step}/{total}{loss}, {eta} left").format(
                    phase=PHASES.get(event.get("phase"), event.get("phase")), step=event["step"],
                    total=event["total"], loss=f", loss {loss:.3f}" if isinstance(loss, float) else "",
                    eta=formatSeconds(event.get("eta"))))
        elif kind == "validation":
            dice = ", ".join(f"{name} {value:.3f}" for name, value in (event.get("dice") or {}).items())
            self.appendLog(_("Validation Dice at step {step}: {dice}").format(step=event.get("step"), dice=dice))
        if self.chart is not None:
            self.chart.addEvent(event)

    def onFinetuneOrCancel(self):
        if self.isRunning():
            self.job.cancel()
            return
        if not self._ensureDependencies():
            return
        if self._offerResume():
            return
        p = self.parameterNode
        segmentNames = self._checkedSegmentNames()
        if not segmentNames:
            slicer.util.warningDisplay(_("Check the segments to learn (segments present in every pair)."))
            return
        backbone = None if p.backbone in ("", SCRATCH) else p.backbone
        initialModel = p.model if p.continueFromModel and p.model else None
        self._newChart()
        self._startJob(lambda: self.logic.finetune(
            backbone, self._pairs(), segmentNames=segmentNames, preset=p.preset,  # None: by device, logged
            device=p.device, validationShare=None if p.validationPercent is None else p.validationPercent / 100.0,
            initialModel=initialModel, modelName=p.modelName or None, onEvent=self.onProgressEvent,
            onLog=self.appendLog, onFinished=self._finetuneFinished))
        if self.job is not None:
            self.showChart()

    def _offerResume(self):
        """A fine-tune that crashed or was killed after a checkpoint: resume it (True) or discard it and go on."""
        interrupted = self.logic.resumableFinetunes()
        if not interrupted:
            return False
        name = interrupted[0]["modelName"]
        if not slicer.util.confirmYesNoDisplay(_("The fine-tuning of '{name}' was interrupted. Resume it from its "
                                                 "last checkpoint? (No: discard it and start a new run.)").format(
                                                     name=name)):
            self.logic.discardResumable(interrupted[0]["folder"])
            return False

        self._newChart()
        self._startJob(lambda: self.logic.resumeFinetune(interrupted[0]["folder"], onEvent=self.onProgressEvent,
                                                         onLog=self.appendLog, onFinished=self._finetuneFinished))
        if self.job is not None:
            self.showChart()
        return True

    def _newChart(self):
        if self.chart is not None:
            self.chart.removeNodes()
        self.chart = ProgressChart(slicer.mrmlScene, _("Fine-tuning"))
        self.ui.logTextEdit.clear()

    def _finetuneFinished(self, job):
        self._jobFinished(job, _("Fine-tuning"))
        if job.status == "succeeded":
            self.ui.statusLabel.setText(_("Model saved: {path}").format(path=job.result))
            self.refreshModels(select=os.path.basename(job.result))

    # -- models --

    def refreshModels(self, select=None):
        models = self.logic.modelStore.listModels()
        listWidget, combo = self.ui.modelsListWidget, self.ui.modelComboBox
        current = select or (self.parameterNode.model if self.parameterNode else "")
        listWidget.clear()
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for model in models:
            dice = f", Dice {model['mean_dice']:.2f}" if isinstance(model.get("mean_dice"), float) else ""
            segments = ", ".join(label["name"] for label in model["labels"])
            item = qt.QListWidgetItem(f"{model['name']}  ({segments}; {model['backbone']}, "
                                      f"{model['configuration']}{dice})")
            item.setData(qt.Qt.UserRole, model["name"])
            item.setToolTip(model["path"])
            listWidget.addItem(item)
            combo.addItem(model["name"])
        combo.blockSignals(wasBlocked)
        if current in [m["name"] for m in models]:
            combo.setCurrentText(current)
        self._setParameter("model", combo.currentText)
        self.ui.modelsFolderLabel.setText(_("Models folder: {folder}").format(folder=self.logic.modelStore.folder))

    def selectedModel(self):
        items = self.ui.modelsListWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def onModelSelected(self):
        name = self.selectedModel()
        if name:
            self.ui.modelComboBox.setCurrentText(name)

    def onRenameModel(self):
        name = self.selectedModel()
        if not name:
            return
        newName = qt.QInputDialog.getText(self.moduleWidget.parent, _("Rename model"), _("New name:"),
                                          qt.QLineEdit.Normal, name)
        if newName and newName != name:
            with slicer.util.tryWithErrorDisplay(_("Renaming failed.")):
                self.logic.modelStore.renameModel(name, checkModelName(newName))
            self.refreshModels(select=newName)

    def onDeleteModel(self):
        name = self.selectedModel()
        if name and slicer.util.confirmYesNoDisplay(_("Delete model '{name}' from the models folder?").format(
                name=name)):
            with slicer.util.tryWithErrorDisplay(_("Deleting failed.")):
                self.logic.modelStore.deleteModel(name)
            self.refreshModels()

    def onExportModel(self):
        name = self.selectedModel()
        if not name:
            return
        path = qt.QFileDialog.getSaveFileName(self.moduleWidget.parent, _("Export model"), name + ".sslmodel",
                                              _("sslseg models (*.sslmodel)"))
        if path and self._ensureDependencies():
            with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
                written = self.logic.modelStore.exportModel(name, path)
                self.appendLog(_("Model exported to {path}").format(path=written))

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(self.moduleWidget.parent, _("Import model"), "",
                                              _("sslseg models (*.sslmodel)"))
        if path and self._ensureDependencies():
            with slicer.util.tryWithErrorDisplay(_("Import failed."), waitCursor=True):
                added = self.logic.modelStore.importModel(path)
                self.refreshModels(select=os.path.basename(added))

    # -- segmentation --

    def onSegmentOrCancel(self):
        if self.isRunning():
            self.job.cancel()
            return
        p = self.parameterNode
        if p.inputVolume is None or not p.model:
            slicer.util.warningDisplay(_("Choose an input volume and a model."))
            return
        if not self._ensureDependencies():
            return

        def onFinished(job):
            self._jobFinished(job, _("Segmentation"))
            if job.status == "succeeded":
                self.showResult(p.inputVolume, job.result)

        self._startJob(lambda: self.logic.segment(p.model, p.inputVolume, tta=p.tta, device=p.device,
                                                  uncertainty=p.uncertainty, writeInto=p.writeInto,
                                                  onEvent=self.onProgressEvent, onLog=self.appendLog,
                                                  onFinished=onFinished))

    def showResult(self, volume, segmentation):
        """The result selected in the Segment Editor with its 3D surface, the uncertainty map over the volume."""
        p = self.parameterNode
        p.inputVolume, p.outputSegmentation = volume, segmentation
        self.logic.editInSegmentEditor(segmentation, volume)
        uncertainty, summary = uncertaintyOf(segmentation)
        p.uncertaintyVolume = uncertainty
        if uncertainty is not None:
            showUncertainty(volume, uncertainty)
        else:
            slicer.util.setSliceViewerLayers(background=volume)
        slicer.util.resetSliceViews()
        text = summaryText(summary) if summary else ""
        self.ui.statusLabel.setText(_("{name} is selected in the Segment Editor: correct it there ('Correct in "
                                      "Segment Editor'), then 'Add corrected case to training'.{extra}").format(
            name=segmentation.GetName(), extra=f" {text[:1].upper()}{text[1:]}." if text else ""))

    def onEditInSegmentEditor(self):
        p = self.parameterNode
        if p.inputVolume is None or p.outputSegmentation is None:
            slicer.util.warningDisplay(_("Segment a volume first."))
            return
        self.logic.editInSegmentEditor(p.outputSegmentation, p.inputVolume)
        slicer.util.selectModule("SegmentEditor")

    # -- which case next --

    @staticmethod
    def _checkNodes(selector, nodes):
        wasBlocked = selector.blockSignals(True)
        for index in range(selector.nodeCount()):
            node = selector.nodeFromIndex(index)
            selector.setCheckState(node, qt.Qt.Checked if any(node is n for n in nodes) else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)

    def onCandidatesChecked(self):
        self._setParameter("candidateVolumes", list(self.ui.candidateVolumesSelector.checkedNodes()))

    def onRankOrCancel(self):
        if self.isRunning():
            self.job.cancel()
            return
        p = self.parameterNode
        folder = p.candidateFolder or None
        volumes = None if folder else [node for node in p.candidateVolumes if node is not None]
        if not p.model or not (folder or volumes):
            slicer.util.warningDisplay(_("Choose a model, and candidate volumes or a folder."))
            return
        if not self._ensureDependencies():
            return

        def onFinished(job):
            self._jobFinished(job, _("Ranking"))
            if job.status == "succeeded":
                self.candidates = job.result
                self.refreshCandidates()

        self._startJob(lambda: self.logic.rankCandidates(p.model, volumeNodes=volumes, folder=folder,
                                                         device=p.device, tta=p.tta, onEvent=self.onProgressEvent,
                                                         onLog=self.appendLog, onFinished=onFinished))

    def refreshCandidates(self):
        table = self.ui.candidatesTable
        table.setRowCount(len(self.candidates))
        for row, candidate in enumerate(self.candidates):
            perSegment = perSegmentText(candidate.get("per_segment"))
            score = candidate.get("score")
            cells = [candidate.get("name") or "", f"{score:.3f}" if isinstance(score, (int, float)) else "-",
                     perSegment]
            for column, text in enumerate(cells):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        if self.candidates:
            table.selectRow(0)  # the most uncertain
        self.updateButtons()

    def onLoadCandidate(self):
        rows = {index.row() for index in self.ui.candidatesTable.selectionModel().selectedRows()}
        if not rows:
            slicer.util.warningDisplay(_("Select a case in the list."))
            return
        with slicer.util.tryWithErrorDisplay(_("Loading the case failed."), waitCursor=True):
            volume, segmentation = self.logic.loadCandidate(self.candidates[min(rows)])
            self.showResult(volume, segmentation)

    def onAddCorrectedCase(self):
        p = self.parameterNode
        if p.inputVolume is None or p.outputSegmentation is None:
            slicer.util.warningDisplay(_("Segment a volume first (its result is the case to correct and add)."))
            return
        with slicer.util.tryWithErrorDisplay(_("Adding the case failed.")):
            self.logic.addCorrectedCase(p.inputVolume, p.outputSegmentation)
            pairs = self._pairs()
            if not any(v is p.inputVolume and s is p.outputSegmentation for v, s in pairs):
                self._setPairs(pairs + [(p.inputVolume, p.outputSegmentation)])
            p.continueFromModel = True
            self.ui.statusLabel.setText(_("Added. Fine-tune again to continue from model '{model}'.").format(
                model=p.model))
