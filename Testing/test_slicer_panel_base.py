"""The parts of the shared panel base (``SSLCommonLib.panelBase``) that need no Qt, on real slicer-core nodes: the
parameter node's GUI binding across enter/exit/scene close, and the torch import that must wait for the install
check. The panel itself (Qt) runs inside Slicer only."""

import ast
import os
import subprocess
import sys
import textwrap
import types

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the parameter node's GUI binding --------------------------------------------------------------------------


def _widget(parameterName=None):
    """What the binding reads of a Qt widget: its ``SlicerParameterName`` property."""
    return types.SimpleNamespace(property=lambda name: parameterName if name == "SlicerParameterName" else None)


def _slicer58Wrapper():
    """The SSLPretrain parameter node with Slicer 5.8's GUI connection: ``connectParametersToGui`` returns a tag and
    the connection lives until ``disconnectGui(tag)``; ``connectGui`` makes one too but returns None."""
    from SSLPretrainLib.parameters import SSLPretrainParameterNode

    class Slicer58ParameterNode(SSLPretrainParameterNode):
        def __init__(self, node):
            SSLPretrainParameterNode.__init__(self, node)
            self.connections = {}
            self.nextTag = 0

        def connectParametersToGui(self, mapping):
            tag, self.nextTag = self.nextTag, self.nextTag + 1
            self.connections[tag] = dict(mapping)
            return tag

        def connectGui(self, ui):
            self.connectParametersToGui({w.property("SlicerParameterName"): w for w in vars(ui).values()
                                         if w.property("SlicerParameterName")})
            return None  # Slicer 5.8

        def disconnectGui(self, tag):
            self.connections.pop(tag, None)

    return Slicer58ParameterNode


class _Logic:
    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self.ended = []

    def getParameterNode(self):
        return self.parameterNode

    def endRun(self, reason):
        self.ended.append(reason)


def _panel(logic):
    """A ModulePanelBase without its .ui file (Qt): the state its constructor sets, and counted modifications."""
    from slicer.util import VTKObservationMixin

    from SSLCommonLib.panelBase import ModulePanelBase

    class Panel(ModulePanelBase):
        def onParameterNodeModified(self, caller=None, event=None):
            self.modifiedCalls += 1

    panel = Panel.__new__(Panel)
    VTKObservationMixin.__init__(panel)
    panel.modifiedCalls = 0
    panel.logic, panel.parameterNode, panel.chart = logic, None, None
    panel._parameterNodeGuiTag, panel._guiConnectedTo = None, None
    panel.ui = types.SimpleNamespace(stepsSpinBox=_widget("steps"), methodComboBox=_widget(), logTextEdit=_widget())
    panel.moduleWidget = types.SimpleNamespace(parent=types.SimpleNamespace(isEntered=True))
    return panel


