"""What the SSLSegmentation and SSLPretrain panels share: loading the .ui file, the parameter node's life cycle
(scene close, enter/exit), the dependency check before a run, the log box and the live chart.

Runs inside Slicer only (Qt, CTK and MRML widgets). Every widget used here (``logTextEdit``, ``deviceNoteLabel``)
exists in both modules' .ui files (checked by the tests).
"""

from __future__ import annotations

import slicer
from slicer.util import VTKObservationMixin

from .installLogic import InstallError
from .settings import defaultDevice, writeSetting

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4
    def _(text):
        return text


def formatSeconds(seconds):
    """``m:ss`` or ``h:mm:ss``; ``?`` when unknown (an ETA before the first steps)."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class ModulePanelBase(VTKObservationMixin):
    """The panel of a module: subclasses connect their widgets in ``__init__`` after calling this one, and define
    ``setParameterNode``, ``updateButtons`` and ``updateDeviceNote``."""

    uiFile = None  # path below the module's Resources folder, e.g. "UI/SSLSegmentation.ui"

    def __init__(self, moduleWidget, logic, installLogic):
        VTKObservationMixin.__init__(self)
        self.moduleWidget = moduleWidget
        self.logic = logic
        self.installLogic = installLogic
        self.parameterNode = None
        self._parameterNodeGuiTag = None
        self.chart = None  # ProgressChart of the current or last run
        self.job = None  # the running background job, if any

        uiWidget = slicer.util.loadUI(moduleWidget.resourcePath(self.uiFile))
        moduleWidget.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

    def isRunning(self):
        return self.job is not None and self.job.status == "running"

    # -- parameter node --

    def cleanup(self):
        if self.isRunning():
            self.job.cancel()  # a closing Slicer must not leave a training process behind
        self.removeObservers()
        self._disconnectParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self._disconnectParameterNode()
        self.chart = None  # its nodes go with the scene

    def onSceneEndClose(self, caller, event):
        if self.moduleWidget.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def _disconnectParameterNode(self):
        if self.parameterNode is not None and self._parameterNodeGuiTag is not None:
            self.parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObservers(self.onParameterNodeModified)

    def onParameterNodeModified(self, caller=None, event=None):
        """Subclasses that observe the parameter node update the derived widgets here."""

    def _setParameter(self, name, value):
        if self.parameterNode is not None and getattr(self.parameterNode, name) != value:
            setattr(self.parameterNode, name, value)

    def initialDevice(self):
        """The scene's choice when it made one, else the Device setting (the last choice made in either panel)."""
        device = self.parameterNode.device if self.parameterNode is not None else "auto"
        return device if device != "auto" else defaultDevice()

    def onDeviceChanged(self, text):
        self._setParameter("device", text)
        writeSetting("Device", text)  # remembered for the next scene and session

    # -- runs --

    def _ensureDependencies(self):
        """True when the engine's packages are installed (asks once and installs what is missing)."""
        try:
            if not self.installLogic.ensure():
                return False
        except InstallError as error:
            slicer.util.errorDisplay(str(error), windowTitle=_("Python packages"))
            return False
        self.updateDeviceNote()
        return True

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(text)

    def showChart(self):
        if self.chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(self.chart.chartNode)
