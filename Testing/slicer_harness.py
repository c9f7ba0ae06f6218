"""A headless Slicer core for tests: real MRML scene and module logics from the PyPI package ``slicer-core``.

``slicer-core`` ships Slicer's Qt-free libraries (MRML, the volumes/segmentations/colors/subject-hierarchy/transforms
logics, storage nodes) and ``slicer.util``, but none of the application object that wires them together. This module
does that wiring the way Slicer's application does at start-up, so that ``slicer.util`` and our modules' real logic
code run under pytest on real nodes (nothing of MRML is mocked):

- ``slicer.mrmlScene``: a ``vtkMRMLScene``;
- ``slicer.modules.<name>.logic()`` for ``volumes``, ``segmentations``, ``colors``, ``subjecthierarchy``,
  ``transforms``, ``terminologies``, ``tables``, ``sequences`` (all with ``SetMRMLScene`` and
  ``SetMRMLApplicationLogic`` on one ``vtkSlicerApplicationLogic``, registered with ``SetModuleLogic``);
- ``slicer.app``: a small headless application object, because ``slicer.util.loadVolume``, ``loadSegmentation``,
  ``loadNodeFromFile`` and ``saveNode`` go through ``slicer.app.coreIOManager()``. It offers only
  ``coreIOManager()`` (loads and saves with the same real logics and storage nodes Slicer's readers/writers use),
  ``testingEnabled()`` (True: ``slicer.util.errorDisplay`` and friends log instead of opening a dialog),
  ``processEvents()`` (a no-op: there is no Qt event loop), ``applicationLogic()``, ``mrmlScene()``,
  ``applicationName`` and ``temporaryPath``. There is no ``layoutManager()``, no main window and no Qt: widget code
  cannot run here.
- new data nodes get a subject-hierarchy item under the scene, and removed nodes lose theirs, as Slicer's (Qt)
  subject hierarchy plugin logic does.

Usage (pytest: use the ``slicer_scene`` fixture of ``Testing/conftest.py`` instead)::

    import slicer_harness
    harness = slicer_harness.start()            # idempotent; raises ImportError without slicer-core
    import slicer
    volume = slicer.util.loadVolume("case.nii.gz")
    slicer.modules.segmentations.logic()        # vtkSlicerSegmentationsModuleLogic
    harness.clearScene()                        # like File > Close Scene
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import types

_HARNESS = None


class _Module:
    """What ``slicer.modules.<name>`` offers here: the module's logic (and its name)."""

    def __init__(self, name, logic):
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


