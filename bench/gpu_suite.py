"""The GPU path's figures in one command: needs only this repository and the hippocampus folder (MSD Task04).

    python bench/gpu_suite.py --data /data/Task04_Hippocampus --out results/gpu        # one H100: < 9 minutes
    python bench/gpu_suite.py --data /data/Task04_Hippocampus --out /tmp/smoke --smoke # CPU, tiny network: the
                                                                                       # suite runs end to end

Writes ``results.json`` and ``results.md`` (Markdown tables) into ``--out``, with the machine and the command.
Sections, in the order they run (the training runs are ``sslseg`` subprocesses, so that each one's GPU memory
peak is its own):

1. pretraining throughput: S3D and Volume Fusion on ResEnc-L, 160^3, batch 2, steps/s after a warm-up; the S3D
   run's checkpoint (nnssl format) is the backbone of 2 (``--backbone standin``: the random-weight stand-in of
   bench/make_test_backbone.py instead);
2. time-to-Dice: ResEnc-L fine-tuned on 10 training cases (+5 for validation) for ``--finetune-seconds`` each, from
   scratch and from the backbone; validation Dice against wall time (preprocessing included), test Dice on 30
   never-seen cases through the product's prediction path; the GPU memory peak at the default setting;
3. memory: a short fine-tuning run with ``--max-memory-gb 8``: its peak (reserved) against the 8 GB;
4. data wait: two short identical runs, the loader off (``SSLSEG_LOADER_WORKERS=0``: batches built between GPU
   steps) and on (the default): the share of step time the GPU waits for data, side by side;
5. prediction: one 256^3 volume (a real scan, zoomed), ``segment_array`` (what ``sslseg predict`` runs) against
   plain MONAI ``sliding_window_inference`` on the same network and volume (ratio = plain seconds / ours), seconds,
   GPU memory peak, and the whole ``sslseg.predict`` call on the file.

``--smoke`` runs the same sections on the CPU with a tiny network and a few steps, the sslseg runs inside this
process (no start-up per run): it checks that the suite works, not how fast anything is.

Case split: the cases sorted, permuted with ``--split-seed``: 10 train, 5 validation, 30 test.
"""

from __future__ import annotations

import argparse
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
FULL = {"device": "auto", "arch": "ResEncL", "preset": "quick", "pretrain_patch": 160, "pretrain_batch": 2,
        "s3d_steps": 150, "volf_steps": 40, "warmup_steps": 10, "train": 10, "val": 5, "test": 30,
        "wait_steps": 40, "volume": 256, "memory_limit_gb": 8, "ttd_steps": None, "in_process": False}
SMOKE = {"device": "cpu", "arch": "ResEncT-test", "preset": "test", "pretrain_patch": 32, "pretrain_batch": 2,
         "s3d_steps": 3, "volf_steps": 3, "warmup_steps": 1, "train": 3, "val": 1, "test": 2,
         "wait_steps": 3, "volume": 40, "memory_limit_gb": 8, "ttd_steps": 4, "in_process": True}


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


