"""The SSLSegmentation panel without Slicer: the .ui file is valid Qt Designer XML, every widget the code uses
exists in it with a fitting class, parameter bindings name real parameters, and PySide6 can build and render it."""

import os
import re
import xml.etree.ElementTree as ET

import pytest

import render_module_panel
from SSLSegmentationLib.parameters import FIELDS, FIELD_NAMES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO_ROOT, "SSLSegmentation")
UI_FILE = os.path.join(MODULE, "Resources", "UI", "SSLSegmentation.ui")
# the panel code, with the base class both modules' panels share
CODE_FILES = [os.path.join(MODULE, "SSLSegmentation.py"), os.path.join(MODULE, "SSLSegmentationLib", "widget.py"),
              os.path.join(MODULE, "SSLSegmentationLib", "panelBase.py")]

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
    assert receivers == {name for name, cls in widgets.items() if cls == "qMRMLNodeComboBox"}


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


def test_parameter_bindings_name_parameters_of_a_fitting_type():
    root, _ = _widgets()
    fieldTypes = {name: typeName for name, typeName, _, _ in FIELDS}
    fits = {"int": {"QSpinBox", "ctkSliderWidget"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
            "str": {"QLineEdit", "QComboBox"}, "bool": {"QCheckBox"}}
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget.get("class")
    assert bound, "no SlicerParameterName bindings"
    for field, cls in bound.items():
        assert field in FIELD_NAMES, f"{field} is not a parameter"
        typeName = fieldTypes[field]
        if typeName.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", (field, cls)
        else:
            assert cls in fits[typeName], (field, cls, typeName)
    assert len(FIELD_NAMES) == len(set(FIELD_NAMES))
    assert {"backbone", "trainingVolumes", "trainingSegmentations", "preset", "device", "inputVolume", "model",
            "tta"} <= set(FIELD_NAMES)


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
    """Every parameter type names a real MRML class (slicer-core) or builtin, and defaults fit their types."""
    from SSLSegmentationLib.parameterFields import annotationFor

    for name, typeName, default, description in FIELDS:
        annotation = annotationFor(typeName)
        assert description, name
        if typeName.startswith("list["):
            (item,) = annotation.__args__
            assert annotation.__origin__ is list and item.__name__ == typeName[5:-1]
        elif typeName.startswith("vtkMRML"):
            assert annotation.__name__ == typeName and default is None
        else:
            assert isinstance(default, annotation), (name, default)


# qMRMLNodeComboBox API used by the widget code, absent from its stand-in QComboBox
SLICER_ONLY = {"qMRMLNodeComboBox": {"currentNode", "setCurrentNode", "currentNodeChanged", "setMRMLScene"}}


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
