"""The SSLSegmentation panel without Slicer: the .ui file is valid Qt Designer XML, every widget the code uses
exists in it with a fitting class, parameter bindings name real parameters, and PySide6 can build and render it."""

import os
import re
import xml.etree.ElementTree as ET

import pytest

import render_module_panel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO_ROOT, "SSLSegmentation")
UI_FILE = os.path.join(MODULE, "Resources", "UI", "SSLSegmentation.ui")
# the panel code, with the base class both modules' panels share
CODE_FILES = [os.path.join(MODULE, "SSLSegmentation.py"), os.path.join(MODULE, "SSLSegmentationLib", "widget.py"),
              os.path.join(REPO_ROOT, "SSLCommon", "SSLCommonLib", "panelBase.py")]
# the parameter node wrapper's own API (Slicer's parameterNodeWrapper): the wrapped MRML node and the GUI connection
WRAPPER_API = {"parameterNode", "connectGui", "connectParametersToGui", "disconnectGui"}

# what the widget code calls on each widget, by class (so that e.g. .currentNode() is not used on a QComboBox)
QT_OR_SLICER = re.compile(r"^(Q|q|ctk)\w+$")


def _widgets():
    root = ET.parse(UI_FILE).getroot()
    return root, {w.get("name"): w.get("class") for w in root.iter("widget")}


def _referencedNames():
    names = set()
    for path in CODE_FILES:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        names |= set(re.findall(r"\bself\.ui\.(\w+)", text))
        names |= set(re.findall(r"findChild\(\s*\w+\s*,\s*[\"'](\w+)[\"']", text))
    return names


def test_ui_is_designer_xml_with_declared_custom_widgets():
    root, widgets = _widgets()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == "SSLSegmentation"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "SSLSegmentation"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    assert all(QT_OR_SLICER.match(cls) for cls in widgets.values())
    declared = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    used_custom = {cls for cls in widgets.values() if not cls.startswith("Q")}
    assert used_custom <= set(declared), used_custom - set(declared)
    # node selectors get the scene from the panel (Slicer's usual mrmlSceneChanged connection)
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    assert receivers == {name for name, cls in widgets.items()
                         if cls in ("qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox")}


def test_every_widget_the_code_uses_exists():
    _, widgets = _widgets()
    referenced = _referencedNames()
    assert len(referenced) > 25  # the regex found the wiring
    missing = sorted(referenced - set(widgets))
    assert not missing, f"the code refers to widgets missing from the .ui file: {missing}"
    expected = {"finetuneButton": "QPushButton", "trainingVolumeSelector": "qMRMLNodeComboBox",
                "inputVolumeSelector": "qMRMLNodeComboBox", "backboneTable": "QTableWidget",
                "logTextEdit": "QPlainTextEdit", "progressBar": "QProgressBar",
                "validationPercentSpinBox": "QSpinBox", "segmentsListWidget": "QListWidget"}
    assert {name: widgets[name] for name in expected} == expected
    # node types of the selectors
    root, _ = _widgets()
    types = {w.get("name"): [s.text for s in w.iter("string")] for w in root.iter("widget")
             if w.get("class") == "qMRMLNodeComboBox"}
    assert types["trainingSegmentationSelector"][0] == "vtkMRMLSegmentationNode"
    assert types["inputVolumeSelector"][0] == "vtkMRMLScalarVolumeNode"


def _parameters():
    """{field: (base type, optional, validators, default)} of the module's parameter node class (the plain-Python
    stand-in of ``@parameterNodeWrapper`` on slicer-core reads the same annotations)."""
    from SSLSegmentationLib.parameters import SSLSegmentationParameterNode

    return {name: (p.kind, p.optional, p.validators, p.default)
            for name, p in SSLSegmentationParameterNode.allParameters.items()}


