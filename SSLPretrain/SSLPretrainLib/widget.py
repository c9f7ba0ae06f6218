"""The module panel: Qt wiring only. Every action calls ``SSLPretrainLogic`` (the same calls work in the Python
console); the run is a background process polled by a timer, so Slicer stays responsive. The panel base, live
chart and install check are shared with SSLSegmentation (the library ``SSLCommonLib``). The SSL Segmentation panel
lists a new backbone when it is next entered.

Runs inside Slicer only (Qt, CTK and MRML widgets). The widget names used here exist in
``Resources/UI/SSLPretrain.ui`` (checked by the tests).
"""

from __future__ import annotations

import qt
import slicer

from sslseg.errors import UserError

from SSLCommonLib.installLogic import InstallLogic
from SSLCommonLib.panelBase import ModulePanelBase, deviceNote, formatSeconds, torchReady
from SSLCommonLib.processRunner import ProcessFailed
from SSLCommonLib.progressChart import ProgressChart

from .pretrainLogic import LOSS_CURVES, SSLPretrainLogic

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4
    def _(text):
        return text

CPU_ARCHITECTURE, CPU_PATCH = "ResEncS-cpu", 64


class SSLPretrainWidgetImpl(ModulePanelBase):
    """Created by ``SSLPretrainWidget.setup`` (the module file) with the scripted module widget."""

    uiFile = "UI/SSLPretrain.ui"

    def __init__(self, moduleWidget):
        ModulePanelBase.__init__(self, moduleWidget, SSLPretrainLogic(), InstallLogic.forEngine("SSLPretrain"))

        self.ui.inputVolumesSelector.checkedNodesChanged.connect(self.onVolumesChecked)
        self.ui.sceneVolumesRadioButton.toggled.connect(self.onSourceChanged)
        self.ui.imageFolderRadioButton.toggled.connect(self.onSourceChanged)
        self.ui.imageFolderPathLineEdit.currentPathChanged.connect(self.onImageFolderChanged)
        self.ui.methodComboBox.currentTextChanged.connect(lambda text: self._setParameter("method", text))
        self.ui.architectureComboBox.currentTextChanged.connect(self.onArchitectureChanged)
        self.ui.deviceComboBox.currentTextChanged.connect(self.onDeviceChanged)
        self.ui.startButton.clicked.connect(self.onStartOrCancel)
        self.ui.showChartButton.clicked.connect(self.showChart)
        self.ui.copyCommandButton.clicked.connect(self.onCopyCommand)

        self.initializeParameterNode()
        self.updateDeviceNote()
        self.updateButtons()

    # -- parameter node --

    def showParameterNode(self):
        # the spin boxes and line edit are bound by name; the parameter node's observer updates the server command
        parameterNode = self.parameterNode
        self.ui.methodComboBox.setCurrentText(parameterNode.method)
        self.ui.architectureComboBox.setCurrentText(parameterNode.architecture)
        self.ui.deviceComboBox.setCurrentText(self.initialDevice())
        self.ui.imageFolderPathLineEdit.currentPath = parameterNode.imageFolder
        (self.ui.imageFolderRadioButton if parameterNode.useImageFolder else self.ui.sceneVolumesRadioButton) \
            .setChecked(True)
        selector = self.ui.inputVolumesSelector
        wasBlocked = selector.blockSignals(True)
        checked = [node for node in parameterNode.inputVolumes if node is not None]
        for index in range(selector.nodeCount()):
            node = selector.nodeFromIndex(index)
            selector.setCheckState(node, qt.Qt.Checked if any(node is c for c in checked) else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)
        self.onSourceChanged()

    def onParameterNodeModified(self, caller=None, event=None):
        self.updateServerCommand()
        self.updateButtons()

    # -- images --

    def onVolumesChecked(self):
        self._setParameter("inputVolumes", list(self.ui.inputVolumesSelector.checkedNodes()))

    def onSourceChanged(self, toggled=None):
        useFolder = self.ui.imageFolderRadioButton.checked
        self.ui.inputVolumesSelector.enabled = not useFolder
        self.ui.imageFolderPathLineEdit.enabled = useFolder
        self._setParameter("useImageFolder", useFolder)
        self.ui.imagesInfoLabel.setText(
            _("The images are read by the background process; unusable ones are skipped and listed in the log.")
            if useFolder else _("Checked volumes are copied to a temporary folder for the run (the nodes are not "
                                "changed)."))
        self.updateButtons()

    def onImageFolderChanged(self, path):
        self._setParameter("imageFolder", path)

    def _imageSource(self):
        """``(volumeNodes, imageFolder)`` as the logic takes them."""
        p = self.parameterNode
        if p.useImageFolder:
            return None, p.imageFolder or None
        return [node for node in p.inputVolumes if node is not None], None

    # -- options --

    def onArchitectureChanged(self, text):
        self._setParameter("architecture", text)

    def updateDeviceNote(self):
        self.ui.deviceNoteLabel.setText(deviceNote(self.installLogic, _(
            "No CUDA GPU visible to PyTorch: pretraining runs on the CPU and is slow. Use the small ResEncS-cpu "
            "network for a trial, and the server box below for real runs.")))
        if torchReady(self.installLogic) and self.parameterNode is not None and \
                self.parameterNode.architecture == "ResEncL":
            import torch

            if not torch.cuda.is_available():
                self.ui.architectureComboBox.setCurrentText(CPU_ARCHITECTURE)
                self.parameterNode.patchSize = CPU_PATCH

    # -- the run --

    def updateButtons(self):
        running = self.isRunning()
        self.ui.startButton.text = _("Cancel") if running else _("Start pretraining")
        hasImages = False
        if self.parameterNode is not None:
            volumes, folder = self._imageSource()
            hasImages = bool(volumes or folder)
        self.ui.startButton.enabled = running or hasImages
        for widget in (self.ui.imagesCollapsibleButton, self.ui.methodComboBox, self.ui.architectureComboBox,
                       self.ui.backboneNameLineEdit):
            widget.enabled = not running

    def onProgressEvent(self, event):
        kind = event.get("event")
        if kind == "start":
            self.ui.progressBar.setValue(0)
            skipped = event.get("skipped") or 0
            self.appendLog(_("Running on {device}: {usable} images ({skipped} skipped). {note}").format(
                device=event.get("device"), usable=event.get("usable", "?"),
                skipped=len(skipped) if isinstance(skipped, list) else skipped, note=event.get("note", "")))
        elif kind == "progress" and event.get("total"):
            self.ui.progressBar.setValue(int(100 * event["step"] / event["total"]))
            loss = event.get("loss")
            self.ui.statusLabel.setText(_("step {step}/{total}{loss}, {eta} left").format(
                step=event["step"], total=event["total"], loss=f", loss {loss:.4f}" if isinstance(loss, float) else "",
                eta=formatSeconds(event.get("eta"))))
        elif kind == "validation" and isinstance(event.get("loss"), float):
            self.appendLog(_("Validation loss at step {step}: {loss:.4f}").format(step=event.get("step"),
                                                                                 loss=event["loss"]))
        if self.chart is not None:
            self.chart.addEvent(event)

    def onStartOrCancel(self):
        if self.isRunning():
            self.job.cancel()
            return
        if not self._ensureDependencies():
            return
        p = self.parameterNode
        volumes, folder = self._imageSource()
        if self.chart is not None:
            self.chart.removeNodes()
        self.chart = ProgressChart(slicer.mrmlScene, _("Pretraining"), curves=LOSS_CURVES, yAxisTitle=_("loss"))
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)

        def onFinished(job):
            self.job = None
            self.updateButtons()
            if job.status == "succeeded":
                self.ui.progressBar.setValue(100)
                self.ui.statusLabel.setText(_("Backbone '{name}' registered: choose it in the SSL Segmentation "
                                              "module.").format(name=job.result))
            elif job.status == "cancelled":
                self.ui.statusLabel.setText(
                    _("Ended because {reason}: no backbone was registered.").format(reason=job.endReason)
                    if job.endReason else _("Cancelled: no backbone was registered."))
            else:
                self.ui.statusLabel.setText(_("Pretraining failed: no backbone was registered."))
                slicer.util.errorDisplay(_("Pretraining failed: {message}").format(message=job.errorMessage))

        try:
            self.job = self.logic.pretrain(
                method=p.method, volumeNodes=volumes, imageFolder=folder, arch=p.architecture, steps=p.steps,
                batch=p.batchSize, patch=p.patchSize, spacing=p.spacing, device=p.device,
                backboneName=p.backboneName or None, onProgress=self.onProgressEvent, onLog=self.appendLog,
                onFinished=onFinished)
        except (UserError, ProcessFailed) as error:
            slicer.util.errorDisplay(str(error))
            self.job = None
        self.updateButtons()
        if self.job is not None:
            self.ui.statusLabel.setText(_("Starting: backbone '{name}'").format(name=self.job.backboneName))
            self.showChart()

    # -- server command --

    def updateServerCommand(self):
        p = self.parameterNode
        if p is None:
            return
        try:
            text = self.logic.serverCommand(
                method=p.method, imageFolder=p.imageFolder if p.useImageFolder and p.imageFolder else None,
                arch=p.architecture, steps=p.steps, batch=p.batchSize, patch=p.patchSize, spacing=p.spacing,
                processes=p.serverProcesses, nodes=p.serverNodes, backboneName=p.backboneName or None)
        except UserError as error:
            text = _("(no command: {message})").format(message=error)
        self.ui.serverCommandTextEdit.setPlainText(text)

    def onCopyCommand(self):
        qt.QApplication.clipboard().setText(self.ui.serverCommandTextEdit.toPlainText())
        self.ui.statusLabel.setText(_("Server command copied to the clipboard."))
