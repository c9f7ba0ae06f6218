"""The GPU path in one command of at most 8 minutes on one H100: a smoke of every CUDA branch, then the figures,
each section's JSON line appended to ``--out/results.jsonl`` the moment it is measured, with PASS/FAIL against the
goals. Needs this repository and, on a bare CUDA machine, the bundle of ``bench/gpu_prepare.py`` (wheels + data).

    python bench/gpu_prepare.py                                         # here, beforehand: .gpu_bundle/, ~58 MB
    python3 bench/gpu_suite.py --bundle .gpu_bundle --out "$OUT"        # there: installs the wheels, runs it all
    python bench/gpu_suite.py --data ../shared/data/Task04_Hippocampus --out /tmp/smoke --smoke   # CPU check

Sections, in the order they run (``sslseg`` subprocesses, so that each one's GPU memory peak is its own):

1. smoke: ``finetune-memory`` (ResEnc-L, 20 steps under ``--max-memory-gb 8``: precision, fitting, the limit, the
   peak), ``pretrain-s3d`` and ``pretrain-volf`` (20 steps each at 160^3: the start on the GPU, steps/s after a
   warm-up), ``predict-tta-uncertainty`` (the CLI with mirroring and uncertainty maps), ``rank``, ``slicer-job``
   (the Slicer logic's background job running ``sslseg predict`` on CUDA);
2. figures: ``time-to-dice`` (ResEnc-L from scratch on 10 cases, the product's default preset under a time limit
   so that training, preprocessing included, ends within 5 minutes; test Dice on 30 unseen cases with the TTA the
   product uses on CUDA; the share of step time the GPU waited for data), ``prediction-256`` (a 256^3 volume: the
   product's path against plain MONAI ``sliding_window_inference`` on the same network and window batch, cold and
   warm, and the product's memory peak).

Goals (one H100): time-to-Dice test Dice >= 0.86 within 300 s; fine-tune peak <= 8 GB under --max-memory-gb 8;
256^3 prediction <= 4 GB and <= 5 s; data wait < 10 % of step time; prediction at least as fast as plain MONAI.
A section that fails is recorded as FAIL with its error and the suite goes on; one that would overrun
``--budget`` is recorded as skipped. ``--smoke`` runs every section on the CPU with a tiny network (the goals are
not judged there): it checks that the suite works, not how fast anything is.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Settings of a full GPU run, and of --smoke (CPU, seconds)
FULL = {"device": "auto", "arch": "ResEncL", "preset": None, "smoke_steps": 20, "pretrain_patch": 160,
        "pretrain_batch": 2, "pretrain_steps": 20, "warmup_steps": 5, "train": 10, "val": 0, "test": 30,
        "volume": 256, "memory_limit_gb": 8, "ttd_seconds": 240, "ttd_steps": None, "in_process": False,
        "budget": 470, "judge": True}
SMOKE = {"device": "cpu", "arch": "ResEncT-test", "preset": "test", "smoke_steps": 3, "pretrain_patch": 32,
         "pretrain_batch": 2, "pretrain_steps": 3, "warmup_steps": 1, "train": 3, "val": 0, "test": 2,
         "volume": 40, "memory_limit_gb": 8, "ttd_seconds": 20, "ttd_steps": 4, "in_process": True,
         "budget": 900, "judge": False}
# section -> (figure, comparison, bound): the goals of one H100
GOALS = {
    "finetune-memory": [("peak_reserved_gb", "<=", 8.0)],
    "time-to-dice": [("test_dice", ">=", 0.86), ("train_wall_s", "<=", 300.0), ("data_wait_share", "<", 0.10)],
    "prediction-256": [("peak_reserved_gb", "<=", 4.0), ("sslseg_warm_s", "<=", 5.0), ("ratio_warm", ">=", 1.0)],
}
# the least time (s) a section needs on a GPU; it is skipped when less of --budget is left
NEEDS = {"finetune-memory": 40, "pretrain-s3d": 25, "pretrain-volf": 25, "predict-tta-uncertainty": 15, "rank": 15,
         "slicer-job": 15, "time-to-dice": 150, "prediction-256": 30}


# --- the bundle: wheels and data carried to a bare machine ------------------------------------------------------

def use_bundle(bundle: str) -> str:
    """Install the bundle's wheels into ``bundle/site`` unless SimpleITK, MONAI and dynamic-network-architectures
    import already; put that folder first on sys.path and on the PYTHONPATH that child processes inherit (added to,
    never replaced). Returns the bundle's data folder."""
    import importlib.util

    missing = [m for m in ("SimpleITK", "monai", "dynamic_network_architectures")
               if importlib.util.find_spec(m) is None]
    if missing:
        site = os.path.join(os.path.abspath(bundle), "site")
        wheels = sorted(glob.glob(os.path.join(bundle, "wheels", "*.whl")))
        if not wheels:
            raise SystemExit(f"{missing} missing and no wheels in {bundle}/wheels (run bench/gpu_prepare.py)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", site, *wheels], check=True)
        sys.path.insert(0, site)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    return os.path.join(bundle, "Task04_Hippocampus")


