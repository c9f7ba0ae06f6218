"""Fault injection: real ``sslseg`` processes killed with SIGKILL at random points (fine-tune, predict, pretrain), then
what is left on disk checked, the inputs hashed before and after, and the run resumed or continued.

Random points come from a seeded generator (``SSLSEG_FAULT_SEED``, default 22) so that a failure can be replayed.
"""

import json
import os
import random
import shutil

import pytest
import torch

from faults import (FINETUNE, dataset, kill_when, model, partial_files, private_home, run, start,  # noqa: F401
                    tree_digest, whole_images)

SEED = int(os.environ.get("SSLSEG_FAULT_SEED", "22"))


def _weights(folder):
    return torch.load(os.path.join(folder, "model.pt"), weights_only=True)


def _meta(folder):
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as stream:
        return json.load(stream)


def test_finetune_killed_after_a_checkpoint_resumes_to_the_same_model(dataset, tmp_path):
    """kill -9 at a random point after the first checkpoint; ``--resume`` ends with the uninterrupted run's step
    count, schedule, validation history and (CPU, fixed seed) bit-identical weights; nothing else is left."""
    rng = random.Random(SEED)
    options = ("--data", dataset, "--steps", 24, "--val-cases", 2, "--checkpoint-every", 0.3, *FINETUNE)
    inputs = tree_digest(dataset)
    reference = run("finetune", "--out", tmp_path / "reference", *options)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "interrupted"
    checkpoint = tmp_path / ".interrupted.resume.pth"
    process = start("finetune", "--out", out, *options)
    assert kill_when(process, checkpoint.exists, rng, 1.0, "the first checkpoint"), "finished before the kill"
    assert not out.exists(), "a killed run left something at --out"
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["step"] < 24

    resumed = run("finetune", "--out", out, "--resume", *options[:-2], "--progress", "json")
    assert resumed.returncode == 0, resumed.stderr
    logs = [json.loads(line).get("message", "") for line in resumed.stdout.splitlines()]
    assert any(message.startswith("resumed at step ") for message in logs), logs
    a, b = _weights(tmp_path / "reference"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _meta(tmp_path / "reference"), _meta(out)
    assert mb["recipe"]["steps_run"] == ma["recipe"]["steps_run"] == 24
    assert mb["recipe"]["schedule"] == ma["recipe"]["schedule"]
    assert mb["validation"]["kept_step"] == ma["validation"]["kept_step"]
    drop = [{k: v for k, v in h.items() if k != "seconds"} for h in ma["validation"]["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in mb["validation"]["history"]] == drop
    assert not checkpoint.exists() and not partial_files(tmp_path) and not (tmp_path / ".interrupted.lock").exists()
    assert tree_digest(dataset) == inputs


@pytest.mark.parametrize("kills", [2])
def test_finetune_killed_at_random_points_leaves_nothing_and_reruns(dataset, tmp_path, kills):
    """kill -9 at random points (reading data, training, saving): never a partial model at --out; beside it at most
    one checkpoint, one lock file and the one half-written file of the last kill (each next run removes the
    previous one's); the same command then succeeds and leaves nothing hidden behind."""
    rng = random.Random(SEED + 1)
    out = tmp_path / "model"
    options = ("--data", dataset, "--out", out, "--steps", 12, "--val-cases", 0, "--checkpoint-every", 0.2,
               *FINETUNE)
    inputs = tree_digest(dataset)
    for _ in range(kills):
        process = start("finetune", *options)
        kill_when(process, lambda: True, rng, 6.0, "the start")
        assert not out.exists() or sorted(os.listdir(out)) == ["model.json", "model.pt"]
        hidden = [name for name in os.listdir(tmp_path) if name != "model"]
        partial = [name for name in hidden if name.startswith(".partial-")]  # a kill while saving: removed next run
        assert set(hidden) - set(partial) <= {".model.resume.pth", ".model.lock"} and len(partial) <= 1, hidden
    result = run("finetune", *options)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["model.json", "model.pt"] and _meta(out)["recipe"]["steps_run"] == 12
    assert sorted(os.listdir(tmp_path)) == ["model"], os.listdir(tmp_path)  # stale partials, checkpoint, lock: gone
    assert tree_digest(dataset) == inputs


def test_predict_killed_at_random_points_then_continued(dataset, model, tmp_path):
    """kill -9 at random points of a folder prediction: every output left reads back whole; ``--continue`` keeps
    them, segments the rest and ends equal to an uninterrupted run, with no hidden file left."""
    rng = random.Random(SEED + 2)
    images = os.path.join(dataset, "imagesTr")
    inputs = tree_digest(dataset, model)
    reference = run("predict", "--model", model, "--input", images, "--output", tmp_path / "reference",
                    "--seg-nrrd", "--device", "cpu", "--progress", "none")
    assert reference.returncode == 0, reference.stderr
    expected = whole_images(tmp_path / "reference")
    assert len(expected) == 12

    out = tmp_path / "out"
    options = ("--model", model, "--input", images, "--output", out, "--seg-nrrd", "--device", "cpu")
    for max_delay in (0.5, 0.1, 0.0):  # an idle machine may segment all 12 within a long random delay: kill sooner
        shutil.rmtree(out, ignore_errors=True)
        process = start("predict", *options, "--progress", "none")
        kill_when(process, lambda: out.is_dir() and len(os.listdir(out)) >= 2, rng, max_delay, "the first outputs")
        left = whole_images(out)  # whole or absent: never truncated
        if len(left) < 12:
            break
    assert len(left) < 12, "finished before the kill"
    result = run("predict", *options, "--continue", "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kept = [e["message"] for e in events if e.get("message", "").startswith("--continue:")]
    assert kept or not left
    done = whole_images(out)
    assert done.keys() == expected.keys() and all((done[k] == expected[k]).all() for k in expected)
    assert len(events[-1]["outputs"]) == 12
    assert not partial_files(tmp_path) and sorted(os.listdir(out)) == sorted(expected)
    assert tree_digest(dataset, model) == inputs


def test_pretrain_killed_after_a_checkpoint_resumes(dataset, tmp_path):
    """kill -9 at a random point after pretraining's first checkpoint; ``--resume`` finishes the run; no partial
    checkpoint is left and the inputs are unchanged."""
    rng = random.Random(SEED + 3)
    out = tmp_path / "pretrain"
    images = os.path.join(dataset, "imagesTr")
    options = ("pretrain", "--method", "s3d", "--images", images, "--out", out, "--arch", "ResEncT-test",
               "--steps", 30, "--batch", 1, "--patch", 16, "--device", "cpu", "--save-every", 3, "--progress", "none")
    inputs = tree_digest(dataset)
    process = start(*options)
    killed = kill_when(process, (out / "checkpoint_latest.pth").exists, rng, 1.0, "the first checkpoint")
    assert killed and not (out / "checkpoint_final.pth").exists()
    result = run(*options, "--resume")
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint_final.pth").exists() and not partial_files(tmp_path)
    assert torch.load(out / "checkpoint_latest.pth", weights_only=True)["step"] == 30
    assert tree_digest(dataset) == inputs
