"""The bridge between MRML nodes and the engine's arrays (``sslseg``): volumes, segmentations, files.

Arrays follow the engine (``sslseg.imageio``): numpy order ``array[z, y, x]`` and a ``Geometry`` in ITK's LPS space
(spacing/origin in x, y, z millimetres, direction as 9 row-major values). Slicer works in RAS: the conversion flips
the first two axes. Nothing here modifies the nodes it reads; new nodes are only created by
``labelArrayToSegmentationNode``, and only ``writeLabelArrayInto`` changes a node given to it (the segments of the
names it writes). Segments carry Slicer's terminology (``TerminologyEntry`` tag) both ways. The temporary nodes a
call creates (and the display, storage and colour nodes Slicer makes for them) are removed before it returns; nodes
that other modules add meanwhile are left alone.

Console examples (Slicer's Python console)::

    from SSLCommonLib import nodeBridge
    volume = getNode("hippocampus_006")
    array, geometry = nodeBridge.volumeToArray(volume)
    labels, names = nodeBridge.segmentationToLabelArray(getNode("Segmentation"), volume, ["Anterior", "Posterior"])
    result = nodeBridge.labelArrayToSegmentationNode(labels, names, volume, name="Prediction")
    nodeBridge.writeLabelArrayInto(getNode("My segmentation"), labels, names, volume)   # replaces those segments
    nodeBridge.segmentTerminologies(getNode("Segmentation"), ["Anterior"])  # {"Anterior": "...~SCT^...~..."}
    nodeBridge.writeVolume(volume, "/tmp/case_0000.nii.gz")
    nodeBridge.guessModality(volume)       # "CT" or "MR"
"""

from __future__ import annotations

import numpy as np

import slicer
import vtk

from sslseg.errors import UserError
from sslseg.imageio import Geometry, write_image

