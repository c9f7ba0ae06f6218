"""One validation layer for what users hand the engine: command-line and API options, and the metadata files
(``dataset.json``, ``model.json``, ``--label-info``, catalog entries) that come from outside.

Every check raises :class:`sslseg.errors.UserError` with one line that names the option or file and what is wrong,
before any work starts; nothing here allocates in proportion to the value it checks.

Example::

    steps = positive_int("--steps", 300)
    patch = patch_size("--patch", [64, 96, 96])
    meta = read_json_file("dataset.json", "dataset.json", expect=dict)
"""

from __future__ import annotations

import json
import math
import os

from sslseg.errors import UserError

# A patch larger than this many voxels (about 512^3) cannot be trained or predicted on any current GPU; refusing it
# up front avoids allocating tens of GB before failing.
MAX_PATCH_VOXELS = 512 ** 3
MAX_SEED = 2 ** 32 - 1  # numpy's and torch's seed range


def _number(name: str, value, kind):
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number (got {value!r})")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be {'a whole number' if kind is int else 'a number'} (got {value!r})") from None
    if kind is int and isinstance(value, float) and value != number:
        raise UserError(f"{name} must be a whole number (got {value!r})")
    if kind is float and not math.isfinite(number):
        raise UserError(f"{name} must be a finite number (got {value!r})")
    return number


def int_in_range(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    number = _number(name, value, int)
    if minimum is not None and number < minimum:
        raise UserError(f"{name} must be at least {minimum} (got {number})")
    if maximum is not None and number > maximum:
        raise UserError(f"{name} must be at most {maximum} (got {number})")
    return number


def float_in_range(name: str, value, minimum: float | None = None, maximum: float | None = None,
                   strict_minimum: bool = False, strict_maximum: bool = False) -> float:
    number = _number(name, value, float)
    if minimum is not None and (number < minimum or (strict_minimum and number == minimum)):
        raise UserError(f"{name} must be {'greater than' if strict_minimum else 'at least'} {minimum:g} (got {number:g})")
    if maximum is not None and (number > maximum or (strict_maximum and number == maximum)):
        raise UserError(f"{name} must be {'less than' if strict_maximum else 'at most'} {maximum:g} (got {number:g})")
    return number


def positive_int(name: str, value, maximum: int | None = None) -> int:
    return int_in_range(name, value, 1, maximum)


def positive_float(name: str, value) -> float:
    return float_in_range(name, value, 0.0, strict_minimum=True)


def seed(value, name: str = "--seed") -> int:
    return int_in_range(name, value, 0, MAX_SEED)


def one_of(name: str, value, choices) -> str:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(str, choices))} (got {value!r})")
    return value


def patch_size(name: str, values, minimum: int = 1, max_voxels: int = MAX_PATCH_VOXELS) -> list:
    """Three positive voxel counts (z, y, x) whose product stays under ``max_voxels`` (checked with Python integers,
    which never wrap)."""
    if values is None or isinstance(values, (str, bytes)) or len(list(values)) != 3:
        raise UserError(f"{name} takes three sizes in voxels (z y x), got {values!r}")
    patch = [int_in_range(name, v, minimum) for v in values]
    if math.prod(patch) > max_voxels:
        raise UserError(f"{name} {' '.join(map(str, patch))} is too large ({math.prod(patch):,} voxels; at most "
                        f"{max_voxels:,})")
    return patch


def read_json_file(path, what: str | None = None, expect: type | None = None):
    """Parse a JSON file that a user or another program wrote: missing, unreadable, not UTF-8 or not JSON each give
    one line naming the file. ``expect``: the type the top level must have (dict or list)."""
    path = os.fspath(path)
    what = what or path
    try:
        with open(path, "rb") as stream:
            raw = stream.read()
    except OSError as error:
        raise UserError(f"cannot read {what} ({path}): {error.strerror or error}") from None
    return parse_json_bytes(raw, f"{what} ({path})" if what != path else path, expect)


def parse_json_bytes(raw: bytes, where: str, expect: type | None = None):
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{where} must hold a JSON {'object' if expect is dict else 'list'}, "
                        f"not {type(value).__name__}")
    return value


def one_line(message) -> str:
    """A message as one line (newlines and runs of spaces collapsed), as the CLI prints errors."""
    return " ".join(str(message).split())
