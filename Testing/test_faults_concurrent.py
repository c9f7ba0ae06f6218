"""Fault injection: two real ``sslseg`` processes at once on the same output, and memory running out.

One fine-tune or prediction writes an output at a time: a second one is refused at once with one line naming the
first one's process, and the first finishes with a whole result. The lock is ``flock`` on ``.<name>.lock``
beside the output, so a holder killed with SIGKILL never blocks the next run. (Two downloads of one backbone:
test_backbones_download.py::test_concurrent_downloads_of_one_backbone; a killed download: below.)
"""

import os
import random
import sys
import threading

from faults import (FINETUNE, dataset, kill_when, model, partial_files, private_home, run, start,  # noqa: F401
                    tree_digest, wait_for)
from test_backbones_download import _publish, server  # noqa: F401 - the local HTTP server fixture


def _holds_lock(lock, process):
    """The lock file names ``process`` (it holds the lock)."""
    def check():
        try:
            with open(lock, encoding="ascii") as stream:
                return stream.read().strip() == str(process.pid)
        except OSError:
            return False
    return check


def test_two_finetunes_on_one_out(dataset, tmp_path):
    out = tmp_path / "model"
    options = ("finetune", "--data", dataset, "--out", out, "--steps", 15, "--val-cases", 0, *FINETUNE)
    inputs = tree_digest(dataset)
    first = start(*options)
    try:
        wait_for(_holds_lock(tmp_path / ".model.lock", first), first, what="the first run's lock")
        second = run(*options)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"another sslseg run (process {first.pid}) is writing --out {out}" in second.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert sorted(os.listdir(out)) == ["model.json", "model.pt"]
    assert sorted(os.listdir(tmp_path)) == ["model"] and tree_digest(dataset) == inputs


def test_two_predictions_into_one_folder(dataset, model, tmp_path):
    out = tmp_path / "segs"
    options = ("predict", "--model", model, "--input", os.path.join(dataset, "imagesTr"), "--output", out,
               "--device", "cpu", "--progress", "none")
    first = start(*options)
    try:
        wait_for(_holds_lock(out / ".sslseg.lock", first), first, what="the first run's lock")
        second = run(*options)
        assert second.returncode == 2 and f"another sslseg run (process {first.pid})" in second.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len(os.listdir(out)) == 6 and not partial_files(tmp_path)


def test_the_lock_of_a_killed_run_does_not_block_the_next(dataset, tmp_path):
    out = tmp_path / "model"
    options = ("finetune", "--data", dataset, "--out", out, "--steps", 400, "--val-cases", 0, *FINETUNE)
    first = start(*options)
    kill_when(first, _holds_lock(tmp_path / ".model.lock", first), random.Random(1), 0.5, "the lock")
    assert (tmp_path / ".model.lock").exists()  # left behind by the kill, but no longer held
    result = run(*options[:8], 3, *options[9:])
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_killed_download_releases_its_lock_and_resumes(server, tmp_path, monkeypatch):
    """kill -9 in the middle of a download: nothing is registered, the next download is not blocked by the lock
    and resumes the partial file (HTTP Range)."""
    from sslseg.backbones import cache

    name = "ResEncL-OpenMind-VF"  # no published sha256: _publish serves its own file
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))  # never the user's cache
    checkpoint = _publish(server, name, tmp_path)
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    release = threading.Event()
    server.hold[f"/mirror/{name}/checkpoint_final.pth"] = (len(checkpoint) // 2, release)
    first = start("models", "download", name, "--progress", "none")
    partial = os.path.join(cache.entry_dir(name), ".partial-checkpoint_final.pth")
    try:
        kill_when(first, lambda: os.path.exists(partial) and os.path.getsize(partial) >= len(checkpoint) // 2,
                  random.Random(2), 0.2, "half the download")
    finally:
        release.set()
    assert cache.read_meta(name) is None
    result = run("models", "download", name, "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert open(cache.cached_checkpoint(name), "rb").read() == checkpoint
    assert any(r == f"bytes={len(checkpoint) // 2}-" for _, r in server.requests if r)
    assert not partial_files(cache.sslseg_home())


def test_memory_running_out_is_one_line_naming_the_options(dataset, tmp_path):
    """A real allocation failure (an address-space limit far below what the asked-for batch and patch need):
    one line naming --batch-size and --patch, exit 1, nothing written."""
    out = tmp_path / "model"
    script = ("import resource, sys, torch, sslseg.cli, sslseg.finetuning.trainer\n"
              "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
              "resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))\n"
              "sys.exit(sslseg.cli.main(sys.argv[1:]))\n")
    import subprocess

    args = [str(a) for a in ("finetune", "--data", dataset, "--out", out, "--steps", 2, "--val-cases", 0,
                             "--batch-size", 16, "--patch", 96, 96, 96, *FINETUNE)]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            env={**os.environ, "SSLSEG_THREADS": "1"}, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "out of memory" in lines[0] and "--batch-size" in lines[0] and "--patch" in lines[0]
    assert not out.exists() and not partial_files(tmp_path)
