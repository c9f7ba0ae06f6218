"""One way to write a file so that nobody ever sees half of it.

Every writer in the engine (images, ``.seg.nrrd`` files, JSON metadata, checkpoints, packed models, copies) goes
through :func:`atomic_file`: the content is written to a hidden sibling with a name unique to this process and
call, and renamed over the target only when complete (``os.replace`` is atomic on one file system). Whatever goes
wrong - an exception, a full disk, Ctrl-C - the sibling is removed, so no ``.partial`` file is ever left behind and
the target keeps its old content.

Example::

    with atomic_file("out/model.json") as partial:
        write_something(partial)           # any writer that takes a path
    write_json_atomic({"a": 1}, "out/a.json")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil

PARTIAL_PREFIX = ".partial-"
_counter = itertools.count()


def partial_path(path) -> str:
    """A hidden sibling of ``path`` that no other process or call uses (pid and a per-process counter)."""
    path = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(path)
    return os.path.join(directory, f"{PARTIAL_PREFIX}{os.getpid()}-{next(_counter)}-{base}")


@contextlib.contextmanager
def atomic_file(path, make_parent: bool = True):
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on any failure remove it."""
    path = os.path.abspath(os.fspath(path))
    if make_parent:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        remove_quietly(partial)
        raise


def remove_quietly(path) -> None:
    """Remove a file or folder if it exists; never raises (used to clean up after a failure)."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def write_text_atomic(text: str, path) -> str:
    with atomic_file(path) as partial, open(partial, "w", encoding="utf-8") as stream:
        stream.write(text)
    return os.path.abspath(os.fspath(path))


def write_json_atomic(obj, path, indent: int = 2) -> str:
    return write_text_atomic(json.dumps(obj, indent=indent) + "\n", path)


def copy_file_atomic(source, target) -> str:
    """Copy the bytes of ``source`` (a regular file; a symbolic link is refused) to ``target`` atomically."""
    if os.path.islink(source) or not os.path.isfile(source):
        raise OSError(f"{source} is not a regular file")
    with atomic_file(target) as partial:
        shutil.copyfile(source, partial, follow_symlinks=False)
    return os.path.abspath(os.fspath(target))


def torch_save_atomic(obj, path) -> str:
    import torch

    with atomic_file(path) as partial:
        torch.save(obj, partial)
    return os.path.abspath(os.fspath(path))