# RAS <-> LPS: negate x and y
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------------------------------------------
# volumes
# ----------------------------------------------------------------------------------------------------------------
def volumeIJKToWorldMatrix(volumeNode) -> np.ndarray:
    """4x4 numpy matrix from (i, j, k, 1) voxel indices to world RAS, with the node's parent transforms hardened in.

    Raises UserError when a parent transform is not linear (a warped grid is not a voxel grid any more: harden the
    transform and resample the volume first)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRAS = slicer.util.arrayFromVTKMatrix(matrix)
    transformNode = volumeNode.GetParentTransformNode()
    if transformNode is not None:
        if not transformNode.IsTransformToWorldLinear():
            raise UserError(
                f"Volume '{volumeNode.GetName()}' is under a non-linear transform ('{transformNode.GetName()}'). "
                "Harden the transform (Data module: right-click > Harden transform) or resample the volume first.")
        toWorld = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(toWorld)
        ijkToRAS = slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRAS
    return ijkToRAS


def geometryFromIJKToRAS(ijkToRAS, shape) -> Geometry:
    """Engine ``Geometry`` (LPS) for a 4x4 IJK-to-RAS matrix and an array shape (z, y, x).

    Raises UserError when the matrix has shear (axes not orthogonal), which a voxel grid cannot represent."""
    ijkToLPS = _RAS_TO_LPS @ np.asarray(ijkToRAS, dtype=float)
    columns = ijkToLPS[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise UserError("The volume has a zero voxel spacing.")
    direction = columns / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-5):
        raise UserError("The volume's axes are not orthogonal (sheared by a transform); resample it first.")
    return Geometry(
        shape=tuple(int(s) for s in shape[-3:]),
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in ijkToLPS[:3, 3]),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def volumeGeometry(volumeNode) -> Geometry:
    """The volume's voxel grid as an engine ``Geometry`` in world coordinates (parent linear transforms hardened).

    Example::

        nodeBridge.volumeGeometry(getNode("MRHead")).spacing
    """
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None:
        raise UserError(f"Volume '{volumeNode.GetName() if volumeNode else None}' has no voxels.")
    shape = tuple(reversed(imageData.GetDimensions()))
    return geometryFromIJKToRAS(volumeIJKToWorldMatrix(volumeNode), shape)


def volumeToArray(volumeNode):
    """A copy of the volume's voxels and its geometry: ``(array[z, y, x], Geometry)`` in LPS, as
    ``sslseg.imageio.read_image`` would give for the same image saved to a file. A parent linear transform is
    hardened into the geometry (the voxels are not resampled); a non-linear one raises UserError. Vector volumes
    give ``array[c, z, y, x]`` like the engine.

    Example::

        array, geometry = nodeBridge.volumeToArray(getNode("MRHead"))
    """
    geometry = volumeGeometry(volumeNode)
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    if array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    return array, geometry


def writeVolume(volumeNode, path) -> str:
    """Write the volume (voxels and world geometry, see ``volumeToArray``) to an image file for the engine's
    background process. Written atomically by ``sslseg.imageio.write_image``.

    Example::

        nodeBridge.writeVolume(getNode("MRHead"), "/tmp/input/case_0000.nii.gz")
    """
    array, geometry = volumeToArray(volumeNode)
    if array.ndim == 4:
        raise UserError(f"Volume '{volumeNode.GetName()}' has several components; write one channel per file.")
    return write_image(array, geometry, path)


def guessModality(volumeNode) -> str:
    """"CT" when the volume holds air-like values (at most -900: Hounsfield units), else "MR": the intensity
    normalisation nnU-Net would choose from the channel name (CT windowing or z-score).

    Example::

        nodeBridge.guessModality(getNode("CTChest"))   # "CT"
    """
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    low = imageData.GetScalarRange()[0] if imageData is not None else 0
    return "CT" if low <= -900 else "MR"


# ----------------------------------------------------------------------------------------------------------------
# segmentations
# ----------------------------------------------------------------------------------------------------------------
def segmentIDsByName(segmentationNode, segmentNames=None):
    """Segment IDs in display order; with ``segmentNames``, the IDs of those segments in that order.

    Raises UserError naming the segments that are missing and those that exist."""
    segmentation = segmentationNode.GetSegmentation()
    allIDs = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if segmentNames is None:
        return allIDs
    byName = {}
    for segmentID in allIDs:
        byName.setdefault(segmentation.GetSegment(segmentID).GetName(), segmentID)
    missing = [name for name in segmentNames if name not in byName]
    if missing:
        raise UserError(
            f"Segmentation '{segmentationNode.GetName()}' has no segment named {', '.join(map(repr, missing))}; "
            f"it has: {', '.join(map(repr, byName)) or 'no segments'}.")
    if len(set(segmentNames)) != len(segmentNames):
        raise UserError(f"Segment names are repeated: {list(segmentNames)}")
    return [byName[name] for name in segmentNames]


# vtkSegment::GetTerminologyEntryTagName(): the tag holding a segment's terminology entry, Slicer's coded meaning of
# a segment (context~category~type~type modifier~anatomic context~region~region modifier)
TERMINOLOGY_TAG = "TerminologyEntry"


# Slicer's application setting for the terminology the Segment Editor gives every segment it adds (Application
# settings > Segmentations), unless the segmentation node has a default terminology of its own
DEFAULT_TERMINOLOGY_SETTING = "Segmentations/DefaultTerminologyEntry"


def _placeholderTerminology():
    """The entry a new segment carries before anyone chooses one (Slicer's generic "Tissue"), or ""."""
    value = vtk.mutable("")
    return str(value) if slicer.vtkSegment().GetTag(TERMINOLOGY_TAG, value) else ""


def _entryCodes(entry):
    """The coded part of a terminology entry string (what follows ``|`` in a stored default is not a code)."""
    return str(entry or "").split("|", 1)[0].strip()


def defaultTerminologies(segmentationNode=None, settings=None):
    """The entries a segment carries when nobody chose one for it: the placeholder of new segments, the
    segmentation node's default terminology, and the user's default terminology (Slicer's setting
    ``Segmentations/DefaultTerminologyEntry``), which the Segment Editor stamps on every segment it adds. As a set
    of coded parts (``_entryCodes``). ``settings``: see ``SSLCommonLib.settings.readSlicerSetting``."""
    from .settings import readSlicerSetting

    entries = [_placeholderTerminology(), readSlicerSetting(DEFAULT_TERMINOLOGY_SETTING, settings)]
    if segmentationNode is not None:
        entries.append(slicer.vtkSlicerTerminologiesModuleLogic.GetDefaultTerminologyEntryAsString(segmentationNode))
    return {_entryCodes(entry) for entry in entries if _entryCodes(entry)}


def segmentTerminology(segment, defaults=None):
    """The segment's terminology entry string, or None when it has none or only a default that says nothing about
    what the segment is: ``defaults`` (from ``defaultTerminologies``; the placeholder of new segments when not
    given).

    Example::

        segment = getNode("Segmentation").GetSegmentation().GetSegment("Segment_1")
        nodeBridge.segmentTerminology(segment)   # "Segmentation category and type - ...~SCT^5366009^Hippocampus~..."
    """
    value = vtk.mutable("")
    if segment is None or not segment.GetTag(TERMINOLOGY_TAG, value):
        return None
    entry = str(value)
    defaults = {_entryCodes(_placeholderTerminology())} if defaults is None else defaults
    return entry if _entryCodes(entry) and _entryCodes(entry) not in defaults else None


def segmentTerminologies(segmentationNode, segmentNames, settings=None):
    """``{name: terminology entry or None}`` for the named segments: None where the segment carries only a default
    (see ``defaultTerminologies``)."""
    segmentation = segmentationNode.GetSegmentation()
    defaults = defaultTerminologies(segmentationNode, settings)
    return {name: segmentTerminology(segmentation.GetSegment(segmentID), defaults)
            for name, segmentID in zip(segmentNames, segmentIDsByName(segmentationNode, segmentNames))}


class _TemporaryNodes:
    """Nodes a call creates for its own use, removed at the end with the helper nodes Slicer made for them (their
    display and storage nodes, and a colour table that did not exist before the call). Only these go: nodes that
    observers of other modules add meanwhile stay."""

    def __init__(self, scene):
        self.scene = scene
        self.nodes = []
        self._before = _nodeIDs(scene)

    def add(self, className, name):
        node = self.scene.AddNewNodeByClass(className, name)
        self.nodes.append(node)
        return node

    def _helpers(self, node):
        helpers = []
        for index in range(node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0):
            display = node.GetNthDisplayNode(index)
            helpers.append(display)
            colorID = display.GetColorNodeID() if display is not None and hasattr(display, "GetColorNodeID") \
                else None
            if colorID and colorID not in self._before:
                helpers.append(self.scene.GetNodeByID(colorID))
        if hasattr(node, "GetStorageNode"):
            helpers.append(node.GetStorageNode())
        return helpers

    def removeAll(self, keep=()):
        """Remove the created nodes except ``keep`` (with their helper nodes)."""
        keepIDs = {node.GetID() for node in keep}
        doomed = []
        for node in self.nodes:
            if node.GetID() not in keepIDs:
                doomed += [node] + self._helpers(node)
        for node in doomed:
            if node is not None and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)