def child_env(extra=None) -> dict:
    """The environment of an ``sslseg`` child: this repository first on PYTHONPATH, the rest kept."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


# --- running sslseg ------------------------------------------------------------------------------------------

def _in_process(args, env) -> tuple:
    """``sslseg.cli.main(args)`` in this process with ``env`` set meanwhile: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from sslseg.cli import main as sslseg_main

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = sslseg_main(args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue(), err.getvalue()


def run_sslseg(args, settings, log_name, env=None) -> tuple:
    """``sslseg ARGS --progress json`` in a subprocess (its own GPU memory peaks), or in this process for the
    smoke run: (JSON events, wall seconds); raises with the error's text."""
    started = time.monotonic()
    args, env = [*map(str, args), "--progress", "json"], dict(env or {})
    if settings["in_process"]:
        code, stdout, stderr = _in_process(args, env)
    else:
        done = subprocess.run([sys.executable, "-m", "sslseg", *args], cwd=REPO, capture_output=True, text=True,
                              env=child_env(env))
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    seconds = time.monotonic() - started
    with open(os.path.join(settings["logs"], f"{log_name}.log"), "w", encoding="utf-8") as stream:
        stream.write(stdout + "\n--- stderr ---\n" + stderr)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if code:
        errors = [e["message"] for e in events if e.get("event") == "error"]
        raise RuntimeError(f"sslseg {args[0]} failed ({code}): {errors or stderr[-1500:]}")
    return events, seconds


SPLIT_FILE = "suite_split.json"  # in a bundle's data folder: the case ids in the order split() took them


def split(data: str, settings: dict, seed: int):
    """(train, validation, test, all) lists of (image, label) paths: the cases sorted, permuted with ``seed``; in a
    bundle's copy (``SPLIT_FILE``), the order the full dataset gave, so both runs use the same cases."""
    from sslseg.datasets import load_dataset

    cases = sorted(load_dataset(data).cases, key=lambda c: c.case_id)
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    if os.path.isfile(os.path.join(data, SPLIT_FILE)):
        with open(os.path.join(data, SPLIT_FILE), encoding="utf-8") as stream:
            ids = json.load(stream)
        by_id = {c.case_id: c for c in cases}
        order = [by_id[i] for i in ids]
    counts = [settings["train"], settings["val"], settings["test"]]
    if sum(counts) > len(order):
        raise SystemExit(f"{data}: {len(order)} cases, the suite needs {sum(counts)}")
    pairs = [(c.images[0], c.label) for c in order]
    return pairs[:counts[0]], pairs[counts[0]:sum(counts[:2])], pairs[sum(counts[:2]):sum(counts)], pairs


# --- the record: one JSON line per section, written as it is measured -------------------------------------------

def judge(section: str, figures: dict, settings: dict) -> dict:
    """PASS/FAIL per goal of ``section`` (not judged in a smoke run)."""
    verdicts = {}
    for figure, comparison, bound in GOALS.get(section, []):
        value = figures.get(figure)
        if not settings["judge"]:
            verdicts[figure] = "not judged (smoke)"
        elif value is None:
            verdicts[figure] = "FAIL (not measured)"
        else:
            ok = value <= bound if comparison == "<=" else value >= bound if comparison == ">=" else value < bound
            verdicts[figure] = f"{'PASS' if ok else 'FAIL'} ({value} {comparison} {bound})"
    return verdicts


class Record:
    """``results.jsonl`` in ``out``: a header line, then one line per section, flushed and synced as it comes (a
    run cut short still returns what it measured)."""

    def __init__(self, out: str, header: dict):
        self.path = os.path.join(out, "results.jsonl")
        self.lines = []
        self.write({"section": "machine", **header})

    def write(self, line: dict):
        self.lines.append(line)
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        status = "FAIL" if line.get("status") == "failed" or any(
            v.startswith("FAIL") for v in line.get("goals", {}).values()) else line.get("status", "ok")
        print(f"[{status}] {line['section']}: {json.dumps({k: v for k, v in line.items() if k != 'section'})}",
              flush=True)


# --- 1. smoke of every CUDA branch ------------------------------------------------------------------------------

def finetune(name, train, val, settings, work, extra=(), env=None) -> dict:
    """One ``sslseg finetune`` run from scratch on ``train`` (+ ``val``); its model.json figures."""
    out = os.path.join(work, name)
    pairs = [*train, *val]
    args = ["finetune", "--backbone", "none", "--arch", settings["arch"], "--images", *[p[0] for p in pairs],
            "--labels", *[p[1] for p in pairs], "--label-names", "Anterior", "Posterior", "--out", out,
            "--device", settings["device"], "--val-cases", len(val), *extra]
    if settings["preset"]:
        args += ["--preset", settings["preset"]]
    _, seconds = run_sslseg(args, settings, name, env=env)
    with open(os.path.join(out, "model.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    training, recipe = meta["training"], meta["recipe"]
    memory, loader = training.get("gpu_memory") or {}, training.get("data_loader") or {}
    return {"model": out, "wall_s": round(seconds, 1), "train_wall_s": training["train_seconds"],
            "preset": meta.get("preset", recipe.get("preset")), "steps": recipe["steps_run"],
            "patch": meta["patch_size"], "batch": recipe["batch_size"], "precision": recipe.get("precision"),
            "checkpointing": recipe["gradient_checkpointing"], "peak_reserved_gb": memory.get("peak_reserved_gb"),
            "peak_allocated_gb": memory.get("peak_allocated_gb"), "limit_gb": memory.get("limit_gb"),
            "data_wait_share": loader.get("data_wait_share"), "loader_workers": loader.get("workers"),
            "s_per_step": round(training["train_seconds"] / max(1, recipe["steps_run"]), 4)}


def finetune_memory(context) -> dict:
    settings = context["settings"]
    run = finetune("finetune-memory", context["train"], [], settings, context["work"],
                   ["--steps", settings["smoke_steps"], "--max-memory-gb", settings["memory_limit_gb"]])
    context["model"] = run["model"]
    return run


def pretrain(method: str, context) -> dict:
    settings = context["settings"]
    patch, batch, warm = settings["pretrain_patch"], settings["pretrain_batch"], settings["warmup_steps"]
    out = os.path.join(context["work"], f"pretrain-{method}")
    events, seconds = run_sslseg(["pretrain", "--method", method, "--images", context["unlabelled"], "--out", out,
                                  "--arch", settings["arch"], "--steps", settings["pretrain_steps"], "--batch",
                                  batch, "--patch", patch, "--device", settings["device"], "--report-every", 1,
                                  "--save-every", 10 ** 9], settings, f"pretrain-{method}")
    progress = {e["step"]: e["elapsed"] for e in events if e.get("event") == "progress"}
    last = max(progress)
    rate = (last - warm) / max(1e-9, progress[last] - progress[warm]) if last > warm else None
    return {"arch": settings["arch"], "patch": patch, "batch": batch, "steps": last,
            "steps_per_s": None if rate is None else round(rate, 3), "wall_s": round(seconds, 1),
            "backbone_written": os.path.isfile(os.path.join(out, "checkpoint_final.pth"))}


def predict_with_uncertainty(context) -> dict:
    settings, out = context["settings"], os.path.join(context["work"], "predicted-tta")
    images = [p[0] for p in context["test"][:2]]
    _, seconds = run_sslseg(["predict", "--model", context["model"], "--input", *images, "--output", out, "--tta",
                             "--uncertainty", "--seg-nrrd", "--device", settings["device"]], settings, "predict")
    written = sorted(os.listdir(out))
    if len([n for n in written if n.endswith("_uncertainty.nii.gz")]) != len(images):
        raise RuntimeError(f"uncertainty maps missing: {written}")
    return {"cases": len(images), "wall_s": round(seconds, 1), "files": len(written)}


def rank(context) -> dict:
    settings, out = context["settings"], os.path.join(context["work"], "ranked")
    images = [p[0] for p in context["test"][:2]]
    _, seconds = run_sslseg(["rank", "--model", context["model"], "--input", *images, "--output", out,
                             "--device", settings["device"]], settings, "rank")
    with open(os.path.join(out, "ranking.json"), encoding="utf-8") as stream:
        ranking = json.load(stream)
    return {"cases": len(images), "wall_s": round(seconds, 1), "ranked": len(ranking)}


def slicer_job(context) -> dict:
    """What the Slicer module's logic runs for "Segment": a background ``Job`` (its process runner, JSON progress
    events, the engine found through PYTHONPATH) running ``sslseg predict`` on the device."""
    sys.path.insert(0, os.path.join(REPO, "SSLCommon"))
    from SSLCommonLib.jobs import Job

    settings, out = context["settings"], os.path.join(context["work"], "slicer-job")
    events = []
    started = time.monotonic()
    job = Job("segmentation", ["predict", "--model", context["model"], "--input", context["test"][0][0], "--output",
                               out, "--device", settings["device"], "--progress", "json"], "SSLSegmentation",
              onEvent=events.append)
    job.start(autoPoll=False)
    result = job.waitForCompletion(timeout=300)
    devices = {e.get("device") for e in events if e.get("event") == "start"}
    return {"job_status": job.status, "wall_s": round(time.monotonic() - started, 1), "events": len(events),
            "device": sorted(d for d in devices if d), "outputs": len(result.get("outputs", []) or [])
            if isinstance(result, dict) else None}


# --- 2. figures --------------------------------------------------------------------------------------------------

def test_dice(model_dir: str, test, device, tta: bool) -> dict:
    """Mean Dice per label on the test cases' own grids through ``segment_array`` (the product's path)."""
    from sslseg.finetuning.evaluation import dice_per_class
    from sslseg.inference import segment_array
    from sslseg.model_folder import load_model
    from sslseg.preprocessing import read_channels, read_label

    model = load_model(model_dir)
    model.network.to(device).eval()
    index = np.zeros(256, np.int64)
    index[model.label_values_array()] = np.arange(model.num_classes)
    started, scores = time.monotonic(), []
    for image_path, label_path in test:
        image, geometry = read_channels([image_path], "test", model.in_channels)
        truth = read_label(label_path, "test", geometry)
        labels = segment_array(model, image, geometry, device, tta=tta)
        scores.append(dice_per_class(index[labels], index[truth], model.num_classes))
    scores = np.asarray(scores)
    return {"test_dice": round(float(scores.mean()), 4), "test_cases": len(test), "tta": tta,
            "per_label": {l["name"]: round(float(s), 4) for l, s in zip(model.labels, scores.mean(axis=0))},
            "test_s": round(time.monotonic() - started, 1)}


def time_to_dice(context) -> dict:
    """ResEnc-L from scratch, the product's default preset, under a time limit that ends training (preprocessing
    included) within the goal's 5 minutes, or what the budget leaves."""
    settings, device = context["settings"], context["device"]
    limit = min(settings["ttd_seconds"], max(60, context["left"]() - 60))
    cap = ["--steps", settings["ttd_steps"]] if settings["ttd_steps"] else []
    run = finetune("time-to-dice", context["train"], [], settings, context["work"], ["--time-limit", limit, *cap])
    context["ttd_model"] = run["model"]
    return {**run, "time_limit_s": limit, **test_dice(run["model"], context["test"], device,
                                                       tta=device.type == "cuda")}


def zoomed_scan(path: str, size: int):
    """A real scan zoomed to ``size``^3 voxels at 1 mm (trilinear): a large volume with real intensities."""
    import torch

    from sslseg.imageio import Geometry, read_image

    image, _ = read_image(path, np.float32)
    zoomed = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(size,) * 3,
                                             mode="trilinear", align_corners=False)[0, 0].numpy()
    return zoomed, Geometry(zoomed.shape)


def timed(work, device, repeats: int = 3) -> tuple:
    """(cold seconds: the first call, autotuning included; warm: the best of ``repeats`` after it)."""
    import torch

    def once():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    cold = once()
    return cold, min(once() for _ in range(repeats))


def plain_monai(model, image, device, windows: int):
    """What a plain MONAI script does: z-score, sliding windows (same patch, overlap 0.5, Gaussian, the same
    windows per pass) under the same autocast, argmax on the device, labels to the CPU."""
    import torch
    from monai.inferers import sliding_window_inference

    from sslseg.device import mixed_precision

    precision = mixed_precision(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
        tensor = torch.from_numpy((image - image.mean()) / image.std())[None, None].to(device)
        logits = sliding_window_inference(tensor, model.patch_size, windows, model.network, overlap=0.5,
                                          mode="gaussian")
        return logits.argmax(1).to(torch.uint8).cpu().numpy()


def prediction_256(context) -> dict:
    import torch

    from sslseg.inference import segment_array, window_batch_size
    from sslseg.model_folder import load_model

    settings, device = context["settings"], context["device"]
    model = load_model(context.get("ttd_model") or context["model"])
    model.network.to(device).eval()
    image, geometry = zoomed_scan(context["test"][0][0], settings["volume"])
    windows = window_batch_size(model.network, 1, model.patch_size, device)
    peak = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ours_cold, ours = timed(lambda: segment_array(model, image[None], geometry, device, tta=False), device)
    if device.type == "cuda":
        peak = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 2)
    plain_cold, plain = timed(lambda: plain_monai(model, image, device, windows), device)
    return {"volume": list(image.shape), "patch": model.patch_size, "window_batch": windows,
            "sslseg_cold_s": round(ours_cold, 3), "sslseg_warm_s": round(ours, 3),
            "plain_monai_cold_s": round(plain_cold, 3), "plain_monai_warm_s": round(plain, 3),
            "ratio_warm": round(plain / ours, 3), "ratio_cold": round(plain_cold / ours_cold, 3),
            "peak_reserved_gb": peak}


SECTIONS = [("finetune-memory", finetune_memory), ("pretrain-s3d", lambda c: pretrain("s3d", c)),
            ("pretrain-volf", lambda c: pretrain("volf", c)), ("predict-tta-uncertainty", predict_with_uncertainty),
            ("rank", rank), ("slicer-job", slicer_job), ("time-to-dice", time_to_dice),
            ("prediction-256", prediction_256)]


# --- the run ------------------------------------------------------------------------------------------------------

def run_section(name, function, context, record):
    """Run one section unless the budget is too short; its line (figures, goals, status) goes out at once."""
    settings, started = context["settings"], time.monotonic()
    if settings["judge"] and context["left"]() < NEEDS[name]:
        record.write({"section": name, "status": "skipped", "why": f"{context['left']():.0f} s of the budget left"})
        return
    try:
        figures = function(context)
    except Exception as error:  # noqa: BLE001 - recorded; the next section still runs
        record.write({"section": name, "status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                      "seconds": round(time.monotonic() - started, 1)})
        return
    record.write({"section": name, "status": "ok", "seconds": round(time.monotonic() - started, 1), **figures,
                  "goals": judge(name, figures, settings)})


def machine(device) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return {"host": platform.node(), "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu,
            "python": platform.python_version()}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="the folder bench/gpu_prepare.py made: wheels installed when needed, "
                        "the data taken from it")
    parser.add_argument("--data", help="the hippocampus folder (MSD Task04 layout); default: the bundle's")
    parser.add_argument("--out", required=True, help="folder for results.jsonl and the run logs")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny network, a few steps: checks the suite")
    parser.add_argument("--budget", type=float, help="seconds for the whole suite (default 470; sections that "
                        "would overrun it are skipped)")
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data or args.bundle):
        parser.error("give --data or --bundle")
    return args


def main(argv=None):
    started = time.monotonic()
    args = parse(argv)
    data = args.data or use_bundle(args.bundle)
    from sslseg.device import resolve_device

    settings = dict(SMOKE if args.smoke else FULL)
    settings["budget"] = args.budget or settings["budget"]
    device, note = resolve_device(settings["device"])
    settings["device"] = str(device)
    out = os.path.abspath(args.out)
    settings["logs"] = os.path.join(out, "logs")
    os.makedirs(settings["logs"], exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *(argv or sys.argv[1:])])
    record = Record(out, {"smoke": args.smoke, "command": command, "device_note": note, **machine(device),
                          "settings": {k: v for k, v in settings.items() if k != "logs"}})
    with tempfile.TemporaryDirectory(prefix="sslseg-gpu-suite-") as work:
        train, val, test, _ = split(data, settings, args.split_seed)
        unlabelled = os.path.join(work, "unlabelled.txt")
        with open(unlabelled, "w", encoding="utf-8") as stream:  # the training cases' images, never a test case
            stream.writelines(p[0] + "\n" for p in train)
        context = {"settings": settings, "device": device, "work": work, "train": train, "val": val, "test": test,
                   "unlabelled": unlabelled, "left": lambda: settings["budget"] - (time.monotonic() - started)}
        for name, function in SECTIONS:
            run_section(name, function, context, record)
    record.write({"section": "total", "seconds": round(time.monotonic() - started, 1)})
    return record.lines


if __name__ == "__main__":
    lines = main()
    sys.exit(1 if any(line.get("status") == "failed" for line in lines) else 0)
