"""The module's parameters, saved with the scene: a typed parameter node (``@parameterNodeWrapper``) inside Slicer.

``FIELDS`` is the single description: inside Slicer the wrapper class is built from it (``parameterFields``);
elsewhere (tests, plain Python) ``SSLSegmentationParameterNode`` is None and ``FIELDS`` documents the same list,
and the ``.ui`` file's ``SlicerParameterName`` properties must name fields from it (checked by the tests). Settings
that belong to the user rather than the scene (models folder, engine home) live in Slicer's settings instead (see
``settings``).

Example (Slicer's Python console)::

    parameterNode = slicer.util.getModuleLogic("SSLSegmentation").getParameterNode()
    parameterNode.preset = "cpu"
    parameterNode.trainingVolumes, parameterNode.trainingSegmentations
"""

from __future__ import annotations

from .parameterFields import buildParameterNode

# name, type, default, what it is. Types: Python builtins or MRML node classes (list[...] for node lists).
FIELDS = (
    ("backbone", "str", "ResEncL-OpenMind-S3D", "backbone name, checkpoint path, or 'none' (from scratch)"),
    ("trainingVolumes", "list[vtkMRMLScalarVolumeNode]", None, "volumes of the training pairs"),
    ("trainingSegmentations", "list[vtkMRMLSegmentationNode]", None, "segmentations of the training pairs"),
    ("segmentNames", "str", "", "segments to learn, comma-separated; empty: all segments of the first pair"),
    ("validationPercent", "int", -1, "share of pairs held out for validation in %; -1: the engine's default"),
    ("preset", "str", "quick", "quick | standard | paper (GPU), cpu (the panel picks cpu without a GPU)"),
    ("device", "str", "auto", "auto | cuda | cpu"),
    ("modelName", "str", "", "name of the new model; empty: generated"),
    ("continueFromModel", "bool", False, "continue training from the selected model"),
    ("inputVolume", "vtkMRMLScalarVolumeNode", None, "volume to segment"),
    ("model", "str", "", "model (name in the models folder) used to segment"),
    ("tta", "bool", False, "test-time mirroring (8x slower on CPU)"),
    ("outputSegmentation", "vtkMRMLSegmentationNode", None, "the last segmentation result"),
)

FIELD_NAMES = tuple(field[0] for field in FIELDS)


SSLSegmentationParameterNode = buildParameterNode(
    "SSLSegmentationParameterNode", FIELDS, "Parameters of the SSLSegmentation module (see FIELDS).")
