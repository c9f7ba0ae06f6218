"""The module's parameters, saved with the scene: a typed parameter node (``@parameterNodeWrapper``) inside Slicer.

``FIELDS`` is the single description: inside Slicer the wrapper class is built from it; elsewhere (tests, plain
Python) ``FIELDS`` documents the same list, and the ``.ui`` file's ``SlicerParameterName`` properties must name
fields from it (checked by the tests). Settings that belong to the user rather than the scene (models folder,
engine home) live in Slicer's settings instead (see ``modelStore``).

Example (Slicer's Python console)::

    parameterNode = slicer.util.getModuleLogic("SSLSegmentation").getParameterNode()
    parameterNode.preset = "cpu"
    parameterNode.trainingVolumes, parameterNode.trainingSegmentations
"""

from __future__ import annotations

# name, type, default, what it is. Types: Python builtins or MRML node classes (list[...] for node lists).
FIELDS = (
    ("backbone", "str", "ResEncL-OpenMind-S3D", "backbone name, checkpoint path, or 'none' (from scratch)"),
    ("trainingVolumes", "list[vtkMRMLScalarVolumeNode]", None, "volumes of the training pairs"),
    ("trainingSegmentations", "list[vtkMRMLSegmentationNode]", None, "segmentations of the training pairs"),
    ("segmentNames", "str", "", "segments to learn, comma-separated; empty: all segments of the first pair"),
    ("validationPercent", "int", -1, "share of pairs held out for validation in %; -1: the engine's default"),
    ("preset", "str", "quick", "quick | standard | paper (GPU), cpu"),
    ("device", "str", "auto", "auto | cuda | cpu"),
    ("modelName", "str", "", "name of the new model; empty: generated"),
    ("continueFromModel", "bool", False, "continue training from the selected model"),
    ("inputVolume", "vtkMRMLScalarVolumeNode", None, "volume to segment"),
    ("model", "str", "", "model (name in the models folder) used to segment"),
    ("tta", "bool", False, "test-time mirroring (8x slower on CPU)"),
    ("outputSegmentation", "vtkMRMLSegmentationNode", None, "the last segmentation result"),
)

FIELD_NAMES = tuple(field[0] for field in FIELDS)


def _annotation(typeName):
    import slicer

    if typeName.startswith("list["):
        return list[_annotation(typeName[5:-1])]
    if typeName.startswith("vtkMRML"):
        return getattr(slicer, typeName)
    return {"str": str, "int": int, "float": float, "bool": bool}[typeName]


def _buildWrapper():
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    namespace = {"__annotations__": {}, "__doc__": "Parameters of the SSLSegmentation module (see FIELDS)."}
    for name, typeName, default, _ in FIELDS:
        namespace["__annotations__"][name] = _annotation(typeName)
        if default is not None:
            namespace[name] = default
    return parameterNodeWrapper(type("SSLSegmentationParameterNode", (), namespace))


try:
    SSLSegmentationParameterNode = _buildWrapper()
except (ImportError, AttributeError):
    # Outside Slicer (slicer-core has no parameterNodeWrapper): FIELDS still describes the parameters.
    SSLSegmentationParameterNode = None