def _nodeIDs(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segmentationToLabelArray(segmentationNode, referenceVolumeNode, segmentNames=None):
    """The chosen segments as one label array on the reference volume's voxel grid: ``(labelArray[z, y, x],
    labels)`` with ``labels = [{"value": 1, "name": "Anterior", "color": [r, g, b]}, ...]`` (colours 0..1), values
    1..N in the order of ``segmentNames`` (default: all segments in display order).

    Segments are rasterised onto the reference volume's grid with Slicer's
    ``ExportSegmentsToLabelmapNode``. Where segments overlap, the later segment in the list wins. The array
    matches ``volumeToArray(referenceVolumeNode)`` voxel for voxel, parent transforms included. Raises UserError
    for a segment name that does not exist. The segmentation node is not modified (when its source
    representation is not a binary labelmap, a temporary copy is converted instead).

    Example::

        labels, names = nodeBridge.segmentationToLabelArray(getNode("Segmentation"), getNode("MRHead"),
                                                            ["Anterior", "Posterior"])
    """
    if segmentationNode is None or referenceVolumeNode is None:
        raise UserError("A segmentation and a reference volume are needed.")
    volumeGeometry(referenceVolumeNode)  # clear errors for a volume without voxels or under a warp
    segmentIDs = segmentIDsByName(segmentationNode, segmentNames)
    segmentation = segmentationNode.GetSegmentation()
    labels = []
    for value, segmentID in enumerate(segmentIDs, start=1):
        segment = segmentation.GetSegment(segmentID)
        labels.append({"value": value, "name": segment.GetName(), "color": [float(c) for c in segment.GetColor()]})
    shape = tuple(reversed(referenceVolumeNode.GetImageData().GetDimensions()))
    dtype = np.uint8 if len(segmentIDs) < 256 else np.uint16
    if not segmentIDs:
        return np.zeros(shape, dtype), labels

    temporary = _TemporaryNodes(segmentationNode.GetScene())
    try:
        source = segmentationNode
        binaryName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if not segmentation.ContainsRepresentation(binaryName):
            # the export would add a labelmap representation to the user's node: convert a copy instead
            source = temporary.add("vtkMRMLSegmentationNode", "__sslseg_temp_copy__")
            source.GetSegmentation().DeepCopy(segmentation)
            source.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        labelmapNode = temporary.add("vtkMRMLLabelMapVolumeNode", "__sslseg_temp_labels__")
        # the exported labelmap is in the reference volume's local frame, under the same transform
        labelmapNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        ids = vtk.vtkStringArray()
        for segmentID in segmentIDs:
            ids.InsertNextValue(segmentID)
        ok = slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
            source, ids, labelmapNode, referenceVolumeNode)
        if not ok:
            raise UserError(f"Could not rasterise segmentation '{segmentationNode.GetName()}' onto volume "
                            f"'{referenceVolumeNode.GetName()}'.")
        exported = slicer.util.arrayFromVolume(labelmapNode)
        if exported.shape != shape:
            raise UserError(f"The exported labelmap has shape {exported.shape}, expected {shape}.")
        labelArray = exported.astype(dtype, copy=True)
    finally:
        temporary.removeAll()
    return labelArray, labels


