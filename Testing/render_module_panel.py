"""Render a Slicer module's Qt Designer panel (.ui) to a PNG without Slicer, for the README.

Slicer's custom widgets (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ...) are replaced by their Qt base
classes so that PySide6's QUiLoader can build the panel offscreen; example content (node names, the backbone
catalog, a model, a run in progress) is filled in so that the picture shows what a user sees. It is a rendering of
the .ui file, not a screenshot of Slicer.

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/render_module_panel.py
    # -> Resources/Screenshots/SSLSegmentation-panel.png
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_FILE = os.path.join(REPO_ROOT, "SSLSegmentation", "Resources", "UI", "SSLSegmentation.ui")
PNG_FILE = os.path.join(REPO_ROOT, "Resources", "Screenshots", "SSLSegmentation-panel.png")

# Slicer/CTK class -> (Qt base class, {renamed property: new name}, properties Qt does not know)
REPLACEMENTS = {
    "qMRMLWidget": ("QWidget", {}, set()),
    "qSlicerWidget": ("QWidget", {}, set()),
    "ctkCollapsibleButton": ("QGroupBox", {"text": "title"}, {"collapsed", "contentsFrameShape"}),
    "ctkCollapsibleGroupBox": ("QGroupBox", {}, {"collapsed"}),
    "qMRMLNodeComboBox": ("QComboBox", {}, {"nodeTypes", "showChildNodeTypes", "addEnabled", "removeEnabled",
                                            "noneEnabled", "editEnabled", "renameEnabled", "showHidden",
                                            "selectNodeUponCreation", "baseName", "noneDisplay"}),
    "qMRMLCheckableNodeComboBox": ("QComboBox", {}, {"nodeTypes", "showChildNodeTypes", "addEnabled",
                                                     "removeEnabled", "noneEnabled", "editEnabled", "renameEnabled",
                                                     "showHidden", "baseName", "noneDisplay"}),
    "ctkDoubleSpinBox": ("QDoubleSpinBox", {}, {"decimalsOption"}),
    "ctkPathLineEdit": ("QLineEdit", {}, {"filters", "nameFilters"}),
    "ctkCheckBox": ("QCheckBox", {}, set()),
}


def qtCompatibleUi(uiText):
    """The .ui XML with Slicer/CTK widgets replaced by Qt classes, custom widget declarations and signal
    connections (to Slicer slots) removed. Raises KeyError for a custom class without a replacement."""
    root = ET.fromstring(uiText)
    for widget in root.iter("widget"):
        cls = widget.get("class")
        if cls.startswith(("q", "ctk")) and not cls.startswith("Q"):
            base, renamed, dropped = REPLACEMENTS[cls]
            widget.set("class", base)
            for prop in list(widget.findall("property")):
                name = prop.get("name")
                if name in dropped:
                    widget.remove(prop)
                elif name in renamed:
                    prop.set("name", renamed[name])
    for tag in ("customwidgets", "connections"):
        for element in root.findall(tag):
            root.remove(element)
    return ET.tostring(root, encoding="unicode")


def loadPanel(uiPath=UI_FILE, convert=None):
    """The panel as a PySide6 QWidget (a QApplication must exist); ``convert``: the .ui text -> Qt-only .ui text
    (default ``qtCompatibleUi``)."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader

    with open(uiPath, encoding="utf-8") as stream:
        data = QByteArray((convert or qtCompatibleUi)(stream.read()).encode("utf-8"))
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(buffer)
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {uiPath}: {loader.errorString()}")
    return widget


def _catalog():
    try:
        from sslseg.backbones import list_backbones

        return list_backbones()
    except Exception:  # noqa: BLE001 - the picture still renders without the catalog
        return []