def test_widgets_are_released_whenever_a_parameter_node_was_bound(slicer_scene):
    """Slicer 5.8's connectGui returns None: keyed on that tag, the widgets were never released and each enter added
    another connection. Now one connection and one observer at a time, whatever connectGui returns."""
    wrapper = _slicer58Wrapper()
    node = wrapper(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SSLPretrain"))
    logic = _Logic(node)
    panel = _panel(logic)

    for _ in range(3):
        panel.enter()  # each enter binds the scene's parameter node again
    assert list(node.connections.values()) == [{"steps": panel.ui.stepsSpinBox}]
    assert len(panel.Observations) == 1
    panel.modifiedCalls = 0
    node.parameterNode.Modified()
    assert panel.modifiedCalls == 1

    panel.exit()
    assert node.connections == {} and panel.Observations == []
    assert logic.ended == ["the module was left"]
    panel.enter()
    assert len(node.connections) == 1

    # scene close: released at the start; a new parameter node bound at the end while the module is shown
    panel.onSceneStartClose(None, None)
    assert node.connections == {} and panel.Observations == [] and panel.parameterNode is None
    other = wrapper(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SSLPretrain"))
    logic.parameterNode = other
    panel.onSceneEndClose(None, None)
    assert node.connections == {} and len(other.connections) == 1 and panel.parameterNode is other

    panel.cleanup()
    assert other.connections == {} and panel.Observations == []
    assert logic.ended == ["the module was left", "the module was closed"]


def test_connect_parameter_widgets_binds_the_widgets_that_name_a_parameter(slicer_scene):
    from SSLCommonLib.panelBase import connectParameterWidgets

    node = _slicer58Wrapper()(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SSLPretrain"))
    ui = types.SimpleNamespace(a=_widget("steps"), b=_widget("batchSize"), c=_widget(), d=object())
    tag = connectParameterWidgets(node, ui)
    assert tag is not None and node.connections[tag] == {"steps": ui.a, "batchSize": ui.b}


# --- torch waits for the install check -------------------------------------------------------------------------

_TORCH_PROBE = textwrap.dedent("""
    import json, sys
    sys.path[:0] = [{site!r}, {repo!r}, {common!r}, {segmentation!r}]
    from SSLCommonLib.installLogic import InstallLogic
    from SSLCommonLib.panelBase import deviceNote, torchReady
    from SSLSegmentationLib.modelStore import ModelStore
    from sslseg.backbones import list_backbones
    installLogic = InstallLogic.forEngine("SSLSegmentation")
    # what the panel does before any run: the install check, the device note, the backbone and model lists
    ready = torchReady(installLogic)
    note = deviceNote(installLogic, "CPU")
    list_backbones()
    ModelStore({models!r}).listModels()
    print(json.dumps({{"ready": ready, "note": note, "torch": "torch" in sys.modules,
                      "old": installLogic.torchTooOld()}}))
""")


def _probe(tmp_path, torchVersion):
    import json

    site = tmp_path / "site"
    site.mkdir()
    if torchVersion:  # an installed torch as Slicer has it, known from its package metadata (pip's .dist-info)
        info = site / f"torch-{torchVersion}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {torchVersion}\n")
    code = _TORCH_PROBE.format(site=str(site), repo=REPO_ROOT, common=os.path.join(REPO_ROOT, "SSLCommon"),
                               segmentation=os.path.join(REPO_ROOT, "SSLSegmentation"),
                               models=str(tmp_path / "models"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SSLSEG_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_too_old_torch_is_not_imported_before_the_upgrade_offer(tmp_path):
    """Imported, an old torch stays in memory (and its files stay locked on Windows) until Slicer restarts, so the
    upgrade the install check offers could not take effect: the panel tells the device only once torch is fine."""
    probe = _probe(tmp_path, "2.1.0")
    assert probe == {"ready": False, "note": "torch is installed at first use (through the PyTorch extension).",
                     "torch": False, "old": "2.1.0"}


def test_an_accepted_torch_tells_the_device(tmp_path):
    import torch

    probe = _probe(tmp_path, None)  # this venv's own torch
    assert probe["ready"] is True and probe["torch"] is True and probe["old"] is None
    expected = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"
    assert probe["note"] == expected


def _calls(function):
    return {node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            for node in ast.walk(function) if isinstance(node, ast.Call)}


@pytest.mark.parametrize("module, path", [
    ("SSLSegmentation", os.path.join("SSLSegmentation", "SSLSegmentationLib", "widget.py")),
    ("SSLPretrain", os.path.join("SSLPretrain", "SSLPretrainLib", "widget.py"))])
def test_panels_reach_torch_only_through_the_install_check(module, path):
    """The panels' code (Qt, not runnable here) imports torch only under ``torchReady`` (or through ``deviceNote``),
    and ``presetNote`` (which tells the device with torch) only under ``torchReady``."""
    tree = ast.parse(open(os.path.join(REPO_ROOT, path), encoding="utf-8").read())
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "torchReady" in _calls(node.test):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    for node in ast.walk(tree):
        imports = isinstance(node, ast.Import) and any(alias.name == "torch" for alias in node.names)
        callsPresetNote = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "presetNote"
        if imports or callsPresetNote:
            assert id(node) in guarded, f"{path}:{node.lineno} reaches torch outside 'if torchReady(...)'"
