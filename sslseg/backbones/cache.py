"""The backbone cache: ``$SSLSEG_HOME/backbones/<name>/`` (``SSLSEG_HOME`` defaults to ``~/.sslseg``).

A folder holds the checkpoint under its original file name, ``adaptation_plan.json`` when the format has one, and
``backbone.json`` (what it is, where it came from, its sha256). ``backbone.json`` is written last, so a folder
without it is not a finished backbone; downloads and imports stage files as ``.partial-*`` first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from sslseg.errors import UserError

META_FILE = "backbone.json"
PLAN_FILE = "adaptation_plan.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def sslseg_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("SSLSEG_HOME") or os.path.join("~", ".sslseg")))


def backbones_dir() -> str:
    return os.path.join(sslseg_home(), "backbones")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name in (".", ".."):
        raise UserError(f"invalid backbone name {name!r}: use letters, digits, '.', '_' or '-' (at most 100)")
    return name


def entry_dir(name: str) -> str:
    return os.path.join(backbones_dir(), check_name(name))


def read_meta(name: str):
    """``backbone.json`` of a cached backbone, or None when it is not (completely) in the cache."""
    path = os.path.join(entry_dir(name), META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            meta = json.load(stream)
    except (OSError, ValueError):
        return None
    checkpoint = os.path.join(entry_dir(name), meta.get("checkpoint", ""))
    return meta if meta.get("checkpoint") and os.path.isfile(checkpoint) else None


def write_json_atomic(obj, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = os.path.join(os.path.dirname(path), f".partial-{os.getpid()}-{os.path.basename(path)}")
    with open(partial, "w", encoding="utf-8") as stream:
        json.dump(obj, stream, indent=2)
        stream.write("\n")
    os.replace(partial, path)


def write_meta(name: str, meta: dict):
    write_json_atomic(meta, os.path.join(entry_dir(name), META_FILE))


def cached_names() -> list:
    root = backbones_dir()
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if _NAME_PATTERN.match(name) and read_meta(name))


def cached_checkpoint(name: str):
    """Path of the cached checkpoint of ``name`` or None."""
    meta = read_meta(name)
    return os.path.join(entry_dir(name), meta["checkpoint"]) if meta else None


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