def fillExampleContent(panel):
    """What the panel shows during a fine-tuning run (example scene: hippocampus MRI cases)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QComboBox, QHeaderView, QLabel, QListWidget, QPlainTextEdit, QProgressBar, QPushButton, \
        QTableWidget, QTableWidgetItem

    def child(cls, name):
        found = panel.findChild(cls, name)
        if found is None:
            raise LookupError(name)
        return found

    table = child(QTableWidget, "backboneTable")
    rows = [("none", "-", "-", "-", "-")]
    for entry in _catalog():
        status = "manual download" if entry.get("download") == "manual" else "not downloaded"
        rows.append((entry["name"], status, "-", entry.get("license") or "-", entry.get("modality") or "-"))
    table.setRowCount(len(rows))
    for row, cells in enumerate(rows):
        for column, text in enumerate(cells):
            table.setItem(row, column, QTableWidgetItem(str(text)))
    table.resizeColumnsToContents()
    table.horizontalHeader().setStretchLastSection(True)
    table.verticalHeader().hide()
    table.selectRow(min(2, len(rows) - 1))
    child(QProgressBar, "backboneProgressBar").hide()  # shown by the widget only while downloading
    child(QLabel, "backboneInfoLabel").setText("ResEnc-L, S3D (sparse MAE) pretrained on OpenMind brain MRI; "
                                               "spacing [1, 1, 1] mm")
    for name, text in (("trainingVolumeSelector", "hippocampus_011"),
                       ("trainingSegmentationSelector", "hippocampus_011 reference"),
                       ("inputVolumeSelector", "hippocampus_039")):
        child(QComboBox, name).addItem(text)
    pairs = child(QTableWidget, "trainingPairsTable")
    pairs.setRowCount(2)
    for row, case in enumerate(("hippocampus_006", "hippocampus_007")):
        pairs.setItem(row, 0, QTableWidgetItem(case))
        pairs.setItem(row, 1, QTableWidgetItem(f"{case} reference"))
    pairs.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    pairs.verticalHeader().hide()
    segments = child(QListWidget, "segmentsListWidget")
    for name in ("Anterior", "Posterior"):
        segments.addItem(name)
        item = segments.item(segments.count() - 1)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Checked)
    child(QComboBox, "presetComboBox").setCurrentText("auto")
    child(QLabel, "presetNoteLabel").setText("Preset 'quick' chosen for the GPU (device auto).")
    child(QLabel, "deviceNoteLabel").setText("GPU: NVIDIA RTX A4000")
    child(QPushButton, "finetuneButton").setText("Cancel")
    child(QProgressBar, "progressBar").setValue(41)
    child(QLabel, "statusLabel").setText("training: step 820/2000, loss 0.412, 3:05 left")
    child(QPlainTextEdit, "logTextEdit").setPlainText(
        "Running on cuda. CUDA: NVIDIA RTX A4000, mixed precision\n"
        "loaded backbone ResEncL-OpenMind-S3D: encoder 100 % of tensors\n"
        "Validation Dice at step 750: Anterior 0.842, Posterior 0.815")
    models = child(QListWidget, "modelsListWidget")
    models.addItem("Anterior-Posterior (ResEncL-OpenMind-S3D)  (Anterior, Posterior; Dice 0.83)")
    models.addItem("Anterior-Posterior (scratch)  (Anterior, Posterior; Dice 0.71)")
    child(QLabel, "modelsFolderLabel").setText("Models folder: ~/.sslseg/models")
    child(QComboBox, "modelComboBox").addItem("Anterior-Posterior (ResEncL-OpenMind-S3D)")
    child(QComboBox, "writeIntoSelector").addItem("New segmentation")
    child(QComboBox, "candidateVolumesSelector").addItem("hippocampus_040, hippocampus_041 (+6)")
    candidates = child(QTableWidget, "candidatesTable")
    rows = (("hippocampus_052", "0.118", "Anterior 0.131, Posterior 0.104"),
            ("hippocampus_044", "0.087", "Anterior 0.092, Posterior 0.081"),
            ("hippocampus_041", "0.061", "Anterior 0.066, Posterior 0.057"))
    candidates.setRowCount(len(rows))
    for row, cells in enumerate(rows):
        for column, text in enumerate(cells):
            candidates.setItem(row, column, QTableWidgetItem(text))
    candidates.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
    candidates.verticalHeader().hide()
    candidates.selectRow(0)


def render(pngPath=PNG_FILE, uiPath=UI_FILE, width=500, load=None, fill=None):
    """Write the panel, filled with example content, to ``pngPath``. ``load``/``fill`` default to this module's
    ``loadPanel``/``fillExampleContent`` (the SSLPretrain renderer passes its own)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    panel = (load or loadPanel)(uiPath)
    (fill or fillExampleContent)(panel)
    panel.resize(width, 100)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    os.makedirs(os.path.dirname(os.path.abspath(pngPath)), exist_ok=True)
    if not panel.grab().save(pngPath, "PNG"):
        raise RuntimeError(f"could not write {pngPath}")
    panel.close()
    return pngPath


if __name__ == "__main__":
    print(render(*(sys.argv[1:2] or [PNG_FILE])))