def _bindings():
    """{parameter name: (widget class, {property: value})} from the .ui file's SlicerParameterName properties."""
    root, _ = _widgets()
    bound = {}
    for widget in root.iter("widget"):
        properties = {p.get("name"): p.findtext("string") or p.findtext("number") for p in widget.findall("property")}
        if "SlicerParameterName" in properties:
            bound[properties["SlicerParameterName"]] = (widget.get("class"), properties)
    return bound


def test_parameter_bindings_name_parameters_of_a_fitting_type(slicer_harness):
    """Every bound widget names a parameter that Slicer's GUI connectors can represent: the right widget class for
    its type, never an Optional ("auto" = None parameters are bound by the widget code), and a spin box range equal
    to the WithinRange validator (Slicer's connector sets the spin box's range from it)."""
    from SSLCommonLib.parameterFields import WithinRange

    parameters = _parameters()
    fits = {int: {"QSpinBox", "ctkSliderWidget"}, float: {"QDoubleSpinBox", "ctkSliderWidget"},
            str: {"QLineEdit", "QComboBox"}, bool: {"QCheckBox"}}
    bound = _bindings()
    assert bound, "no SlicerParameterName bindings"
    for field, (cls, properties) in bound.items():
        assert field in parameters, f"{field} is not a parameter"
        kind, optional, validators, _ = parameters[field]
        assert not optional, f"{field}: Slicer has no GUI connector for an Optional parameter"
        if isinstance(kind, type) and kind.__name__.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", (field, cls)
        else:
            assert cls in fits[kind], (field, cls, kind)
        ranges = [v for v in validators if isinstance(v, WithinRange)]
        if cls == "QSpinBox":
            assert ranges and (ranges[0].minimum, ranges[0].maximum) == (int(properties.get("minimum") or 0),
                                                                         int(properties.get("maximum") or 99))
    assert {"backbone", "trainingVolumes", "trainingSegmentations", "preset", "device", "inputVolume", "model",
            "tta", "uncertainty", "writeInto", "candidateVolumes", "candidateFolder"} <= set(parameters)
    # the parameters the widget code reads or writes exist
    with open(CODE_FILES[1], encoding="utf-8") as stream:
        code = stream.read()
    used = set(re.findall(r"\b(?:p|parameterNode|self\.parameterNode)\.(\w+)", code)) - WRAPPER_API
    used |= set(re.findall(r"_setParameter\(\"(\w+)\"", code))
    assert len(used) > 15 and used <= set(parameters), used - set(parameters)


def test_panel_loads_and_renders_with_pyside6(tmp_path, monkeypatch):
    pytest.importorskip("PySide6.QtUiTools", reason="needs PySide6 (pip install -e '.[test]')")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance() or QApplication([])
    panel = render_module_panel.loadPanel()
    _, widgets = _widgets()
    for name in _referencedNames():
        assert panel.findChild(QWidget, name) is not None, name
    panel.close()
    png = render_module_panel.render(str(tmp_path / "panel.png"))
    image = QImage(png)
    assert image.width() == 500 and image.height() > 800
    # not blank: many distinct colours (text, frames, the progress bar)
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20
    # the renderer closes what it opened
    assert not [w.objectName() for w in app.topLevelWidgets() if w.isVisible()]


def test_parameter_types_resolve_to_real_classes(slicer_harness):
    """Every parameter is a builtin, a real MRML class (slicer-core) or a list of those; defaults pass their own
    validators; the "auto" choices are None (Optional), not a sentinel value."""
    import slicer

    parameters = _parameters()
    for name, (kind, optional, validators, default) in parameters.items():
        item = kind.__args__[0] if getattr(kind, "__origin__", None) is list else kind
        assert item in (int, float, str, bool) or getattr(slicer, item.__name__, None) is item, (name, item)
        if default is not None:
            for validator in validators:
                validator.validate(default)
    for auto in ("preset", "validationPercent"):
        assert parameters[auto][1] and parameters[auto][3] is None, auto
    from SSLSegmentationLib.segmentationLogic import PRESETS

    (choice,) = parameters["preset"][2]
    assert tuple(choice.choices) == tuple(PRESETS)


