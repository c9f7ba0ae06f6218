"""The module's parameters, saved with the scene: a typed parameter node (``@parameterNodeWrapper``) inside Slicer,
built from ``FIELDS`` by ``SSLSegmentationLib.parameterFields``, like SSLSegmentation's. Outside Slicer ``FIELDS``
documents the list, and the ``.ui`` file's ``SlicerParameterName`` properties must name fields from it (checked by
the tests).

Example (Slicer's Python console)::

    parameterNode = slicer.util.getModuleLogic("SSLPretrain").getParameterNode()
    parameterNode.method = "volf"
    parameterNode.inputVolumes
"""

from __future__ import annotations

from SSLSegmentationLib.parameterFields import buildParameterNode

# name, type, default, what it is. Types: Python builtins or MRML node classes (list[...] for node lists).
FIELDS = (
    ("inputVolumes", "list[vtkMRMLScalarVolumeNode]", None, "scene volumes to pretrain on"),
    ("useImageFolder", "bool", False, "pretrain on the images of a folder instead of scene volumes"),
    ("imageFolder", "str", "", "folder of images (searched recursively) or a list file"),
    ("method", "str", "s3d", "s3d | mae | volf"),
    ("architecture", "str", "ResEncL", "ResEncL (paper, GPU) | ResEncS-cpu"),
    ("steps", "int", 10000, "training steps (the paper: 250000)"),
    ("batchSize", "int", 2, "patches per step"),
    ("patchSize", "int", 160, "cubic patch edge in voxels (a multiple of the network's total stride)"),
    ("spacing", "float", 1.0, "isotropic target spacing in mm"),
    ("device", "str", "auto", "auto | cuda | cpu"),
    ("backboneName", "str", "", "name of the new backbone; empty: generated"),
    ("serverProcesses", "int", 8, "GPUs per machine in the server command"),
    ("serverNodes", "int", 1, "machines in the server command"),
)

FIELD_NAMES = tuple(field[0] for field in FIELDS)


SSLPretrainParameterNode = buildParameterNode(
    "SSLPretrainParameterNode", FIELDS, "Parameters of the SSLPretrain module (see FIELDS).")
