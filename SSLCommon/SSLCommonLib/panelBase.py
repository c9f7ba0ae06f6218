"""What the SSLSegmentation and SSLPretrain panels share: loading the .ui file, the parameter node's life cycle
(scene close, enter/exit), the end of a run when the module is left or closed, the dependency check before a run,
the device note, the log box and the live chart.

The panel runs inside Slicer only (Qt, CTK and MRML widgets); the parameter node binding and the device note need
no Qt and are tested on slicer-core. Every widget used here (``logTextEdit``, ``deviceNoteLabel``) exists in both
modules' .ui files (checked by the tests).
"""

from __future__ import annotations

import slicer
import vtk
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


# Slicer's parameterNodeWrapper: the widget property that names the parameter a widget shows
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


def connectParameterWidgets(parameterNode, ui):
    """Bind the widgets of ``ui`` (``slicer.util.childWidgetVariables``) that name a parameter to ``parameterNode``,
    as ``connectGui(ui)`` does, and return the tag that ``disconnectGui`` takes. ``connectGui`` itself returns None in
    Slicer 5.8 (it drops the tag of ``connectParametersToGui``), and ``disconnectGui(None)`` disconnects nothing."""
    widgets = {}
    for widget in vars(ui).values():
        name = widget.property(PARAMETER_NAME_PROPERTY) if hasattr(widget, "property") else None
        if name:
            widgets[str(name)] = widget
    return parameterNode.connectParametersToGui(widgets)


def torchReady(installLogic):
    """True when torch may be imported: installed at a version the engine accepts. Importing an older torch before
    the upgrade offer (``installLogic.ensure``) would pin it in memory (and lock its files on Windows) until Slicer
    restarts."""
    return installLogic.torchMissing() is False


def deviceNote(installLogic, cpuText):
    """The panel's line about the device: the GPU's name, ``cpuText`` without a CUDA GPU, or that torch comes at first
    use. torch is imported only when :func:`torchReady`."""
    if not torchReady(installLogic):
        return _("torch is installed at first use (through the PyTorch extension).")
    import torch

    return _("GPU: {name}").format(name=torch.cuda.get_device_name(0)) if torch.cuda.is_available() else cpuText


class ModulePanelBase(VTKObservationMixin):
    """The panel of a module: subclasses connect their widgets in ``__init__`` after calling this one, and define
    ``showParameterNode`` (the widgets ``connectGui`` does not bind), ``updateButtons`` and ``updateDeviceNote``.

    A run in progress ends (process tree killed, nothing added to the scene) when the module is left, when the
    panel is closed (module reload, application quit) and when the scene closes (the logic does that one)."""

    uiFile = None  # path below the module's Resources folder, e.g. "UI/SSLSegmentation.ui"

    def __init__(self, moduleWidget, logic, installLogic):
        VTKObservationMixin.__init__(self)
        self.moduleWidget = moduleWidget
        self.logic = logic
        self.installLogic = installLogic
        self.parameterNode = None
        self._parameterNodeGuiTag = None
        self._guiConnectedTo = None  # the parameter node the widgets are bound to (None: not bound)
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
        self.logic.endRun("the module was closed")  # a closing Slicer must not leave a training process behind
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.logic.endRun("the module was left")
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.chart = None  # its nodes go with the scene

    def onSceneEndClose(self, caller, event):
        if self.moduleWidget.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, parameterNode):
        """Show ``parameterNode`` (None: none). The widgets and the observer of the node shown before are released
        first whenever one was bound, whatever ``connectGui`` returned, as Slicer's scripted module template does."""
        self._disconnectParameterNode()
        self.parameterNode = parameterNode
        if parameterNode is None:
            return
        self._parameterNodeGuiTag = connectParameterWidgets(parameterNode, self.ui)
        self._guiConnectedTo = parameterNode
        self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.showParameterNode()
        self.onParameterNodeModified()

    def showParameterNode(self):
        """Subclasses: show ``self.parameterNode`` in the widgets that are not bound to it by name."""

    def _disconnectParameterNode(self):
        bound = self._guiConnectedTo
        if bound is None:
            return
        self._guiConnectedTo = None
        bound.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None
        self.removeObserver(bound.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

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