def writeLabels(segmentationNode, referenceVolumeNode, path, segmentNames=None):
    """Write the chosen segments as a label image on the reference volume's grid (see
    ``segmentationToLabelArray``) for the engine; returns the ``labels`` list (value, name, colour).

    Example::

        labels = nodeBridge.writeLabels(getNode("Segmentation"), getNode("MRHead"), "/tmp/labels/case.nii.gz",
                                        ["Anterior", "Posterior"])
    """
    labelArray, labels = segmentationToLabelArray(segmentationNode, referenceVolumeNode, segmentNames)
    write_image(labelArray, volumeGeometry(referenceVolumeNode), path)
    return labels


def _contiguousLabels(labelArray, labels, referenceVolumeNode):
    """The label array checked against the volume's grid and ``labels``, with values renumbered 1..N in list order
    (``ImportLabelmapToSegmentationNode`` maps label i to the i-th segment ID); also the values present."""
    geometry = volumeGeometry(referenceVolumeNode)
    labelArray = np.asarray(labelArray)
    if labelArray.shape != tuple(geometry.shape):
        raise UserError(f"The label array's shape {labelArray.shape} does not match volume "
                        f"'{referenceVolumeNode.GetName()}' {tuple(geometry.shape)}.")
    if not np.issubdtype(labelArray.dtype, np.integer) and labelArray.dtype != np.bool_:
        if not np.array_equal(labelArray, np.round(labelArray)):
            raise UserError("The label array must hold integer label values.")
    values = [int(entry["value"]) for entry in labels]
    if len(set(values)) != len(values) or any(v <= 0 for v in values):
        raise UserError(f"Label values must be distinct and positive: {values}")
    present = {int(v) for v in np.unique(labelArray)} - {0}
    unknown = sorted(present - set(values))
    if unknown:
        raise UserError(f"The label array holds values {unknown} that have no entry in the labels list.")
    lookup = np.zeros(max(values + [int(labelArray.max()) if labelArray.size else 0]) + 1, np.uint16)
    for index, value in enumerate(values, start=1):
        lookup[value] = index
    contiguous = lookup[labelArray.astype(np.int64)]
    return contiguous.astype(np.uint8 if len(values) < 256 else np.uint16), present