class HeadlessIOManager:
    """The subset of ``qSlicerCoreIOManager`` that ``slicer.util`` calls (``fileType``, ``loadNodes``,
    ``fileWriterFileType``, ``saveNodes``), implemented with the module logics and MRML storage nodes that Slicer's
    own readers and writers use. File types and property names are Slicer's (``VolumeFile`` with ``labelmap``,
    ``name``, ``center``, ``singleFile``, ``discardOrientation``, ``autoWindowLevel``; ``SegmentationFile`` with
    ``name``, ``autoOpacities``; ``TransformFile``; ``TableFile``)."""

    def __init__(self, harness):
        self._harness = harness

    # reading ---------------------------------------------------------------------------------------------------
    def fileType(self, fileName):
        name = os.fspath(fileName).lower()
        if name.endswith((".seg.nrrd", ".seg.nhdr", ".seg.vtm")):
            return "SegmentationFile"
        if name.endswith((".h5", ".tfm", ".txt")) and not name.endswith(".seg.txt"):
            return "TransformFile"
        if name.endswith((".csv", ".tsv")):
            return "TableFile"
        if name.endswith((".mrml", ".mrb")):
            return "SceneFile"
        return "VolumeFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        import slicer
        import vtk

        fileName = os.fspath(properties["fileName"])
        if not os.path.exists(fileName):
            if userMessages is not None:
                userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, f"File not found: {fileName}")
            return False
        nodes = []
        if fileType == "VolumeFile":
            nodes = [self._loadVolume(fileName, properties, userMessages)]
        elif fileType == "SegmentationFile":
            name = properties.get("name") or _baseName(fileName)
            node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
                fileName, bool(properties.get("autoOpacities", True)), name, None, userMessages)
            nodes = [node]
        elif fileType == "TransformFile":
            nodes = [slicer.modules.transforms.logic().AddTransform(fileName, self._harness.scene)]
        elif fileType == "TableFile":
            nodes = [slicer.modules.tables.logic().AddTable(fileName, properties.get("name") or _baseName(fileName))]
        else:
            raise NotImplementedError(f"the headless harness cannot load file type {fileType!r}")
        nodes = [node for node in nodes if node is not None]
        if loadedNodes is not None:
            for node in nodes:
                loadedNodes.AddItem(node)
        return bool(nodes)

    def _loadVolume(self, fileName, properties, userMessages):
        import slicer
        import vtk

        logic = slicer.modules.volumes.logic()
        options = 0
        # bit flags of vtkSlicerVolumesLogic::AddArchetypeVolume
        for key, bit in (("labelmap", 1), ("center", 2), ("singleFile", 4), ("autoWindowLevel", 8),
                         ("discardOrientation", 16)):
            default = key in ("singleFile", "autoWindowLevel")
            if properties.get(key, default):
                options |= bit
        name = properties.get("name") or _baseName(fileName)
        node = logic.AddArchetypeVolume(fileName, name, options)
        if node is None and userMessages is not None:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent, f"Could not read volume from {fileName}")
        colorNodeID = properties.get("colorNodeID")
        if node is not None and colorNodeID and node.GetDisplayNode():
            node.GetDisplayNode().SetAndObserveColorNodeID(colorNodeID)
        return node

    # writing ---------------------------------------------------------------------------------------------------
    def fileWriterFileType(self, node):
        className = node.GetClassName()
        if "Segmentation" in className:
            return "SegmentationFile"
        if "Transform" in className:
            return "TransformFile"
        if "Table" in className:
            return "TableFile"
        if "Volume" in className:
            return "VolumeFile"
        return "NodeFile"

    def saveNodes(self, fileType, properties, userMessages=None):
        """Like Slicer's node writer: the node's storage node (a default one is added when missing) writes the
        file; ``useCompression`` as in Slicer."""
        import vtk

        scene = self._harness.scene
        node = scene.GetNodeByID(properties["nodeID"])
        if node is None or not hasattr(node, "GetStorageNode"):
            return False
        storageNode = node.GetStorageNode()
        if storageNode is None:
            if not node.AddDefaultStorageNode():
                return False
            storageNode = node.GetStorageNode()
        storageNode.SetFileName(os.fspath(properties["fileName"]))
        if "useCompression" in properties:
            storageNode.SetUseCompression(bool(properties["useCompression"]))
        success = bool(storageNode.WriteData(node))
        if not success and userMessages is not None:
            userMessages.AddMessage(vtk.vtkCommand.ErrorEvent,
                                    storageNode.GetUserMessages().GetAllMessagesAsString())
        return success


class HeadlessApplication:
    """``slicer.app`` in the harness: only what Qt-free code paths of ``slicer.util`` need (see module docstring)."""

    applicationName = "SlicerCore (headless harness)"

    def __init__(self, harness):
        self._harness = harness
        self._ioManager = HeadlessIOManager(harness)
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-harness-")
        # like Slicer's own temporary folder, it goes with the process (work folders left in it are test failures
        # reported elsewhere, not something to keep)
        atexit.register(shutil.rmtree, self.temporaryPath, True)

    def coreIOManager(self):
        return self._ioManager

    def applicationLogic(self):
        return self._harness.applicationLogic

    def mrmlScene(self):
        return self._harness.scene

    def testingEnabled(self):
        return True

    def processEvents(self, *args):
        # no Qt event loop here; callers that poll a process in a loop still progress
        return None

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=True, testingEnabled=True)


