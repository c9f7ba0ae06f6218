"""Typed parameter nodes built from a table of fields, shared by the SSLSegmentation and SSLPretrain modules.

A module describes its parameters once, as ``FIELDS``: ``(name, type, default, description)`` tuples whose types are
Python builtins (``"str"``, ``"int"``, ``"float"``, ``"bool"``) or MRML node classes (``"vtkMRMLScalarVolumeNode"``,
``"list[vtkMRMLSegmentationNode]"``). Inside Slicer :func:`buildParameterNode` turns the table into a
``@parameterNodeWrapper`` class (Slicer's typed parameter nodes, see the Slicer developer guide, "Parameter
nodes"); elsewhere the table still documents the parameters, and tests check the ``.ui`` bindings against it.

Example (Slicer's Python console)::

    from SSLSegmentationLib.parameterFields import annotationFor, buildParameterNode
    annotationFor("list[vtkMRMLScalarVolumeNode]")     # list[slicer.vtkMRMLScalarVolumeNode]
    MyParameterNode = buildParameterNode("MyParameterNode", (("steps", "int", 10, "training steps"),))
"""

from __future__ import annotations

BUILTIN_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def annotationFor(typeName):
    """The Python type of a field type name (MRML classes from ``slicer``)."""
    if typeName.startswith("list["):
        return list[annotationFor(typeName[5:-1])]
    if typeName.startswith("vtkMRML"):
        import slicer

        return getattr(slicer, typeName)
    return BUILTIN_TYPES[typeName]


def buildParameterNode(className, fields, doc=None):
    """A ``@parameterNodeWrapper`` class with one annotated attribute per field (with its default), or None
    outside Slicer (slicer-core has no ``slicer.parameterNodeWrapper``)."""
    try:
        from slicer.parameterNodeWrapper import parameterNodeWrapper
    except ImportError:
        return None
    namespace = {"__annotations__": {}, "__doc__": doc or f"Parameters ({className})."}
    for name, typeName, default, _ in fields:
        namespace["__annotations__"][name] = annotationFor(typeName)
        if default is not None:
            namespace[name] = default
    return parameterNodeWrapper(type(className, (), namespace))
