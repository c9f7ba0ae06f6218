"""The SSLPretrain module without Slicer's GUI: its logic on real Slicer-core nodes through the REAL background process
(``python -m sslseg pretrain`` on CPU with the tiny ResEncT-test network and real hippocampus MRI), and its panel
(.ui file, the widget code's wiring, a PySide6 rendering).

Budget: two short runs (about 10 s each) and one cancelled run; the file takes about half a minute on 2 cores. The
backbone cache is a per-test SSLSEG_HOME, so ~/.sslseg is never touched.
"""

import os
import re
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from process_tree import descendants, survivors
from sslseg.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO_ROOT, "SSLPretrain")
UI_FILE = os.path.join(MODULE, "Resources", "UI", "SSLPretrain.ui")
# the panel code, with the base class it shares with the SSLSegmentation panel
CODE_FILES = [os.path.join(MODULE, "SSLPretrain.py"), os.path.join(MODULE, "SSLPretrainLib", "widget.py"),
              os.path.join(REPO_ROOT, "SSLCommon", "SSLCommonLib", "panelBase.py")]
CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_011", "hippocampus_014"]
TINY = dict(arch="ResEncT-test", steps=8, batch=2, patch=16, device="cpu")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated backbone cache, and one thread per child process (the runs inherit this environment): on a busy
    2-core machine two OpenMP threads per tiny run stall each other."""
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return tmp_path / "home"


@pytest.fixture
def logic(slicer_harness, home):
    """The module logic as the console reaches it: ``slicer.modules.sslpretrain.logic()`` (inside Slicer
    ``slicer.util.getModuleLogic("SSLPretrain")`` returns the widget's instance of the same class)."""
    import slicer

    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic

    slicer_harness.registerModuleLogic("SSLPretrain", SSLPretrainLogic())
    moduleLogic = slicer.modules.sslpretrain.logic()
    yield moduleLogic
    # a failed assertion must not leave a training process behind
    job = moduleLogic.currentJob
    if job is not None and job.status == "running":
        job.cancel()
        while job.poll():
            time.sleep(0.05)


def _loadVolumes(hippocampus_dir, cases=CASES):
    import slicer

    return [slicer.util.loadVolume(os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz")) for case in cases]


def _volumeState(volumes):
    """Voxels, geometry, name and modification time of each node: what 'the input is unchanged' means."""
    import slicer

    state = []
    for node in volumes:
        matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
        node.GetIJKToRASMatrix(matrix)
        state.append((node.GetName(), np.array(slicer.util.arrayFromVolume(node), copy=True),
                      slicer.util.arrayFromVTKMatrix(matrix).copy(), node.GetMTime(),
                      node.GetImageData().GetMTime(), node.GetParentTransformNode()))
    return state


def _assertSameState(before, after):
    assert len(before) == len(after)
    for (name, array, matrix, mtime, imageMTime, transform), now in zip(before, after):
        assert now[0] == name
        assert np.array_equal(now[1], array) and now[1].dtype == array.dtype
        assert np.array_equal(now[2], matrix)
        assert (now[3], now[4]) == (mtime, imageMTime), f"{name} was modified"
        assert now[5] is transform


def _workFolders():
    import slicer

    return [name for name in os.listdir(slicer.app.temporaryPath) if name.startswith("SSLPretrain-")]


def _imported(logic):
    return [entry["name"] for entry in logic.listBackbones() if entry["source"] == "imported"]


# --- the logic through the real background process ---------------------------------------------------------------


def test_pretraining_from_scene_volumes_registers_a_backbone(slicer_scene, hippocampus_dir, logic):
    import sslseg
    from SSLCommonLib.progressChart import ProgressChart
    from SSLPretrainLib.pretrainLogic import LOSS_CURVES

    volumes = _loadVolumes(hippocampus_dir)
    before = _volumeState(volumes)
    nodeCount = slicer_scene.GetNumberOfNodes()
    assert "hippo-s3d" not in [entry["name"] for entry in logic.listBackbones()]

    events = []
    name = logic.pretrain("s3d", volumeNodes=volumes, backboneName="hippo-s3d", waitForCompletion=True,
                          onProgress=events.append, **TINY)
    assert name == "hippo-s3d"
    # in the list SSLSegmentation shows (sslseg.backbones.list_backbones), with the run's plan
    (entry,) = [entry for entry in sslseg.backbones.list_backbones() if entry["name"] == name]
    assert entry["cached"] and entry["source"] == "imported" and entry["method"] == "S3D"
    assert entry["architecture"] == "ResEncT-test" and entry["modality"] == "MR"
    assert entry["input"]["patch_size"] == [16, 16, 16] and entry["input"]["spacing"] == [1.0, 1.0, 1.0]
    assert os.path.commonpath([entry["path"], str(os.environ["SSLSEG_HOME"])]) == os.environ["SSLSEG_HOME"]
    # ... and it loads as a backbone with every encoder tensor
    _, report = sslseg.load_backbone(name, num_classes=3)
    for part in ("stem", "encoder"):
        counts = report.to_dict()["parts"][part]
        assert counts["total"] > 0 and counts["loaded"] == counts["total"], report.summary()

    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and events[-1]["registered"] == name
    assert events[0]["usable"] == len(volumes) and events[0]["device"] == "cpu"
    steps = [event["step"] for event in events if event["event"] == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == TINY["steps"]
    # the panel's live chart (real MRML plot/table nodes) takes these events: both curves get points
    chart = ProgressChart(slicer_scene, "Pretraining", curves=LOSS_CURVES)
    for event in events:
        chart.addEvent(event)
    assert [x for x, _ in chart.values("loss")] == steps
    assert [x for x, _ in chart.values("validation")] == [0, TINY["steps"]]
    chart.removeNodes()

    # the input nodes are untouched, nothing was added to the scene, the work folder is gone
    _assertSameState(before, _volumeState(volumes))
    assert slicer_scene.GetNumberOfNodes() == nodeCount
    assert not _workFolders()

    # the same name again is refused at once (no process is started)
    with pytest.raises(UserError, match="already exists"):
        logic.pretrain("mae", volumeNodes=volumes, backboneName=name, **TINY)
    assert logic.currentJob.status == "succeeded"


def test_cancel_kills_the_run_and_registers_nothing(slicer_scene, hippocampus_dir, logic, tmp_path):
    """A folder source (here a list file of three images) and Cancel mid-run: the process tree dies, no backbone,
    no partial folder in the cache, no work folder."""
    listing = tmp_path / "images.txt"
    listing.write_text("".join(os.path.join(hippocampus_dir, "imagesTr", f"{c}.nii.gz") + "\n" for c in CASES[:3]))
    finished = []
    job = logic.pretrain("volf", imageFolder=str(listing), backboneName="never-finished", onFinished=finished.append,
                         extraArgs=["--report-every", "1"], **{**TINY, "steps": 100000, "patch": 32})
    assert job.status == "running" and os.path.isdir(job.workFolder) and job.backboneName == "never-finished"
    deadline = time.monotonic() + 120
    while not any(e.get("event") == "progress" and e.get("step", 0) >= 2 for e in job.events):
        assert job.poll(), f"the run ended early: {job.runner.errorMessage}"
        assert time.monotonic() < deadline, "no training progress within 120 s"
        time.sleep(0.05)
    with pytest.raises(UserError, match="still running"):
        logic.pretrain("s3d", imageFolder=str(listing), backboneName="second", **TINY)
    pids = [job.runner.pid] + descendants(job.runner.pid)

    logic.cancel()
    while job.poll():
        time.sleep(0.05)
    assert job.status == "cancelled" and finished == [job]
    assert not survivors(pids), "processes of the cancelled run survived"
    assert _imported(logic) == []
    backbones = os.path.join(os.environ["SSLSEG_HOME"], "backbones")
    assert not os.path.exists(os.path.join(backbones, "never-finished"))
    assert not os.path.exists(job.workFolder) and not _workFolders()
    with pytest.raises(Exception, match="cancelled"):
        job.waitForCompletion()


def test_cancel_after_registration_removes_the_backbone(slicer_scene, logic, tmp_path):
    """The last instant: the engine registered the backbone, then Cancel arrived before it ended. The cleanup
    removes a backbone that came from this run's work folder, and never another one of the same name."""
    from sslseg.backbones import cache
    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic

    work = tmp_path / "SSLPretrain-work"
    work.mkdir()
    ours = SSLPretrainLogic(temporaryFolder=lambda prefix: str(work))
    listing = tmp_path / "list.txt"
    listing.write_text("/nonexistent/image.nii.gz\n")
    job = ours.pretrain("s3d", imageFolder=str(listing), backboneName="late", **TINY)
    # what a registration from this run leaves in the cache
    cache.write_meta("late", {"name": "late", "checkpoint": "checkpoint_final.pth",
                              "origin": str(work / "run" / "checkpoint_final.pth")})
    (tmp_path / "home" / "backbones" / "late" / "checkpoint_final.pth").write_bytes(b"weights")
    assert cache.read_meta("late")
    job.cancel()
    while job.poll():
        time.sleep(0.05)
    # (the engine may have refused the taken name first: failed or cancelled, the cleanup is the same)
    assert job.status in ("cancelled", "failed") and not os.path.exists(cache.entry_dir("late"))

    # another backbone of that name (not from the run) stays
    job = ours.pretrain("s3d", imageFolder=str(listing), backboneName="other", **TINY)
    cache.write_meta("other", {"name": "other", "checkpoint": "c.pth", "origin": "/elsewhere/c.pth"})
    (tmp_path / "home" / "backbones" / "other" / "c.pth").write_bytes(b"weights")
    job.cancel()
    while job.poll():
        time.sleep(0.05)
    assert cache.read_meta("other")


def test_failed_run_registers_nothing(slicer_scene, logic, tmp_path):
    """The engine refuses the images after the run started (every image is unusable): its message comes back,
    nothing is registered, the work folder is removed, the input node is unchanged."""
    import slicer

    from SSLCommonLib.processRunner import ProcessFailed

    tiny = slicer.util.addVolumeFromArray(np.ones((3, 3, 3), np.float32), name="too small")
    before = _volumeState([tiny])
    with pytest.raises(ProcessFailed, match="no usable images"):
        logic.pretrain("s3d", volumeNodes=[tiny], backboneName="from-nothing", waitForCompletion=True, **TINY)
    assert logic.currentJob.status == "failed"
    assert _imported(logic) == [] and not _workFolders()
    _assertSameState(before, _volumeState([tiny]))


def test_bad_input_is_refused_before_any_process_starts(slicer_scene, hippocampus_dir, logic, tmp_path, home):
    from sslseg.backbones import cache

    # a backbone that already exists in the cache (what a registration leaves: its checkpoint, backbone.json last)
    os.makedirs(cache.entry_dir("taken"))
    (home / "backbones" / "taken" / "checkpoint_final.pth").write_bytes(b"weights")
    cache.write_meta("taken", {"name": "taken", "checkpoint": "checkpoint_final.pth", "origin": "/elsewhere"})
    (volume,) = _loadVolumes(hippocampus_dir, CASES[:1])
    labelmap = slicer_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    before = _volumeState([volume])
    cases = [
        (dict(volumeNodes=[volume], backboneName="taken"), "already exists"),
        (dict(volumeNodes=[volume], backboneName="ResEncL-OpenMind-S3D"), "published backbone"),
        (dict(volumeNodes=[volume], backboneName="has spaces"), "invalid backbone name"),
        (dict(volumeNodes=[]), "no images"),
        (dict(), "no images"),
        (dict(volumeNodes=[volume], imageFolder=str(tmp_path)), "not both"),
        (dict(imageFolder=str(tmp_path / "missing")), "does not exist"),
        (dict(volumeNodes=[labelmap]), "not a scalar"),
        (dict(volumeNodes=[volume], method="simclr"), "--method must be one of s3d, mae, volf"),
        (dict(volumeNodes=[volume], arch="ResNet50"), "unknown architecture"),
        (dict(volumeNodes=[volume], patch=18), r"multiple of the network's total stride \[4, 4, 4\] per axis for "
                                                "ResEncT-test; e.g. --patch 16 16 16"),
        (dict(volumeNodes=[volume], patch=[16, 16]), r"takes 1 value \(isotropic\) or 3"),
        (dict(volumeNodes=[volume], device="tpu"), "unknown device"),
        (dict(volumeNodes=[volume], steps=0), "at least 1"),
    ]
    for overrides, message in cases:
        options = {"method": "s3d", **TINY, **overrides}
        with pytest.raises(UserError, match=message):
            logic.pretrain(**options)
    assert logic.currentJob is None, "a process was started"
    assert not _workFolders()
    assert _imported(logic) == ["taken"]
    _assertSameState(before, _volumeState([volume]))


def test_server_command(logic):
    text = logic.serverCommand(method="volf", imageFolder="/data/unlabelled scans", arch="ResEncL", steps=250000,
                               batch=4, patch=128, spacing=1.5, processes=4, backboneName="site-volf")
    assert text.startswith("torchrun --standalone --nproc_per_node 4 -m sslseg pretrain ")
    for option in ("--method volf", "--images '/data/unlabelled scans'", "--out runs/site-volf", "--arch ResEncL",
                   "--steps 250000", "--batch 4", "--patch 128", "--spacing 1.5"):
        assert option in text, option
    several = logic.serverCommand(method="s3d", processes=8, nodes=2)
    assert "--nnodes 2" in several and "--nproc_per_node 8" in several
    # scene volumes are not on the server: a placeholder; one process: no torchrun
    single = logic.serverCommand(method="s3d", arch="ResEncS-cpu", patch=64, processes=1)
    assert single.startswith("sslseg pretrain ") and "/path/to/unlabelled/images" in single
    # the command runs: the engine's own parser accepts it (without torchrun's part)
    import argparse
    import shlex

    from sslseg.commands import pretrain as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    words = shlex.split(text)
    parsed = parser.parse_args(words[words.index("-m") + 2:])  # from "pretrain" on
    assert (parsed.method, parsed.batch, parsed.patch, parsed.spacing) == ("volf", 4, [128], [1.5])
    with pytest.raises(UserError, match="multiple"):
        logic.serverCommand(method="s3d", arch="ResEncL", patch=100)


# --- the panel -----------------------------------------------------------------------------------------------------


def _widgets():
    root = ET.parse(UI_FILE).getroot()
    return root, {w.get("name"): w.get("class") for w in root.iter("widget")}


def _code():
    text = ""
    for path in CODE_FILES:
        with open(path, encoding="utf-8") as stream:
            text += stream.read()
    return text


def test_ui_file_has_every_widget_the_code_uses():
    root, widgets = _widgets()
    assert root.tag == "ui" and root.get("version") == "4.0" and root.findtext("class") == "SSLPretrain"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "SSLPretrain"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {cls for cls in widgets.values() if not cls.startswith("Q")} <= declared
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert receivers == {name for name, cls in widgets.items() if cls.startswith("qMRML") and "ComboBox" in cls}

    referenced = set(re.findall(r"\bself\.ui\.(\w+)", _code()))
    assert len(referenced) > 15  # the regex found the wiring
    missing = sorted(referenced - set(widgets))
    assert not missing, f"the code refers to widgets missing from the .ui file: {missing}"
    expected = {"inputVolumesSelector": "qMRMLCheckableNodeComboBox", "imageFolderPathLineEdit": "ctkPathLineEdit",
                "methodComboBox": "QComboBox", "architectureComboBox": "QComboBox", "stepsSpinBox": "QSpinBox",
                "deviceComboBox": "QComboBox", "backboneNameLineEdit": "QLineEdit", "startButton": "QPushButton",
                "progressBar": "QProgressBar", "statusLabel": "QLabel", "showChartButton": "QPushButton",
                "serverCollapsibleButton": "ctkCollapsibleButton", "serverCommandTextEdit": "QPlainTextEdit",
                "copyCommandButton": "QPushButton"}
    assert {name: widgets[name] for name in expected} == expected
    server = next(w for w in root.iter("widget") if w.get("name") == "serverCommandTextEdit")
    assert any(p.get("name") == "readOnly" and p.findtext("bool") == "true" for p in server.findall("property"))
    # the combo boxes offer what the logic accepts
    from sslseg.networks import ARCHITECTURES as ENGINE_ARCHITECTURES
    from sslseg.pretraining import METHODS
    from SSLCommonLib.settings import DEVICES
    from SSLPretrainLib.parameters import ARCHITECTURES

    items = {w.get("name"): [i.findtext("property/string") for i in w.findall("item")] for w in root.iter("widget")
             if w.get("class") == "QComboBox"}
    assert items["methodComboBox"] == list(METHODS) and items["deviceComboBox"] == list(DEVICES)
    # the engine's networks in the engine's order, without the test-only ones
    assert items["architectureComboBox"] == list(ARCHITECTURES) == [name for name in ENGINE_ARCHITECTURES
                                                                    if name != "ResEncT-test"]


def test_parameter_bindings_name_parameters_of_a_fitting_type(slicer_harness):
    """Bound widgets name parameters of a fitting type; a bound spin box's range equals the parameter's WithinRange
    (Slicer's GUI connector sets the range from it); the combo boxes offer the Choice validators' values."""
    import slicer

    from SSLPretrainLib.parameters import FIELD_NAMES, SSLPretrainParameterNode
    from SSLCommonLib.parameterFields import Choice, WithinRange

    parameters = SSLPretrainParameterNode.allParameters
    root, _ = _widgets()
    fits = {int: {"QSpinBox"}, float: {"QDoubleSpinBox"}, str: {"QLineEdit", "QComboBox"}, bool: {"QCheckBox"}}
    bound = {}
    for widget in root.iter("widget"):
        properties = {p.get("name"): p.findtext("string") or p.findtext("number") or p.findtext("double")
                      for p in widget.findall("property")}
        if "SlicerParameterName" in properties:
            bound[properties["SlicerParameterName"]] = (widget.get("class"), properties)
    assert len(bound) >= 6
    for field, (cls, properties) in bound.items():
        assert field in FIELD_NAMES, f"{field} is not a parameter"
        parameter = parameters[field]
        assert not parameter.optional and cls in fits[parameter.kind], (field, cls)
        ranges = [v for v in parameter.validators if isinstance(v, WithinRange)]
        if cls in ("QSpinBox", "QDoubleSpinBox"):
            kind = parameter.kind
            assert ranges and (ranges[0].minimum, ranges[0].maximum) == (kind(properties["minimum"]),
                                                                         kind(properties["maximum"])), field
            assert kind(properties["value"]) == parameter.default, field
    items = {w.get("name"): [i.findtext("property/string") for i in w.findall("item")] for w in root.iter("widget")
             if w.get("class") == "QComboBox"}
    for field, combo in (("method", "methodComboBox"), ("device", "deviceComboBox")):
        (choice,) = [v for v in parameters[field].validators if isinstance(v, Choice)]
        assert list(choice.choices) == items[combo], field
    # the parameters the code reads exist; types resolve to real classes; defaults pass their validators
    # the wrapper's own API (Slicer's parameterNodeWrapper): the wrapped MRML node and the GUI connection
    wrapperApi = {"parameterNode", "connectGui", "connectParametersToGui", "disconnectGui"}
    used = set(re.findall(r"\b(?:p|parameterNode|self\.parameterNode)\.(\w+)", _code())) - wrapperApi
    assert used and used <= set(FIELD_NAMES), used - set(FIELD_NAMES)
    assert len(FIELD_NAMES) == len(set(FIELD_NAMES))
    for name, parameter in parameters.items():
        if parameter.isList:
            assert getattr(slicer, parameter.itemKind.__name__) is parameter.itemKind
        else:
            assert isinstance(parameter.default, parameter.kind), (name, parameter.default)
            for validator in parameter.validators:
                validator.validate(parameter.default)


# PySide6 stand-ins: Slicer-only API the widget code uses on these classes
SLICER_ONLY = {"qMRMLCheckableNodeComboBox": {"checkedNodes", "checkedNodesChanged", "setCheckState", "nodeCount",
                                              "nodeFromIndex"},
               "ctkPathLineEdit": {"currentPath", "currentPathChanged"},
               "ctkCollapsibleButton": set()}


@pytest.fixture
def panel(monkeypatch):
    pytest.importorskip("PySide6.QtUiTools", reason="needs PySide6 (pip install -e '.[test]')")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    import render_pretrain_panel
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])
    widget = render_pretrain_panel.loadPanel()
    assert widget.objectName() == "SSLPretrain" and widget.findChildren(QWidget)  # the .ui's top widget, filled
    yield widget
    widget.close()
    # neither the tests nor the renderer leave a window open
    assert not [w.objectName() for w in app.topLevelWidgets() if w.isVisible()]


def test_widget_code_calls_existing_members(panel):
    """Every ``self.ui.<widget>.<member>`` in the widget code is a method, signal or Qt property of its class."""
    from PySide6.QtWidgets import QWidget

    _, widgets = _widgets()
    used = set(re.findall(r"\bself\.ui\.(\w+)\.(\w+)", _code()))
    assert len(used) > 25
    unknown = []
    for name, member in sorted(used):
        if member in SLICER_ONLY.get(widgets[name], ()):
            continue
        widget = panel.findChild(QWidget, name)
        assert widget is not None, name
        if not (hasattr(widget, member) or widget.metaObject().indexOfProperty(member) >= 0):
            unknown.append(f"{name}.{member} ({widgets[name]})")
    assert not unknown, f"not members of the widget classes: {unknown}"


def test_panel_renders(panel, tmp_path, home):
    import render_pretrain_panel
    from PySide6.QtGui import QImage

    png = render_pretrain_panel.render(str(tmp_path / "panel.png"))
    image = QImage(png)
    assert image.width() == 500 and image.height() > 600
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20
