"""Render the SSLPretrain panel (.ui) to a PNG without Slicer, for the README: the approach of
``render_module_panel.py`` (Slicer/CTK widgets replaced by Qt base classes, example content filled in). It is a
rendering of the .ui file, not a screenshot of Slicer.

    QT_QPA_PLATFORM=offscreen .venv/bin/python Testing/render_pretrain_panel.py
    # -> Resources/Screenshots/SSLPretrain-panel.png
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET

import render_module_panel

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UI_FILE = os.path.join(REPO_ROOT, "SSLPretrain", "Resources", "UI", "SSLPretrain.ui")
PNG_FILE = os.path.join(REPO_ROOT, "Resources", "Screenshots", "SSLPretrain-panel.png")


def qtCompatibleUi(uiText):
    """As ``render_module_panel.qtCompatibleUi``; the checkable node combo box is drawn as a node combo box."""
    root = ET.fromstring(uiText)
    for widget in root.iter("widget"):
        if widget.get("class") == "qMRMLCheckableNodeComboBox":
            widget.set("class", "qMRMLNodeComboBox")
    return render_module_panel.qtCompatibleUi(ET.tostring(root, encoding="unicode"))


def loadPanel(uiPath=UI_FILE):
    """The panel as a PySide6 QWidget (a QApplication must exist)."""
    return render_module_panel.loadPanel(uiPath, convert=qtCompatibleUi)


def fillExampleContent(panel):
    """What the panel shows during a pretraining run on a few scene volumes (CPU trial run)."""
    from PySide6.QtWidgets import QComboBox, QLabel, QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox

    def child(cls, name):
        found = panel.findChild(cls, name)
        if found is None:
            raise LookupError(name)
        return found

    child(QComboBox, "inputVolumesSelector").addItem("hippocampus_006, hippocampus_007, hippocampus_011 (+9)")
    child(QLineEdit, "imageFolderPathLineEdit").setEnabled(False)
    child(QLabel, "imagesInfoLabel").setText("Checked volumes are copied to a temporary folder for the run (the "
                                             "nodes are not changed).")
    child(QComboBox, "architectureComboBox").setCurrentText("ResEncS-cpu")
    child(QSpinBox, "stepsSpinBox").setValue(2000)
    child(QSpinBox, "patchSizeSpinBox").setValue(64)
    child(QLabel, "deviceNoteLabel").setText("No CUDA GPU visible to PyTorch: pretraining runs on the CPU and is "
                                             "slow. Use the small ResEncS-cpu network for a trial, and the server "
                                             "box below for real runs.")
    child(QLineEdit, "backboneNameLineEdit").setText("hippocampus-s3d")
    child(QPushButton, "startButton").setText("Cancel")
    child(QProgressBar, "progressBar").setValue(37)
    child(QLabel, "statusLabel").setText("step 740/2000, loss 0.6127, 12:40 left")
    child(QPlainTextEdit, "logTextEdit").setPlainText(
        "Running on cpu: 12 images (0 skipped).\nValidation loss at step 500: 0.7043")
    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic

    child(QPlainTextEdit, "serverCommandTextEdit").setPlainText(SSLPretrainLogic().serverCommand(
        method="s3d", arch="ResEncL", steps=250000, patch=160, processes=8, backboneName="hippocampus-s3d"))


def render(pngPath=PNG_FILE, uiPath=UI_FILE, width=500):
    return render_module_panel.render(pngPath, uiPath, width, load=loadPanel, fill=fillExampleContent)


if __name__ == "__main__":
    for path in (REPO_ROOT, os.path.join(REPO_ROOT, "SSLCommon"), os.path.join(REPO_ROOT, "SSLPretrain")):
        sys.path.insert(0, path)
    print(render(*(sys.argv[1:2] or [PNG_FILE])))
