"""What every bad-input test checks, in one place (Testing/test_bad_inputs*.py).

A bad input must give a non-zero exit (CLI) or a ``UserError`` (Python API) with a one-line message that names the
problem, leave every input byte-identical, and leave nothing registered or half-written (no ``.partial`` files).

Example::

    with Untouched(tmp_path / "data", tmp_path / "home") as guard:
        result = run_cli("predict", "--model", model, "--input", data, "--output", data)
    assert_refused(result, "output")
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from sslseg.errors import UserError


def tree_digest(*roots) -> dict:
    """{path: sha256 (or 'dir' / 'link -> target')} for every file and folder under ``roots`` (a missing root maps
    to None), without following symbolic links."""
    digest = {}
    for root in roots:
        root = os.fspath(root)
        if not os.path.lexists(root):
            digest[root] = None
            continue
        if os.path.isfile(root) and not os.path.islink(root):
            digest[root] = _file_hash(root)
            continue
        for folder, folders, files in os.walk(root):
            digest[folder] = "dir"
            for name in files + [f for f in folders if os.path.islink(os.path.join(folder, f))]:
                path = os.path.join(folder, name)
                digest[path] = f"link -> {os.readlink(path)}" if os.path.islink(path) else _file_hash(path)
    return digest


def _file_hash(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def partial_files(*roots) -> list:
    """Leftover ``.partial`` files or folders under ``roots``."""
    found = []
    for root in roots:
        for folder, folders, files in os.walk(os.fspath(root)):
            found += [os.path.join(folder, n) for n in files + folders if ".partial" in n]
    return found


class Untouched:
    """Context manager: the trees given are byte-identical on exit, and no ``.partial`` leftovers appear."""

    def __init__(self, *roots):
        self.roots = [os.fspath(r) for r in roots]

    def __enter__(self):
        self.before = tree_digest(*self.roots)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.check()
        return False

    def check(self):
        after = tree_digest(*self.roots)
        changed = sorted(set(self.before) ^ set(after) | {p for p in self.before if self.before[p] != after.get(p)})
        assert not changed, f"inputs changed: {changed[:5]}"
        assert not partial_files(*[r for r in self.roots if os.path.isdir(r)]), "a .partial file was left behind"


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m sslseg ARGS`` in a subprocess (stdin closed), text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sslseg", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=full_env, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, *words):
    """A non-zero exit, no traceback, and one error line on stderr that mentions every word in ``words``."""
    assert result.returncode != 0, f"accepted: {result.stdout[-500:]} {result.stderr[-500:]}"
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, f"expected one error line, got: {result.stderr[-1000:]}"
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    assert "weights_only=False" not in result.stderr and "will likely succeed" not in result.stderr
    return lines[0]


def assert_user_error(call, *words) -> str:
    """``call()`` raises UserError with a one-line message mentioning every word in ``words``."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip(), f"message is not one line: {message!r}"
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert "weights_only=False" not in message and "will likely succeed" not in message
    return message