def run_sslseg(args, env=None, log=None, in_process=False) -> tuple:
    """``sslseg ARGS --progress json`` in a subprocess (its own GPU memory peaks), or with ``in_process`` in this
    one (the smoke run: no start-up per run): (JSON events, wall seconds); raises with the error's text."""
    started = time.monotonic()
    args, env = [*map(str, args), "--progress", "json"], dict(env or {})
    if in_process:
        code, stdout, stderr = _in_process(args, env)
    else:
        done = subprocess.run([sys.executable, "-m", "sslseg", *args], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": REPO, **env})
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    seconds = time.monotonic() - started
    if log:
        with open(log, "w", encoding="utf-8") as stream:
            stream.write(stdout + "\n--- stderr ---\n" + stderr)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    if code:
        errors = [e["message"] for e in events if e.get("event") == "error"]
        raise RuntimeError(f"sslseg {args[0]} failed ({code}): {errors or stderr[-1500:]}")
    return events, seconds


def split(data: str, settings: dict, seed: int):
    """(train, validation, test) lists of (image, label) paths."""
    from sslseg.datasets import load_dataset

    dataset = load_dataset(data)
    cases = sorted(dataset.cases, key=lambda c: c.case_id)
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    counts = [settings["train"], settings["val"], settings["test"]]
    if sum(counts) > len(order):
        raise SystemExit(f"{data}: {len(order)} cases, the suite needs {sum(counts)}")
    pairs = [(c.images[0], c.label) for c in order]
    return pairs[:counts[0]], pairs[counts[0]:sum(counts[:2])], pairs[sum(counts[:2]):sum(counts)], pairs


# --- 1. pretraining throughput -------------------------------------------------------------------------------

def pretrain(method: str, steps: int, images: str, out: str, settings: dict) -> dict:
    patch, batch, warm = settings["pretrain_patch"], settings["pretrain_batch"], settings["warmup_steps"]
    events, seconds = run_sslseg(["pretrain", "--method", method, "--images", images, "--out", out,
                                  "--arch", settings["arch"], "--steps", steps, "--batch", batch, "--patch", patch,
                                  "--device", settings["device"], "--report-every", 1, "--save-every", 10 ** 9],
                                 log=os.path.join(settings["logs"], f"pretrain-{method}.log"),
                                 in_process=settings["in_process"])
    progress = {e["step"]: e["elapsed"] for e in events if e.get("event") == "progress"}
    last = max(progress)
    rate = (last - warm) / max(1e-9, progress[last] - progress[warm]) if last > warm else None
    return {"method": method, "arch": settings["arch"], "patch": patch, "batch": batch, "steps": last,
            "steps_per_s": rate, "wall_s": round(seconds, 1),
            "checkpoint": next((e.get("checkpoint") for e in events if e.get("event") == "done"), None)}


def standin_backbone(arch: str, out: str) -> str:
    path = os.path.join(out, "checkpoint_final.pth")
    subprocess.run([sys.executable, os.path.join(REPO, "bench", "make_test_backbone.py"), "--arch", arch,
                    "--out", path], check=True, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True)
    return path


# --- 2-4. fine-tuning runs -----------------------------------------------------------------------------------

def finetune(name, backbone, train, val, settings, work, extra=(), env=None) -> dict:
    """One ``sslseg finetune`` run on ``train`` (+ ``val`` for validation); its model.json figures."""
    out = os.path.join(work, name)
    pairs = [*train, *val]
    args = ["finetune", "--backbone", backbone, "--images", *[p[0] for p in pairs], "--labels",
            *[p[1] for p in pairs], "--label-names", "Anterior", "Posterior", "--out", out,
            "--preset", settings["preset"], "--device", settings["device"], "--val-cases", len(val), *extra]
    if backbone == "none":
        args += ["--arch", settings["arch"]]
    _, seconds = run_sslseg(args, env=env, log=os.path.join(settings["logs"], f"{name}.log"),
                            in_process=settings["in_process"])
    with open(os.path.join(out, "model.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    training, recipe = meta["training"], meta["recipe"]
    return {"run": name, "model": out, "wall_s": round(seconds, 1), "steps": recipe["steps_run"],
            "patch": meta["patch_size"], "batch": recipe["batch_size"], "precision": recipe.get("precision"),
            "checkpointing": recipe["gradient_checkpointing"], "train_s": training["train_seconds"],
            "data_loader": training.get("data_loader"), "gpu_memory": training.get("gpu_memory"),
            "history": [(h["seconds"], round(h["mean_dice"], 4)) for h in meta["validation"]["history"]]}


def test_dice(model_dir: str, test, device) -> dict:
    """Mean Dice per label on the test cases' own grids, through ``segment_array`` (the product's path)."""
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
        labels = segment_array(model, image, geometry, device, tta=False)
        scores.append(dice_per_class(index[labels], index[truth], model.num_classes))
    scores = np.asarray(scores)
    return {"mean": float(scores.mean()), "per_label": {l["name"]: float(s) for l, s in
                                                        zip(model.labels, scores.mean(axis=0))},
            "cases": len(test), "seconds": round(time.monotonic() - started, 1)}


def time_to_dice(backbone, train, val, test, settings, seconds, work, device) -> list:
    runs = []
    for name, source in (("scratch", "none"), ("backbone", backbone)):
        cap = ["--steps", settings["ttd_steps"]] if settings["ttd_steps"] else []
        run = finetune(name, source, train, val, settings, work, extra=["--time-limit", seconds, *cap])
        run["test_dice"] = test_dice(run["model"], test, device)
        runs.append(run)
    return runs


def data_wait(train, settings, work) -> list:
    """The same short run with the loader off and on (on the CPU of --smoke: 2 worker processes)."""
    on = {} if settings["device"] != "cpu" else {"SSLSEG_LOADER_WORKERS": "2"}
    steps = ["--steps", settings["wait_steps"]]
    return [finetune("loader-off", "none", train, [], settings, work, steps, env={"SSLSEG_LOADER_WORKERS": "0"}),
            finetune("loader-on", "none", train, [], settings, work, steps, env=on)]


# --- 5. prediction ---------------------------------------------------------------------------------------------

def zoomed_scan(path: str, size: int):
    """A real scan zoomed to ``size``^3 voxels at 1 mm (trilinear): a large volume with real intensities."""
    import torch

    from sslseg.imageio import Geometry, read_image

    image, _ = read_image(path, np.float32)
    zoomed = torch.nn.functional.interpolate(torch.from_numpy(image)[None, None], size=(size,) * 3,
                                             mode="trilinear", align_corners=False)[0, 0].numpy()
    return zoomed, Geometry(zoomed.shape)


def timed(work, device, repeats: int = 3) -> float:
    """Best of ``repeats`` seconds after one warm-up (cuDNN's autotuning, caches)."""
    import torch

    work()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def plain_monai(model, image, device):
    """What a plain MONAI script does: z-score, sliding windows (same patch, overlap 0.5, Gaussian, 2 windows per
    pass) under the same autocast, argmax on the device, labels to the CPU."""
    import torch
    from monai.inferers import sliding_window_inference

    from sslseg.device import mixed_precision

    precision = mixed_precision(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=precision.dtype, enabled=precision.enabled):
        tensor = torch.from_numpy((image - image.mean()) / image.std())[None, None].to(device)
        logits = sliding_window_inference(tensor, model.patch_size, 2, model.network, overlap=0.5, mode="gaussian")
        return logits.argmax(1).to(torch.uint8).cpu().numpy()


def prediction(model_dir: str, scan: str, settings: dict, device, work: str) -> dict:
    import torch

    from sslseg.imageio import write_image
    from sslseg.inference import predict, segment_array
    from sslseg.model_folder import load_model

    model = load_model(model_dir)
    model.network.to(device).eval()
    image, geometry = zoomed_scan(scan, settings["volume"])
    ours = timed(lambda: segment_array(model, image[None], geometry, device, tta=False), device)
    plain = timed(lambda: plain_monai(model, image, device), device)
    peak = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        segment_array(model, image[None], geometry, device, tta=False)
        peak = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 2)
    source = write_image(image, geometry, os.path.join(work, "volume", "zoomed.nii.gz"))
    started = time.perf_counter()
    predict(model, source, os.path.join(work, "predicted"), device=str(device), tta=False)
    whole = time.perf_counter() - started
    return {"volume": list(image.shape), "patch": model.patch_size, "sslseg_s": round(ours, 3),
            "plain_monai_s": round(plain, 3), "ratio": round(plain / ours, 3), "peak_reserved_gb": peak,
            "predict_call_s": round(whole, 2)}


# --- the report ------------------------------------------------------------------------------------------------

def machine(device) -> str:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, {gpu}, "
            f"load {os.getloadavg()[0]:.1f}")


def _gb(memory, key):
    return "-" if not memory else memory.get(key)


def _number(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def markdown(results: dict) -> str:
    lines = [f"# GPU suite ({'smoke' if results['smoke'] else 'full'})", "", f"machine: {results['machine']}", "",
             f"command: `{results['command']}`", "", f"total: {results['seconds']:.0f} s", ""]
    lines += ["| pretraining | arch | patch | batch | steps/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['arch']} | {r['patch']}^3 | {r['batch']} | {_number(r['steps_per_s'], '.2f')} |"
              for r in results["pretraining"]]
    lines += ["", "| fine-tuning | wall s | steps | patch | batch | precision | test Dice | Dice vs wall s | "
              "peak reserved GB | limit GB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["time_to_dice"] + [results["memory_limit"]]:
        dice = r.get("test_dice", {}).get("mean")
        curve = ", ".join(f"{s:.0f}s: {d:.3f}" for s, d in r["history"])
        lines.append(f"| {r['run']} | {r['wall_s']} | {r['steps']} | {r['patch']} | {r['batch']} | {r['precision']} "
                     f"| {_number(dice, '.3f')} | {curve or '-'} | "
                     f"{_gb(r['gpu_memory'], 'peak_reserved_gb')} | {_gb(r['gpu_memory'], 'limit_gb')} |")
    lines += ["", "| data | loader | waits for data (share of step time) | s per step |", "| --- | --- | --- | --- |"]
    for r in results["data_wait"]:
        share = (r["data_loader"] or {}).get("data_wait_share")
        lines.append(f"| {r['run']} | {(r['data_loader'] or {}).get('workers')} worker(s) | "
                     f"{_number(share, '.1f', 100.0)} % | {r['train_s'] / max(1, r['steps']):.3f} |")
    p = results["prediction"]
    lines += ["", "| prediction | volume | sslseg s | plain MONAI s | ratio | peak reserved GB | predict() s |",
              "| --- | --- | --- | --- | --- | --- | --- |",
              f"| {p['patch']} windows | {'x'.join(map(str, p['volume']))} | {p['sslseg_s']} | {p['plain_monai_s']} | "
              f"{p['ratio']} | {p['peak_reserved_gb'] or '-'} | {p['predict_call_s']} |", ""]
    return "\n".join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the hippocampus folder (MSD Task04 layout)")
    parser.add_argument("--out", required=True, help="folder for results.json, results.md and the run logs")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny network, a few steps: checks the suite")
    parser.add_argument("--finetune-seconds", type=float, help="time limit of each time-to-Dice run "
                        "(default 120; smoke: 20)")
    parser.add_argument("--backbone", choices=("pretrain", "standin"), default="pretrain",
                        help="the backbone of the time-to-Dice run: the S3D run of section 1 or a random stand-in")
    parser.add_argument("--split-seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    from sslseg.device import resolve_device

    settings = dict(SMOKE if args.smoke else FULL)
    device, _ = resolve_device(settings["device"])
    settings["device"] = str(device)
    settings["logs"] = os.path.join(os.path.abspath(args.out), "logs")
    os.makedirs(settings["logs"], exist_ok=True)
    seconds = args.finetune_seconds or (20 if args.smoke else 120)
    started = time.monotonic()
    results = {"smoke": args.smoke, "machine": machine(device), "settings": settings,
               "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO),
                                                                        *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="sslseg-gpu-suite-") as work:
        train, val, test, everything = split(args.data, settings, args.split_seed)
        images = os.path.join(work, "unlabelled.txt")
        with open(images, "w", encoding="utf-8") as stream:  # every case but the test cases
            stream.writelines(p[0] + "\n" for p in everything if p not in test)
        results["pretraining"] = [pretrain(method, settings[f"{method}_steps"], images, os.path.join(work, method),
                                           settings) for method in ("s3d", "volf")]
        backbone = results["pretraining"][0]["checkpoint"] if args.backbone == "pretrain" else \
            standin_backbone(settings["arch"], os.path.join(work, "standin"))
        results["time_to_dice"] = time_to_dice(backbone, train, val, test, settings, seconds, work, device)
        results["memory_limit"] = finetune(f"max-memory-{settings['memory_limit_gb']}gb", "none", train, [],
                                           settings, work, ["--steps", settings["wait_steps"], "--max-memory-gb",
                                                            settings["memory_limit_gb"]])
        results["data_wait"] = data_wait(train, settings, work)
        results["prediction"] = prediction(results["time_to_dice"][0]["model"], test[0][0], settings, device, work)
    results["seconds"] = time.monotonic() - started
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as stream:
        json.dump(results, stream, indent=1)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as stream:
        stream.write(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