def _toWorldMatrix(node):
    """4x4 numpy matrix from the node's local coordinates to world RAS (its parent transforms); UserError when one
    is not linear."""
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise UserError(f"'{node.GetName()}' is under a non-linear transform ('{transformNode.GetName()}'). Harden "
                        "the transform (Data module: right-click > Harden transform) first.")
    toWorld = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(toWorld)
    return slicer.util.arrayFromVTKMatrix(toWorld)


def _importLabels(contiguous, segmentationNode, segmentIDs, referenceVolumeNode, temporary):
    """Import label i of ``contiguous`` (on the volume's grid) into ``segmentIDs[i-1]``, replacing what those
    segments held. The labelmap is placed under the segmentation's own parent transform, with the volume's grid
    expressed in the segmentation's local frame: Slicer's import does not place a labelmap correctly whose parent
    transform differs from the segmentation's (its voxels end up offset by the difference), and with equal parents
    the voxels stay exactly where the volume's are."""
    ijkToLocal = np.linalg.inv(_toWorldMatrix(segmentationNode)) @ volumeIJKToWorldMatrix(referenceVolumeNode)
    labelmapNode = temporary.add("vtkMRMLLabelMapVolumeNode", "__sslseg_temp_labels__")
    labelmapNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToLocal))
    labelmapNode.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(labelmapNode, contiguous)
    ids = vtk.vtkStringArray()
    for segmentID in segmentIDs:
        ids.InsertNextValue(segmentID)
    if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, ids):
        raise UserError("Could not import the labels into a segmentation.")


def labelArrayToSegmentationNode(labelArray, labels, referenceVolumeNode, name=None):
    """A NEW segmentation node from a label array on the reference volume's grid (``array[z, y, x]`` as from
    ``volumeToArray``): one segment per entry of ``labels`` (``{"value", "name", "color", "terminology"}``; colour
    and terminology optional), also when its value does not occur (an empty segment), in the order given. A
    ``terminology`` (Slicer's terminology entry string) becomes the segment's ``TerminologyEntry`` tag. The node gets
    the reference image geometry of the volume, the volume's parent transform, and is placed beside the volume in
    the subject hierarchy (under its study). Voxel values not in ``labels`` raise UserError (nothing would show
    them).

    Example::

        labels = [{"value": 1, "name": "Anterior", "color": [1, 0, 0]}, {"value": 2, "name": "Posterior"}]
        node = nodeBridge.labelArrayToSegmentationNode(prediction, labels, getNode("MRHead"), "MRHead prediction")
    """
    contiguous, present = _contiguousLabels(labelArray, labels, referenceVolumeNode)
    temporary = _TemporaryNodes(referenceVolumeNode.GetScene())
    segmentationNode = temporary.add("vtkMRMLSegmentationNode",
                                     name or f"{referenceVolumeNode.GetName()} segmentation")
    try:
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        segmentationNode.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())
        segmentIDs = [_addSegment(segmentationNode.GetSegmentation(), entry) for entry in labels]
        if present:
            _importLabels(contiguous, segmentationNode, segmentIDs, referenceVolumeNode, temporary)
        placeBeside(segmentationNode, referenceVolumeNode)
    except Exception:
        temporary.removeAll()  # a failed call leaves the scene as it was
        raise
    temporary.removeAll(keep=[segmentationNode])
    return segmentationNode


