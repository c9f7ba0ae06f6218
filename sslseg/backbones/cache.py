"""The backbone cache: ``$SSLSEG_HOME/backbones/<name>/`` (``SSLSEG_HOME`` defaults to ``~/.sslseg``).

A folder holds the checkpoint under its original file name, ``adaptation_plan.json`` when the format has one, and
``backbone.json`` (what it is, where it came from, its sha256). ``backbone.json`` is written last, so a folder
without it is not a finished backbone. Downloads stage files as ``.partial-*`` in the folder; imports stage a whole
new folder beside it and swap it in. One download or import of a name runs at a time: it holds the lock file
``backbones/.<name>.lock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows).

Example::

    from sslseg.backbones import cache
    with cache.exclusive("my-s3d"):
        ...                                   # nobody else downloads or imports my-s3d meanwhile
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re

from sslseg.atomic import exclusive_lock, partial_path, remove_quietly, write_json_atomic
from sslseg.errors import UserError
from sslseg.validation import read_json_file

META_FILE = "backbone.json"
PLAN_FILE = "adaptation_plan.json"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def sslseg_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("SSLSEG_HOME") or os.path.join("~", ".sslseg")))


def backbones_dir() -> str:
    return os.path.join(sslseg_home(), "backbones")


def is_valid_name(name) -> bool:
    return isinstance(name, str) and bool(_NAME_PATTERN.fullmatch(name))


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise UserError(f"invalid backbone name {name!r}: use letters, digits, '.', '_' or '-' (at most 100, "
                        "starting with a letter or digit)")
    return name


def entry_dir(name: str) -> str:
    return os.path.join(backbones_dir(), check_name(name))


def read_meta(name: str):
    """``backbone.json`` of a cached backbone, or None when it is not (completely, readably) in the cache."""
    path = os.path.join(entry_dir(name), META_FILE)
    if not os.path.isfile(path):
        return None
    try:
        meta = read_json_file(path, META_FILE, expect=dict)
    except UserError:
        return None
    checkpoint = meta.get("checkpoint")
    # a plain file name inside the folder: a garbled or hostile backbone.json must not point elsewhere
    if not isinstance(checkpoint, str) or not checkpoint or os.path.basename(checkpoint) != checkpoint \
            or checkpoint in (".", ".."):
        return None
    return meta if os.path.isfile(os.path.join(entry_dir(name), checkpoint)) else None


def write_meta(name: str, meta: dict):
    write_json_atomic(meta, os.path.join(entry_dir(name), META_FILE))


def cached_names() -> list:
    root = backbones_dir()
    if not os.path.isdir(root):
        return []
    return sorted(name for name in os.listdir(root) if is_valid_name(name) and read_meta(name))


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


def staging_dir(name: str) -> str:
    """A new, private folder beside ``<name>/`` to assemble a backbone in (removed by the caller on failure)."""
    folder = partial_path(entry_dir(name))
    os.makedirs(folder)
    return folder


def install(name: str, staged: str):
    """Put the finished folder ``staged`` in place of ``<name>/``. The old folder is moved aside first and put
    back if the swap fails, so a registration is either the old one or the new one."""
    target = entry_dir(name)
    if not os.path.lexists(target):
        os.rename(staged, target)
        return
    old = partial_path(target)
    os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old, target)
        raise
    remove_quietly(old)


def remove_if_empty(name: str):
    """Remove ``<name>/`` when a failed download left it empty (nothing to resume, nothing registered)."""
    with contextlib.suppress(OSError):
        os.rmdir(entry_dir(name))


@contextlib.contextmanager
def exclusive(name: str):
    """Hold the lock of backbone ``name`` for a download or import; UserError at once when another process (or
    thread) holds it (``sslseg.atomic.exclusive_lock``: a killed holder releases it)."""
    check_name(name)

    def refuse(owner):
        holder = f" (process {owner})" if owner else ""
        return UserError(f"another download or import of {name} is in progress{holder}; wait for it to finish (or "
                         "stop it) and try again")

    with exclusive_lock(os.path.join(backbones_dir(), f".{name}.lock"), refuse):
        yield