class SlicerHarness:
    """One scene with the module logics, wired like Slicer's application does it."""

    # slicer.modules name -> (logic class name, module name for vtkSlicerApplicationLogic.SetModuleLogic).
    # Order matters: colors before volumes (labelmap display), terminologies before segmentations.
    LOGICS = (
        ("colors", "vtkSlicerColorLogic", "Colors"),
        ("subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic", "SubjectHierarchy"),
        ("terminologies", "vtkSlicerTerminologiesModuleLogic", "Terminologies"),
        ("transforms", "vtkSlicerTransformLogic", "Transforms"),
        ("volumes", "vtkSlicerVolumesLogic", "Volumes"),
        ("segmentations", "vtkSlicerSegmentationsModuleLogic", "Segmentations"),
        ("tables", "vtkSlicerTablesLogic", "Tables"),
        ("sequences", "vtkSlicerSequencesLogic", "Sequences"),
    )

    def __init__(self):
        import slicer
        import vtk

        # slicer-core ships no share folder (default colour files, terminology JSON): the colors and terminologies
        # logics log an error for each missing file at set-up. Those are expected here, so they are muted during
        # set-up only; later errors are printed as usual.
        verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
        try:
            self._build(slicer)
        finally:
            vtk.vtkLogger.SetStderrVerbosity(verbosity)

    def _build(self, slicer):
        self.scene = slicer.vtkMRMLScene()
        self.applicationLogic = slicer.vtkSlicerApplicationLogic()
        self.applicationLogic.SetMRMLScene(self.scene)
        self.applicationLogic.SetTemporaryPath(tempfile.gettempdir())
        self.logics = {}
        for name, className, moduleName in self.LOGICS:
            logic = getattr(slicer, className)()
            logic.SetMRMLApplicationLogic(self.applicationLogic)
            logic.SetMRMLScene(self.scene)
            self.applicationLogic.SetModuleLogic(moduleName, logic)
            if name == "colors":
                self.applicationLogic.SetColorLogic(logic)
            self.logics[name] = logic
        self._observeNodeAdded(slicer)
        self.app = HeadlessApplication(self)
        self.modules = types.SimpleNamespace(**{name: _Module(name, logic) for name, logic in self.logics.items()})
        self._baseline = self._nodeIDs()

    def _observeNodeAdded(self, slicer):
        """Give new data nodes a subject-hierarchy item under the scene and remove the item of a removed node, as
        Slicer's subject hierarchy plugin logic does (that part of Slicer is Qt code, absent from slicer-core)."""
        import vtk

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def onNodeAdded(caller, event, node):
            if self.scene.IsImporting() or node is None or node.GetHideFromEditors():
                return
            if not (node.IsA("vtkMRMLDisplayableNode") or node.IsA("vtkMRMLTransformNode")
                    or node.IsA("vtkMRMLTableNode")):
                return
            shNode = self.scene.GetSubjectHierarchyNode()
            if shNode is not None and not shNode.GetItemByDataNode(node):
                shNode.CreateItem(shNode.GetSceneItemID(), node)

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def onNodeAboutToBeRemoved(caller, event, node):
            shNode = self.scene.GetSubjectHierarchyNode() if node is not None else None
            if shNode is None or node is shNode:
                return
            item = shNode.GetItemByDataNode(node)
            if item:
                shNode.RemoveItem(item, False, False)  # keep the node removal to the scene; children move up

        self._callbacks = (onNodeAdded, onNodeAboutToBeRemoved)  # keep the callbacks alive
        self.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, onNodeAdded)
        self.scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, onNodeAboutToBeRemoved)

    def install(self):
        """Expose the scene, modules and app on the ``slicer`` package, like the application does."""
        import slicer

        slicer.mrmlScene = self.scene
        slicer.modules = self.modules
        slicer.app = self.app
        return self

    def registerModuleLogic(self, name, logic):
        """Expose another logic (e.g. one of our scripted modules' logic) as ``slicer.modules.<name>.logic()``."""
        setattr(self.modules, name.lower(), _Module(name, logic))

    def _nodeIDs(self):
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    def clearScene(self):
        """Close the scene like File > Close Scene: user nodes go, singletons and default colour tables come
        back (the logics observe the close events)."""
        self.scene.Clear(0)

    def userNodes(self):
        """Nodes added since start (or since the last clear), e.g. to check that a call left nothing behind. The
        subject hierarchy node is not one: the scene remakes it on demand, under a new ID after a clear."""
        nodes = [self.scene.GetNodeByID(i) for i in sorted(self._nodeIDs() - self._baseline)]
        return [node for node in nodes if not node.IsA("vtkMRMLSubjectHierarchyNode")]


def _baseName(fileName):
    name = os.path.basename(os.fspath(fileName))
    for suffix in (".seg.nrrd", ".seg.nhdr", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".tfm",
                   ".csv", ".tsv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def available():
    """(True, "") when slicer-core can be imported, else (False, reason)."""
    try:
        import slicer  # noqa: F401

        slicer.vtkMRMLScene  # the unrelated PyPI package "slicer" has no MRML
        slicer.vtkSlicerSegmentationsModuleLogic
    except (ImportError, AttributeError) as error:
        return False, f"needs the PyPI package slicer-core (pip install -e '.[test]'): {error}"
    return True, ""


def start():
    """Build the harness once per process and install it into ``slicer``; later calls return the same one."""
    global _HARNESS
    if _HARNESS is None:
        ok, reason = available()
        if not ok:
            raise ImportError(reason)
        _HARNESS = SlicerHarness().install()
    return _HARNESS
