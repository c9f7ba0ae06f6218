"""Fault injection: a full disk (a small tmpfs, and a file-size limit) and a read-only disk under real ``sslseg``
runs. Every failed write ends the command with exit 1 and one line naming the path and the cause; no partial or
empty file is left; a model already at --out and an earlier checkpoint stay byte-identical; the inputs too."""

import os
import shutil
import subprocess

import pytest

from faults import (FINETUNE, FullDisk, dataset, full_disk, kill_when, model, mount_tmpfs,  # noqa: F401
                    one_error_line, partial_files, private_home, run, start, tree_digest)


def _no_empty_files(root):
    for folder, _, files in os.walk(root):
        for name in files:
            assert os.path.getsize(os.path.join(folder, name)) > 0 or name.endswith(".lock"), name


def test_predict_on_a_full_disk_fails_with_one_line_and_no_file(full_disk, dataset, model):
    """The issue's silent data loss: SimpleITK leaves an empty or truncated .nii.gz without an error; the write is
    checked, so the run fails naming the file and leaves nothing."""
    out = os.path.join(full_disk.root, "segs")
    inputs = tree_digest(dataset, model)
    full_disk.fill()
    result = run("predict", "--model", model, "--input", os.path.join(dataset, "imagesTr"), "--output", out,
                 "--seg-nrrd", "--device", "cpu", "--progress", "none", file_size_limit=full_disk.file_size_limit)
    line = one_error_line(result, full_disk.cause, out)
    assert ".partial" not in line
    assert not [n for n in os.listdir(out) if not n.startswith(".")] if os.path.isdir(out) else True
    assert not partial_files(full_disk.root) and "done" not in result.stdout
    _no_empty_files(full_disk.root)
    assert tree_digest(dataset, model) == inputs


def test_finetune_on_a_full_disk_keeps_the_model_already_at_out(full_disk, dataset, model):
    """torch.save's RuntimeError (inline_container.cc) on a full disk becomes one line; the model that was at
    --out is untouched."""
    out = os.path.join(full_disk.root, "model")
    shutil.copytree(model, out)
    before = tree_digest(out)
    inputs = tree_digest(dataset)
    full_disk.fill()
    limit = None if full_disk.file_size_limit is None else 100_000  # model.pt is about 1 MB
    result = run("finetune", "--data", dataset, "--out", out, "--steps", 3, "--val-cases", 0,
                 "--checkpoint-every", 0, *FINETUNE, file_size_limit=limit)
    one_error_line(result, full_disk.cause, out)
    assert "inline_container" not in result.stderr
    assert tree_digest(out) == before and not partial_files(full_disk.root)
    assert tree_digest(dataset) == inputs


def test_checkpoint_on_a_full_disk_keeps_the_earlier_checkpoint(full_disk, dataset, tmp_path):
    """A run killed after a checkpoint, resumed on a disk that has since filled up: the new checkpoint cannot be
    written; one line, and the earlier checkpoint is byte-identical (and still resumable)."""
    import random

    out = os.path.join(full_disk.root, "model")
    checkpoint = os.path.join(full_disk.root, ".model.resume.pth")
    options = ("--data", dataset, "--out", out, "--steps", 400, "--val-cases", 0, "--checkpoint-every", 0.3,
               *FINETUNE)
    process = start("finetune", *options)
    assert kill_when(process, lambda: os.path.exists(checkpoint), random.Random(5), 0.0, "a checkpoint")
    for name in os.listdir(full_disk.root):  # a checkpoint the kill interrupted: the next run removes it
        if name.startswith(".partial-"):
            os.remove(os.path.join(full_disk.root, name))
    before = tree_digest(checkpoint)
    full_disk.fill()
    limit = None if full_disk.file_size_limit is None else os.path.getsize(checkpoint) // 2
    result = run("finetune", *options, "--resume", file_size_limit=limit)
    one_error_line(result, full_disk.cause, ".model.resume.pth")
    assert tree_digest(checkpoint) == before and not os.path.exists(out) and not partial_files(full_disk.root)


def test_pretrain_checkpoint_on_a_full_disk_fails_with_one_line(full_disk, dataset):
    out = os.path.join(full_disk.root, "pretrain")
    full_disk.fill(leave=64 * 1024)  # room for the small files, not for a checkpoint
    result = run("pretrain", "--method", "s3d", "--images", os.path.join(dataset, "imagesTr"), "--out", out,
                 "--arch", "ResEncT-test", "--steps", 4, "--batch", 1, "--patch", 16, "--device", "cpu",
                 "--save-every", 2, "--progress", "none", file_size_limit=full_disk.file_size_limit and 200_000)
    one_error_line(result, full_disk.cause)
    assert "inline_container" not in result.stderr
    assert not partial_files(full_disk.root) and not os.path.exists(os.path.join(out, "checkpoint_final.pth"))


def test_predict_into_a_read_only_disk_fails_with_one_line(dataset, model, tmp_path):
    root = tmp_path / "readonly"
    root.mkdir()
    reason = mount_tmpfs(root, "1m")
    if reason:
        pytest.skip(f"cannot mount a tmpfs to make read-only ({reason})")
    try:
        (root / "segs").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        result = run("predict", "--model", model, "--input", os.path.join(dataset, "imagesTr"), "--output",
                     root / "segs", "--device", "cpu", "--progress", "none")
        one_error_line(result, "Read-only file system")
        assert os.listdir(root / "segs") == []
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def test_import_on_a_full_disk_registers_nothing(tmp_path, monkeypatch):
    """``sslseg models import`` into a cache that cannot hold the copy: one line, nothing registered."""
    import torch

    from test_backbones_support import adaptation_plan, resenc_state, write_nnssl

    source = tmp_path / "run"
    write_nnssl(str(source), resenc_state(), adaptation_plan(), plan_file=True)
    checkpoint = [p for p in source.iterdir() if p.suffix == ".pth"][0]
    home = tmp_path / "home"
    limit = os.path.getsize(checkpoint) // 2
    result = run("models", "import", checkpoint, "--name", "my-backbone",
                 file_size_limit=limit, env={"SSLSEG_HOME": str(home)})
    one_error_line(result, "File too large", "my-backbone")
    assert not partial_files(home)
    assert not os.path.exists(home / "backbones" / "my-backbone" / "backbone.json")
    assert torch.load(checkpoint, weights_only=False) is not None  # the source is untouched and still loads