def _addSegment(segmentation, entry):
    """A new empty segment with the entry's name, colour and terminology; returns its ID."""
    segmentID = segmentation.AddEmptySegment("", str(entry["name"]))
    segment = segmentation.GetSegment(segmentID)
    color = entry.get("color")
    if color is not None:
        segment.SetColor(*[float(c) for c in color[:3]])
    if entry.get("terminology"):
        segment.SetTag(TERMINOLOGY_TAG, str(entry["terminology"]))
    return segmentID


def writeLabelArrayInto(segmentationNode, labelArray, labels, referenceVolumeNode):
    """Write a label array (on the reference volume's grid) into an EXISTING segmentation node: the segment named
    like each entry of ``labels`` gets that label's voxels (its ID, colour and terminology stay); a missing one is
    added as in ``labelArrayToSegmentationNode``. The node's other segments are left as they were, voxel for
    voxel, also where the new voxels cover theirs: each written segment is first moved to a labelmap layer of its
    own (``SeparateSegmentLabelmap``; Slicer's import guards shared layers too, this keeps it so whatever the
    release). Returns the written segment IDs in ``labels`` order.

    The node and the volume may have different parent transforms (linear ones): the voxels land where the
    volume's voxels are in the world. Everything is checked before the node is changed (UserError): the array, the
    names, that the node's segments are edited as binary labelmaps, and that no transform above it is non-linear.

    Example::

        nodeBridge.writeLabelArrayInto(getNode("My segmentation"), prediction, labels, getNode("MRHead"))
    """
    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise UserError("Choose a segmentation to write into.")
    if segmentationNode.GetScene() is None:
        raise UserError(f"Segmentation '{segmentationNode.GetName()}' was removed from the scene.")
    contiguous, _ = _contiguousLabels(labelArray, labels, referenceVolumeNode)
    segmentation = segmentationNode.GetSegmentation()
    binaryName = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    source = segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName") \
        else segmentation.GetMasterRepresentationName()
    if segmentation.GetNumberOfSegments() and source != binaryName:
        raise UserError(f"Segmentation '{segmentationNode.GetName()}' is edited as '{source}', not as a binary "
                        "labelmap; write the result into a new segmentation instead.")
    names = [str(entry["name"]) for entry in labels]
    if len(set(names)) != len(names):
        raise UserError(f"Segment names are repeated: {names}")
    _toWorldMatrix(segmentationNode)  # a warped segmentation is refused before anything changes
    temporary = _TemporaryNodes(segmentationNode.GetScene())
    wasModifying = segmentationNode.StartModify()
    try:
        segmentIDs = [segmentation.GetSegmentIdBySegmentName(name) or _addSegment(segmentation, entry)
                      for name, entry in zip(names, labels)]
        for index, segmentID in enumerate(segmentIDs, start=1):
            segmentation.SeparateSegmentLabelmap(segmentID)
            mask = (contiguous == index).astype(np.uint8)
            _importLabels(mask, segmentationNode, [segmentID], referenceVolumeNode, temporary)
    finally:
        temporary.removeAll()
        segmentationNode.EndModify(wasModifying)
    return segmentIDs


def placeBeside(node, referenceNode):
    """Put ``node`` under the same subject-hierarchy parent (study) as ``referenceNode``."""
    shNode = slicer.mrmlScene.GetSubjectHierarchyNode() if node.GetScene() is slicer.mrmlScene else None
    if shNode is None:
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if shNode is None:
        return
    referenceItem = shNode.GetItemByDataNode(referenceNode)
    parent = shNode.GetItemParent(referenceItem) if referenceItem else shNode.GetSceneItemID()
    item = shNode.GetItemByDataNode(node)
    if item:  # Slicer's subject hierarchy plugins create items for new nodes
        shNode.SetItemParent(item, parent)
    else:
        shNode.CreateItem(parent, node)