# qMRMLNodeComboBox API used by the widget code, absent from its stand-in QComboBox
SLICER_ONLY = {"qMRMLNodeComboBox": {"currentNode", "setCurrentNode", "currentNodeChanged", "setMRMLScene"},
               "qMRMLCheckableNodeComboBox": {"checkedNodes", "checkedNodesChanged", "setCheckState", "nodeCount",
                                              "nodeFromIndex"},
               "ctkPathLineEdit": {"currentPath", "currentPathChanged"}}


def test_widget_code_calls_existing_methods_signals_and_properties(monkeypatch):
    """Every ``self.ui.<widget>.<member>`` in the widget code names a method, signal or Qt property of that
    widget's class (PythonQt exposes Qt properties as attributes: ``button.enabled``, ``combo.currentText``)."""
    pytest.importorskip("PySide6.QtUiTools", reason="needs PySide6 (pip install -e '.[test]')")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication, QWidget

    QApplication.instance() or QApplication([])
    panel = render_module_panel.loadPanel()
    assert panel.objectName() == "SSLSegmentation"  # the .ui file's top widget
    _, widgets = _widgets()
    used = set()
    for path in CODE_FILES:
        with open(path, encoding="utf-8") as stream:
            used |= set(re.findall(r"\bself\.ui\.(\w+)\.(\w+)", stream.read()))
    assert len(used) > 30
    unknown = []
    for name, member in sorted(used):
        if member in SLICER_ONLY.get(widgets[name], ()):
            continue
        widget = panel.findChild(QWidget, name)
        if not (hasattr(widget, member) or widget.metaObject().indexOfProperty(member) >= 0):
            unknown.append(f"{name}.{member} ({widgets[name]})")
    panel.close()
    assert not unknown, f"not members of the widget classes: {unknown}"


def test_parameter_node_checks_values_and_keeps_them_in_the_scene(slicer_scene):
    """The parameter node class on real MRML nodes (slicer-core has no ``slicer.parameterNodeWrapper``: the
    plain-Python stand-in reads the same annotations): defaults, "auto" as None, validators refusing bad values
    (the old value stays), and values that survive saving and reloading the scene."""
    import slicer

    from SSLSegmentationLib.parameters import DEFAULT_BACKBONE, SSLSegmentationParameterNode

    p = SSLSegmentationParameterNode(slicer_scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "SSLSegmentation"))
    assert (p.backbone, p.preset, p.validationPercent, p.device, p.tta) == (DEFAULT_BACKBONE, None, None, "auto", False)
    assert p.trainingVolumes == [] and p.inputVolume is None and p.writeInto is None
    volumes = [slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"v{i}") for i in range(2)]
    segmentation = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    p.preset, p.validationPercent, p.device = "cpu", 20, "cpu"
    p.trainingVolumes, p.inputVolume, p.writeInto = volumes, volumes[1], segmentation
    for name, value, error in (("validationPercent", 60, ValueError), ("preset", "fast", ValueError),
                               ("device", "gpu", ValueError), ("validationPercent", "20", TypeError),
                               ("tta", 1, TypeError), ("inputVolume", segmentation, TypeError),
                               ("trainingVolumes", [segmentation], TypeError)):
        before = getattr(p, name)
        with pytest.raises(error):
            setattr(p, name, value)
        assert getattr(p, name) == before, name
    p.validationPercent = None  # back to "auto"

    slicer_scene.SetSaveToXMLString(1)
    slicer_scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetLoadFromXMLString(1)
    reloaded.SetSceneXMLString(slicer_scene.GetSceneXMLString())
    reloaded.Import()
    q = SSLSegmentationParameterNode(reloaded.GetFirstNodeByName("SSLSegmentation"))
    assert (q.preset, q.validationPercent, q.device) == ("cpu", None, "cpu")
    assert [v.GetName() for v in q.trainingVolumes] == ["v0", "v1"] and q.trainingVolumes[0].GetScene() is reloaded
    assert q.inputVolume.GetName() == "v1" and q.writeInto.GetName() == "s"
