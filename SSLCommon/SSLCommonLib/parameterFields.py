"""Typed parameter nodes for the SSLSegmentation and SSLPretrain modules: Slicer's ``@parameterNodeWrapper`` with its
validators (``Choice``, ``WithinRange``, ``Default``; see the Slicer developer guide, "Parameter nodes"), imported
from ``slicer.parameterNodeWrapper`` inside Slicer.

Where Slicer's wrapper is absent (the PyPI ``slicer-core`` libraries, used by the tests) this module provides a
plain-Python stand-in with the same names and the same meaning for the annotations the modules use: a decorated
class reads its annotations (``int``, ``float``, ``str``, ``bool``, MRML node classes, ``list[...]`` of those,
``typing.Optional[...]``, ``typing.Annotated[..., validators]``), values are checked when set (``ValueError`` from a
validator, ``TypeError`` for a wrong type) and stored in the wrapped ``vtkMRMLScriptedModuleNode`` (scalars as JSON
parameters, nodes as node references), so they are saved with the scene. It has no GUI connection (no Qt there).

Example (Slicer's Python console or a test on slicer-core)::

    from typing import Annotated, Optional
    from SSLCommonLib.parameterFields import Choice, Default, WithinRange, parameterNodeWrapper

    @parameterNodeWrapper
    class MyParameterNode:
        steps: Annotated[int, WithinRange(1, 1000)] = 10
        preset: Optional[Annotated[str, Choice(["quick", "cpu"])]] = None     # None: chosen by device
        device: Annotated[str, Choice(["auto", "cpu"]), Default("auto")]

    parameters = MyParameterNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    parameters.steps = 0        # ValueError
"""

from __future__ import annotations

import json
import typing

try:
    from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper  # noqa: F401
    IN_SLICER = True
except ImportError:
    IN_SLICER = False

_IMPLICIT_DEFAULTS = {int: 0, float: 0.0, str: "", bool: False}


if not IN_SLICER:
    class Choice:
        """The value must be one of ``choices``."""

        def __init__(self, choices):
            self.choices = choices

        def validate(self, value):
            if value not in self.choices:
                raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")

    class WithinRange:
        """The value must lie in [minimum, maximum]."""

        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value):
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")

    class Default:
        """The value a parameter has until it is set."""

        def __init__(self, value=None):
            self.value = value

    def parameterNodeWrapper(cls):
        """The stand-in decorator: ``cls`` with one checked property per annotation (see the module docstring)."""
        hints = typing.get_type_hints(cls, include_extras=True)
        parameters = {name: _Parameter(name, hint, cls.__dict__.get(name, _UNSET)) for name, hint in hints.items()}
        namespace = {"__doc__": cls.__doc__, "__init__": _init, "allParameters": parameters, **parameters}
        wrapped = type(cls.__name__, (), namespace)
        wrapped.__annotations__ = dict(cls.__annotations__)
        return wrapped


_UNSET = object()


def _init(self, parameterNode):
    self.parameterNode = parameterNode


def splitAnnotation(hint):
    """``(baseType, optional, validators, default)`` of an annotation such as
    ``Optional[Annotated[int, WithinRange(0, 50)]]``; ``default`` is ``_UNSET`` without a ``Default``."""
    optional = False
    if typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional, hint = len(members) < len(typing.get_args(hint)), members[0]
    extras = []
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
    validators = [extra for extra in extras if hasattr(extra, "validate")]
    defaults = [extra.value for extra in extras if isinstance(extra, Default)]
    return hint, optional, validators, defaults[0] if defaults else _UNSET


def _isNodeClass(kind):
    return isinstance(kind, type) and kind.__name__.startswith("vtkMRML")


class _Parameter:
    """One typed property of a stand-in parameter node class."""

    def __init__(self, name, hint, assigned):
        self.name = name
        self.kind, self.optional, self.validators, default = splitAnnotation(hint)
        self.isList = typing.get_origin(self.kind) is list
        self.itemKind = typing.get_args(self.kind)[0] if self.isList else self.kind
        if assigned is not _UNSET:
            default = assigned
        if default is _UNSET:
            default = None if self.optional or _isNodeClass(self.kind) else [] if self.isList else \
                _IMPLICIT_DEFAULTS[self.kind]
        self.default = default

    def check(self, value):
        if value is None and (self.optional or _isNodeClass(self.kind)):
            return
        for item in (value if self.isList else [value]):
            self._checkType(item)
        for validator in self.validators:
            validator.validate(value)

    def _checkType(self, item):
        kind = self.itemKind
        if _isNodeClass(kind):
            if item is not None and not (hasattr(item, "IsA") and item.IsA(kind.__name__)):
                raise TypeError(f"{self.name}: expected a {kind.__name__}, got {type(item).__name__}")
        elif not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            if not (kind is float and isinstance(item, int) and not isinstance(item, bool)):
                raise TypeError(f"{self.name}: expected {kind.__name__}, got {type(item).__name__} {item!r:.40}")

    def __get__(self, wrapper, owner=None):
        if wrapper is None:
            return self
        node = wrapper.parameterNode
        if _isNodeClass(self.itemKind):
            if self.isList:
                return [node.GetNthNodeReference(self.name, i) for i in range(node.GetNumberOfNodeReferences(
                    self.name))] if node.GetAttribute(f"{self.name}.set") else list(self.default)
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        return json.loads(text) if text else self.default

    def __set__(self, wrapper, value):
        self.check(value)
        node = wrapper.parameterNode
        if _isNodeClass(self.itemKind):
            node.RemoveNodeReferenceIDs(self.name)
            for item in (value if self.isList else [value]):
                if item is not None:
                    node.AddNodeReferenceID(self.name, item.GetID())
            if self.isList:
                node.SetAttribute(f"{self.name}.set", "1")
            return
        node.SetParameter(self.name, json.dumps(float(value) if self.kind is float and value is not None else value))
