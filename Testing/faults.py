"""Helpers for the fault-injection tests (test_faults_*.py): real faults around real runs.

- a full disk: a small tmpfs mounted for the test (needs root and a kernel that lets this container mount), or a
  file-size limit (``RLIMIT_FSIZE``) on the child process, where a write past it fails with EFBIG (Python ignores
  SIGXFSZ); ``FullDisk`` gives either, the tests run with both where both work;
- kills: ``kill_when`` starts a real ``sslseg`` process and sends SIGKILL once a condition holds (a checkpoint on
  disk, N outputs written) plus a random delay;
- what is left on disk: ``whole_images`` reads every image back completely; ``tree_digest`` (bad_inputs) hashes
  the inputs before and after.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from bad_inputs import partial_files, tree_digest  # noqa: F401 - re-exported for the fault tests

ENV = {"SSLSEG_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
FINETUNE = ("--preset", "test", "--device", "cpu", "--seed", "3", "--progress", "none")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Every fault test (and the processes it starts) has its own SSLSEG_HOME: never the user's backbone cache."""
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "sslseg-home"))


@pytest.fixture(scope="module")
def dataset(hippocampus_dir, tmp_path_factory):
    """Six real hippocampus cases copied for the module (the shared data are never touched)."""
    from conftest import copy_dataset_subset

    root = tmp_path_factory.mktemp("faults_data")
    copy_dataset_subset(hippocampus_dir, root, 6)
    return str(root)


@pytest.fixture(scope="module")
def model(dataset, tmp_path_factory):
    """A real (tiny, 6-step) fine-tuned model folder."""
    out = tmp_path_factory.mktemp("faults_model") / "model"
    result = run("finetune", "--data", dataset, "--out", out, "--steps", 6, "--val-cases", 0, *FINETUNE)
    assert result.returncode == 0, result.stderr
    return str(out)


def sslseg_command(*args) -> list:
    return [sys.executable, "-m", "sslseg", *map(str, args)]


def _limit_file_size(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run(*args, file_size_limit=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """``python -m sslseg ARGS`` to the end; ``file_size_limit``: no file of the child may grow past it (bytes)."""
    return subprocess.run(sslseg_command(*args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **ENV, **(env or {})}, timeout=timeout,
                          preexec_fn=None if file_size_limit is None else _limit_file_size(file_size_limit))


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(sslseg_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, **ENV, **(env or {})})


def wait_for(condition, process=None, timeout=240.0, what="the condition"):
    """Poll ``condition()`` until true; fails when ``process`` ends first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}: {err[-1500:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_when(process: subprocess.Popen, condition, rng: random.Random, max_delay: float, what: str) -> bool:
    """SIGKILL ``process`` a random time (up to ``max_delay`` s) after ``condition()`` holds. Returns whether the
    kill came before the process ended by itself."""
    wait_for(condition, process, what=what)
    time.sleep(rng.uniform(0.0, max_delay))
    finished = process.poll() is not None
    process.kill()
    process.communicate(timeout=60)
    return not finished


def one_error_line(result: subprocess.CompletedProcess, *words) -> str:
    """The run failed with exit 1, no traceback, and exactly one error line on stderr naming every word."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-1500:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr[-1500:]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


def whole_images(folder) -> dict:
    """{file name: array} for every image file in ``folder``, each read back completely (a truncated file fails)."""
    import SimpleITK as sitk

    images = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith((".nii.gz", ".nrrd", ".nii")):
            path = os.path.join(folder, name)
            assert os.path.getsize(path) > 0, f"{path} is empty"
            images[name] = sitk.GetArrayFromImage(sitk.ReadImage(path))
    return images


class FullDisk:
    """A place where writes fail for want of space: ``mode`` "tmpfs" (a small tmpfs at ``root``, filled up to
    ``leave`` bytes by ``fill``) or "fsize" (an ordinary folder; the child's files may not grow past ``limit``)."""

    def __init__(self, mode: str, root, size: str = "8m", limit: int = 1000):
        self.mode, self.root, self.limit = mode, os.fspath(root), limit
        self.cause = "No space left on device" if mode == "tmpfs" else "File too large"
        os.makedirs(self.root, exist_ok=True)
        if mode == "tmpfs":
            reason = mount_tmpfs(self.root, size)
            if reason:
                pytest.skip(f"cannot mount a tmpfs for a full disk ({reason}); the file-size-limit variant of this "
                            "test still runs")

    @property
    def file_size_limit(self):
        return self.limit if self.mode == "fsize" else None

    def fill(self, leave: int = 0) -> None:
        """tmpfs: take all the free space but ``leave`` bytes (a no-op for "fsize")."""
        if self.mode != "tmpfs":
            return
        filler = os.path.join(self.root, "filler")
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(descriptor, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(descriptor)
        if leave:
            os.truncate(filler, max(0, os.path.getsize(filler) - leave))

    def close(self):
        if self.mode == "tmpfs":
            subprocess.run(["umount", "-l", self.root], capture_output=True)


def mount_tmpfs(path, size: str):
    """Mount a tmpfs of ``size`` at ``path``; returns None, or why it cannot be done."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if os.geteuid() != 0:
        return "not root"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", os.fspath(path)],
                            capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stderr.strip() or f"mount exited {result.returncode}")


@pytest.fixture(params=["tmpfs", "fsize"])
def full_disk(request, tmp_path):
    disk = FullDisk(request.param, tmp_path / "disk")
    yield disk
    disk.close()
