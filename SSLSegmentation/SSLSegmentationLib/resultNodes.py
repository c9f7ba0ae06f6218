"""What the engine's result files become in the scene: the segmentation (a new node, or written into an existing one),
the uncertainty map (a scalar volume over the input, with a warm colour map and the 0..1 window), and the hand-off
to the Segment Editor (the result and its source volume selected on the editor's parameter node, a 3D surface).

MRML only (no Qt): the logic and the console use it; the panel adds what is GUI (switching modules).

Console examples (Slicer's Python console)::

    from SSLSegmentationLib import resultNodes
    resultNodes.selectInSegmentEditor(getNode("case seg"), getNode("case"))    # then open the Segment Editor
    volume, summary = resultNodes.uncertaintyOf(getNode("case seg"))         # after segment(..., uncertainty=True)
    print(resultNodes.summaryText(summary))      # "uncertainty 0.081 (mean 0.012); Anterior 0.091, Posterior 0.072"
    slicer.util.setSliceViewerLayers(background=getNode("case"), foreground=volume, foregroundOpacity=0.5)
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

import slicer
import vtk

from sslseg.errors import UserError

from SSLCommonLib import nodeBridge

UNCERTAINTY_SUFFIX = "_uncertainty.nii.gz"  # the engine's uncertainty map beside <case>.nii.gz
UNCERTAINTY_ROLE = "SSLSegmentation.uncertainty"  # segmentation node -> its uncertainty volume
SUMMARY_ATTRIBUTE = "SSLSegmentation.uncertaintySummary"  # JSON {"mean", "per_segment", "score"} on the volume
# Perceptually ordered warm colour maps (Slicer's Inferno and Magma colour files), then a procedural warm map that
# every Slicer has
UNCERTAINTY_COLORS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileMagma.txt",
                      "vtkMRMLPETProceduralColorNodePET-Heat")


def engineOutputs(done):
    """``(labelFile, uncertaintyFile or None)`` from the engine's ``done`` event of one predicted case (the map is
    ``<case>_uncertainty.nii.gz`` beside the label file)."""
    outputs = [os.fspath(f) for f in done.get("outputs", [])]
    uncertainty = [f for f in outputs if f.endswith(UNCERTAINTY_SUFFIX)]
    labels = [f for f in outputs if f.endswith(".nii.gz") and f not in uncertainty]
    if len(labels) != 1:
        raise UserError(f"the engine wrote {len(labels)} label files, expected one")
    if not uncertainty:
        expected = labels[0][: -len(".nii.gz")] + UNCERTAINTY_SUFFIX
        uncertainty = [expected] if os.path.isfile(expected) else []
    return labels[0], (uncertainty[0] if uncertainty else None)


def caseSummary(done):
    """The one case's uncertainty summary ``{"mean", "per_segment", "score"}`` from the ``done`` event (a dict by
    case name, or a list of per-case dicts), or {}."""
    found = done.get("uncertainty") or {}
    summaries = list(found.values()) if isinstance(found, dict) else list(found)
    summaries = [s for s in summaries if isinstance(s, dict)]
    if isinstance(found, dict) and {"mean", "score"} & set(found):
        summaries = [found]  # the summary itself
    return summaries[0] if len(summaries) == 1 else {}


def readOnGrid(path, volumeNode, what):
    """A result image (engine's checked reader) that must lie on the volume's voxel grid."""
    from sslseg.imageio import read_image

    if volumeNode.GetScene() is None:
        raise UserError(f"the input volume was removed from the scene while its {what} was computed")
    array, geometry = read_image(path)
    if not geometry.same_grid(nodeBridge.volumeGeometry(volumeNode)):
        raise UserError(f"the {what} does not lie on the input volume's grid (was the volume moved meanwhile?)")
    return array


def _number(value):
    if isinstance(value, dict):  # a per-segment summary with several statistics
        value = value.get("score", value.get("mean"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) else None


def perSegmentText(perSegment):
    """"Anterior 0.091, Posterior 0.072" from ``{name: score}`` (or ``{name: {"score"|"mean": ...}}``)."""
    return ", ".join(f"{name} {_number(value):.3f}" for name, value in (perSegment or {}).items()
                     if _number(value) is not None)


def summaryText(summary):
    """One line: the case's score, its mean, and the score of each segment."""
    if not summary:
        return "uncertainty: no summary"
    score, mean = _number(summary.get("score")), _number(summary.get("mean"))
    text = f"uncertainty {score:.3f}" if score is not None else "uncertainty ?"
    if mean is not None:
        text += f" (mean {mean:.3f})"
    segments = perSegmentText(summary.get("per_segment"))
    return f"{text}; {segments}" if segments else text


def addUncertaintyVolume(array, referenceVolumeNode, name, summary=None):
    """A NEW scalar volume node holding the uncertainty map (0: certain .. 1: maximal entropy) on the reference
    volume's grid and under its transform, beside it in the subject hierarchy; shown with a warm colour map over
    the window 0..1. ``summary`` is kept on the node (see ``uncertaintyOf``)."""
    array = np.asarray(array, dtype=np.float32)
    if array.shape != tuple(nodeBridge.volumeGeometry(referenceVolumeNode).shape):
        raise UserError(f"the uncertainty map's shape {array.shape} does not match the input volume's")
    scene = referenceVolumeNode.GetScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    referenceVolumeNode.GetIJKToRASMatrix(matrix)
    volume.SetIJKToRASMatrix(matrix)
    volume.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(volume, array)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    colorID = next((c for c in UNCERTAINTY_COLORS if scene.GetNodeByID(c) is not None), None)
    if colorID:
        display.SetAndObserveColorNodeID(colorID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    volume.SetAttribute(SUMMARY_ATTRIBUTE, json.dumps(summary or {}))
    nodeBridge.placeBeside(volume, referenceVolumeNode)
    return volume


def linkUncertainty(segmentationNode, uncertaintyVolumeNode):
    segmentationNode.SetNodeReferenceID(UNCERTAINTY_ROLE, uncertaintyVolumeNode.GetID())


def uncertaintyOf(segmentationNode):
    """``(uncertaintyVolumeNode, summary)`` of a result made with ``uncertainty=True``; ``(None, {})`` otherwise."""
    volume = segmentationNode.GetNodeReference(UNCERTAINTY_ROLE) if segmentationNode is not None else None
    if volume is None:
        return None, {}
    try:
        summary = json.loads(volume.GetAttribute(SUMMARY_ATTRIBUTE) or "{}")
    except ValueError:
        summary = {}
    return volume, summary


def showUncertainty(inputVolumeNode, uncertaintyVolumeNode, opacity=0.5):
    """The input in the background of the slice views and the uncertainty map over it (MRML view state)."""
    slicer.util.setSliceViewerLayers(background=inputVolumeNode, foreground=uncertaintyVolumeNode,
                                     foregroundOpacity=opacity)


def selectInSegmentEditor(segmentationNode, sourceVolumeNode, showIn3D=True):
    """Select the segmentation and its source volume on the Segment Editor's parameter node (the scene's singleton
    ``vtkMRMLSegmentEditorNode``, which the Segment Editor module shows), and build the 3D surface. Returns the
    editor node."""
    scene = segmentationNode.GetScene()
    editorNode = scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    if editorNode is None:
        editorNode = slicer.vtkMRMLSegmentEditorNode()
        editorNode.SetSingletonTag("SegmentEditor")
        editorNode = scene.AddNode(editorNode)
    editorNode.SetAndObserveSegmentationNode(segmentationNode)
    if hasattr(editorNode, "SetAndObserveSourceVolumeNode"):
        editorNode.SetAndObserveSourceVolumeNode(sourceVolumeNode)
    else:  # Slicer < 5.4 calls it the master volume
        editorNode.SetAndObserveMasterVolumeNode(sourceVolumeNode)
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments():
        editorNode.SetSelectedSegmentID(segmentation.GetNthSegmentID(0))
    if showIn3D:
        segmentationNode.CreateClosedSurfaceRepresentation()
    return editorNode
