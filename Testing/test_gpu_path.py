"""The GPU path, tested where it can run without a GPU: the precision choice, the step-indexed loader (the same
batches with 0 and 2 worker processes, the same trained model with the loader on and off), what a run records
(precision, loader, wait share), and the benchmark suite end to end (``--smoke``: CPU, tiny network).

Real parts throughout: PatchSampler over real hippocampus cases, real DataLoader worker processes, real training."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sslseg.device import mixed_precision
from sslseg.finetuning import data as training_data
from sslseg.finetuning import finetune
from sslseg.finetuning.loader import MAX_WORKERS, WORKERS_ENV, BatchFeed, DataWait, loader_workers
from sslseg.model_folder import load_model
from sslseg.preprocessing import Preprocessor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = {1: "Anterior", 2: "Posterior"}


def hippocampus_files(root, count, start=0):
    names = sorted(os.listdir(os.path.join(root, "imagesTr")))[start:start + count]
    return [os.path.join(root, "imagesTr", n) for n in names], [os.path.join(root, "labelsTr", n) for n in names]


# --- precision ------------------------------------------------------------------------------------------------

def test_precision_is_bf16_without_scaler_where_supported_else_fp16_with_scaler():
    cpu = mixed_precision(torch.device("cpu"))
    assert (cpu.enabled, cpu.dtype, cpu.use_scaler, cpu.name) == (False, torch.float32, False, "no")
    ampere = mixed_precision(torch.device("cuda:0"), bf16_supported=True)
    assert (ampere.enabled, ampere.dtype, ampere.use_scaler, ampere.name) == (True, torch.bfloat16, False, "bfloat16")
    older = mixed_precision(torch.device("cuda"), bf16_supported=False)
    assert (older.enabled, older.dtype, older.use_scaler, older.name) == (True, torch.float16, True, "float16")
    assert mixed_precision("cpu") == cpu


# --- the loader -----------------------------------------------------------------------------------------------

def test_worker_count_follows_the_cores_and_the_environment(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert loader_workers(torch.device("cpu"), cores=64) == 0
    assert loader_workers(torch.device("cuda"), cores=16) == min(14, MAX_WORKERS)
    assert loader_workers(torch.device("cuda"), cores=8) == 6
    assert loader_workers(torch.device("cuda"), cores=2) == 1
    assert loader_workers(torch.device("cuda"), cores=256) == MAX_WORKERS
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert loader_workers(torch.device("cpu")) == 3
    monkeypatch.setenv(WORKERS_ENV, "0")
    assert loader_workers(torch.device("cuda"), cores=16) == 0


@pytest.fixture(scope="module")
def sampler(hippocampus_dir):
    """PatchSampler over three real cases, prepared as fine-tuning prepares them, with the cpu preset's
    augmentation (rotation, scaling, mirroring, intensity)."""
    from sslseg.presets import get_preset

    dataset, channels = training_data.load_training_data(images=hippocampus_files(hippocampus_dir, 3)[0],
                                                         labels=hippocampus_files(hippocampus_dir, 3)[1],
                                                         label_names=NAMES)
    raw = training_data.read_cases(dataset, {1, 2}, channels)
    table = training_data.label_table([{"value": 1}, {"value": 2}])
    rng = np.random.default_rng(0)
    patch = [32, 40, 32]
    cases = [training_data.prepare_case(case, Preprocessor(spacing=[1.0, 1.0, 1.0]), table, patch, 3, rng)
             for case in raw]
    preset = get_preset("cpu")
    augment = {**preset.augment, "rotate_p": 0.5, "scale_p": 0.5}
    return training_data.PatchSampler(cases, patch, 2, preset.foreground_oversampling, augment, seed=7)


def _batches(feed, steps):
    try:
        return [feed.batch(step) for step in steps]
    finally:
        feed.close()


def test_same_step_gives_the_same_batch_with_0_and_2_workers(sampler):
    steps = range(6)
    inline = _batches(BatchFeed(sampler, torch.device("cpu"), workers=0), steps)
    loaded = _batches(BatchFeed(sampler, torch.device("cpu"), workers=2), steps)
    for (images, labels), (images2, labels2) in zip(inline, loaded):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64 and images.shape == (2, 1, 32, 40, 32)
        assert torch.equal(images, images2) and torch.equal(labels, labels2)
    assert not torch.equal(inline[0][0], inline[1][0])  # the steps differ
    # starting later (e.g. a resumed run) gives the same batches of those steps
    later = _batches(BatchFeed(sampler, torch.device("cpu"), first_step=3, workers=2), range(3, 6))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(inline[3:], later))


def test_feed_refuses_steps_out_of_order(sampler):
    feed = BatchFeed(sampler, torch.device("cpu"), workers=0)
    feed.batch(0)
    with pytest.raises(RuntimeError, match="step 2"):
        feed.batch(2)
    feed.close()


def test_data_wait_on_the_cpu_counts_batch_building_against_step_time():
    clock = DataWait(torch.device("cpu"))
    assert clock.share() is None
    for _ in range(3):
        clock.batch_requested()
        time.sleep(0.02)  # building the batch
        clock.step_started()
        time.sleep(0.06)  # the step
        clock.step_ended()
        clock.pause()
        time.sleep(0.05)  # validation: not counted
    assert 0.1 < clock.share() < 0.4


# --- a training run -------------------------------------------------------------------------------------------

def _train(tmp_path, hippocampus_dir, name, steps=6):
    images, labels = hippocampus_files(hippocampus_dir, 4)
    out = finetune("none", images=images, labels=labels, label_names=NAMES, out=tmp_path / name, preset="test",
                   device="cpu", steps=steps, val_cases=0, progress="none")
    return out, json.loads((tmp_path / name / "model.json").read_text())


def test_loader_on_or_off_trains_the_same_model_and_the_run_records_it(tmp_path, hippocampus_dir, monkeypatch):
    monkeypatch.setenv("SSLSEG_THREADS", "1")  # the same thread count, so the same reduction order, in both runs
    monkeypatch.setenv(WORKERS_ENV, "0")
    off, meta_off = _train(tmp_path, hippocampus_dir, "off")
    monkeypatch.setenv(WORKERS_ENV, "2")
    on, meta_on = _train(tmp_path, hippocampus_dir, "on")
    assert meta_off["training"]["data_loader"]["workers"] == 0 and meta_on["training"]["data_loader"]["workers"] == 2
    weights_off, weights_on = load_model(off).network.state_dict(), load_model(on).network.state_dict()
    assert all(torch.equal(weights_off[k], weights_on[k]) for k in weights_off)
    assert meta_off["training"]["final_loss"] == meta_on["training"]["final_loss"]
    for meta in (meta_off, meta_on):
        recipe, training = meta["recipe"], meta["training"]
        assert (recipe["mixed_precision"], recipe["precision"], recipe["grad_scaler"]) == (False, "float32", False)
        assert training["gpu_memory"] is None and training["data_loader"]["pin_memory"] is False
        assert 0.0 < training["data_loader"]["data_wait_share"] < 1.0


# --- the benchmark suite --------------------------------------------------------------------------------------

def _suite_module():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import gpu_suite

    return gpu_suite


def test_gpu_suite_runs_every_section_in_smoke_mode_and_writes_each_line(tmp_path, hippocampus_dir):
    out = tmp_path / "suite"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_suite.py"), "--data", hippocampus_dir,
                           "--out", str(out), "--smoke"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": REPO}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    sections = [line["section"] for line in lines]
    assert sections == ["machine", *[name for name, _ in _suite_module().SECTIONS], "total"]
    assert all(line.get("status") in (None, "ok") for line in lines), [l for l in lines if l.get("status")]
    by = {line["section"]: line for line in lines}
    assert by["machine"]["smoke"] and by["machine"]["gpu"] == "no GPU"
    assert by["finetune-memory"]["steps"] == 3 and by["finetune-memory"]["precision"] == "float32"
    assert all(by[f"pretrain-{m}"]["steps_per_s"] > 0 and by[f"pretrain-{m}"]["backbone_written"]
               for m in ("s3d", "volf"))
    assert by["predict-tta-uncertainty"]["files"] == 6  # 2 cases x (labels, .seg.nrrd, uncertainty map)
    assert by["rank"]["ranked"] == 2 and by["slicer-job"]["job_status"] == "succeeded"
    assert by["slicer-job"]["device"] == ["cpu"]
    ttd = by["time-to-dice"]
    assert ttd["steps"] == 4 and ttd["test_cases"] == 2 and set(ttd["per_label"]) == {"Anterior", "Posterior"}
    assert by["prediction-256"]["volume"] == [40, 40, 40] and by["prediction-256"]["window_batch"] == 2
    assert set(by["prediction-256"]["goals"]) == {"peak_reserved_gb", "sslseg_warm_s", "ratio_warm"}
    assert "[ok] prediction-256" in done.stdout and os.path.isfile(out / "logs" / "time-to-dice.log")


def test_a_failed_section_is_recorded_at_once_and_the_goals_are_judged(tmp_path):
    suite = _suite_module()
    record = suite.Record(str(tmp_path), {"smoke": False})
    settings = dict(suite.FULL, judge=True)
    context = {"settings": settings, "left": lambda: 1000.0}

    def broken(_):
        assert [json.loads(l)["section"] for l in (tmp_path / "results.jsonl").read_text().splitlines()] == \
            ["machine"]
        raise RuntimeError("no kernel image is available")

    suite.run_section("rank", broken, context, record)
    suite.run_section("prediction-256", lambda _: {"peak_reserved_gb": 3.2, "sslseg_warm_s": 6.0,
                                                   "ratio_warm": 1.4}, context, record)
    context["left"] = lambda: 10.0
    suite.run_section("time-to-dice", lambda _: {}, context, record)
    lines = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert lines[1]["status"] == "failed" and "no kernel image" in lines[1]["error"]
    assert lines[2]["goals"]["peak_reserved_gb"].startswith("PASS")
    assert lines[2]["goals"]["sslseg_warm_s"] == "FAIL (6.0 <= 5.0)" and lines[2]["goals"]["ratio_warm"][:4] == "PASS"
    assert lines[3]["status"] == "skipped"


def test_children_keep_the_callers_pythonpath_and_the_bundle_holds_the_suites_cases(tmp_path, monkeypatch,
                                                                                   hippocampus_dir):
    suite = _suite_module()
    monkeypatch.setenv("PYTHONPATH", "/opt/site-packages")
    assert suite.child_env()["PYTHONPATH"] == REPO + os.pathsep + "/opt/site-packages"
    assert suite.use_bundle(str(tmp_path)) == os.path.join(str(tmp_path), "Task04_Hippocampus")  # all importable
    import gpu_prepare

    target = tmp_path / "Task04_Hippocampus"
    assert gpu_prepare.copy_cases(hippocampus_dir, str(target), 0) == 40
    train, _, test, _ = suite.split(str(target), suite.FULL, 0)
    expected, _, expected_test, _ = suite.split(hippocampus_dir, suite.FULL, 0)
    assert [os.path.basename(p[0]) for p in train + test] == [os.path.basename(p[0]) for p in expected + expected_test]
    assert gpu_prepare.folder_mb(str(target)) < 6
