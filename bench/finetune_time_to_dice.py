"""Time-to-Dice of fine-tuning on hippocampus cases: train on N cases, follow the validation Dice against wall time,
then measure the mean Dice of the kept model on test cases never used for training or validation.

    python bench/finetune_time_to_dice.py --backbone none --preset cpu --train 10 --val 5 --test 30 --time-limit 900

Prints one JSON line per run (and appends it to --json-out) with the Dice-versus-time history, the final test Dice
per label and the command that produced it. Case split: the 100 cases sorted, permuted with --split-seed; the first
--train are for training, the next --val for validation, the next --test for testing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "Task04_Hippocampus")


def split_cases(data, train, val, test, seed):
    from sslseg.datasets import load_dataset

    dataset = load_dataset(data)
    ids = sorted(case.case_id for case in dataset.cases)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    if train + val + test > len(order):
        raise SystemExit(f"only {len(order)} cases")
    return dataset, order[:train], order[train:train + val], order[train + val:train + val + test]


def label_values(dataset) -> list:
    """Label values of a dataset, background first: class index i is value ``label_values(dataset)[i]``."""
    return [0] + sorted(dataset.label_names)


def case_dice(predicted, truth, values) -> list:
    """Dice per foreground label of one case: both maps (label values) compared as class indices; a value that the
    dataset does not list counts as background."""
    from sslseg.finetuning.evaluation import dice_per_class

    if predicted.shape != truth.shape:
        raise SystemExit(f"prediction shape {predicted.shape} differs from the label's {truth.shape}")
    table = np.zeros(256, np.int64)
    table[np.asarray(values)] = np.arange(len(values))
    as_index = [table[np.clip(np.rint(a).astype(np.int64), 0, 255)] for a in (predicted, truth)]
    return dice_per_class(*as_index, len(values))


def summarise(scores, names, seconds=None) -> dict:
    """Mean Dice per label over the cases (rows of ``scores``) and their mean."""
    scores = np.asarray(scores)
    result = {"per_label": {name: float(s) for name, s in zip(names, scores.mean(axis=0))},
              "mean": float(scores.mean()), "cases": len(scores)}
    if seconds is not None:
        result["seconds"] = round(seconds, 1)
    return result


def score_folder(dataset, test_ids, folder) -> dict:
    """Test Dice of the label files ``folder/<case>.nii.gz`` (on each case's original grid) against the dataset's
    labels: the one Dice code for every method."""
    import SimpleITK as sitk

    by_id = {case.case_id: case for case in dataset.cases}
    values = label_values(dataset)
    scores = []
    for case_id in test_ids:
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, case_id + ".nii.gz")))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(by_id[case_id].label))
        scores.append(case_dice(predicted, truth, values))
    return summarise(scores, [dataset.label_names[v] for v in values[1:]])


def test_dice(model_dir, dataset, test_ids, tta=False, device="cpu"):
    """Mean Dice per label on the original grids of the test cases, through the product's predict path."""
    import torch

    from sslseg.inference import segment_array
    from sslseg.model_folder import load_model
    from sslseg.preprocessing import read_channels, read_label

    model = load_model(model_dir)
    device = torch.device(device)
    model.network.to(device).eval()
    values = [int(v) for v in model.label_values_array()]
    by_id = {case.case_id: case for case in dataset.cases}
    scores = []
    started = time.monotonic()
    for case_id in test_ids:
        case = by_id[case_id]
        image, geometry = read_channels(case.images, case_id, model.in_channels)
        truth = read_label(case.label, case_id, geometry)
        labels = segment_array(model, image, geometry, device, overlap=0.5, tta=tta)
        scores.append(case_dice(labels, truth, values))
    return summarise(scores, [label["name"] for label in model.labels], time.monotonic() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--backbone", default="none")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--val", type=int, default=5)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--patch", type=int, nargs=3)
    parser.add_argument("--arch", help="network for --backbone none (default: the preset's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-lr", type=float)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"))
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (GPU runs also report memory peaks)")
    parser.add_argument("--keep", choices=("best", "last"), default="last")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA for the test Dice")
    parser.add_argument("--label", default="", help="name of this run in the output")
    parser.add_argument("--json-out")
    parser.add_argument("--keep-model", help="copy the model folder here")
    args = parser.parse_args(argv)

    from sslseg.finetuning import finetune
    from sslseg.progress import Reporter

    dataset, train_ids, val_ids, test_ids = split_cases(args.data, args.train, args.val, args.test, args.split_seed)
    import torch

    from sslseg.device import resolve_device

    device, _ = resolve_device(args.device)
    cuda = device.type == "cuda"
    memory = {}

    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep_model or os.path.join(scratch, "model")
        started = time.monotonic()
        finetune(args.backbone, data=args.data, out=out, preset=args.preset, device=str(device), steps=args.steps,
                 seed=args.seed, progress=Reporter("bar", prefix=args.label or "bench"), time_limit=args.time_limit,
                 batch_size=args.batch_size, patch_size=args.patch, max_lr=args.max_lr, optimizer=args.optimizer,
                 train_case_ids=train_ids, val_case_ids=val_ids, keep_best=args.keep == "best", arch=args.arch)
        seconds = time.monotonic() - started
        if cuda:
            memory["train_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
            torch.cuda.reset_peak_memory_stats(device)
        meta = json.load(open(os.path.join(out, "model.json")))
        result = test_dice(out, dataset, test_ids, tta=args.tta, device=device)
        if cuda:
            memory["inference_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    record = {
        "label": args.label, "backbone": args.backbone, "preset": args.preset,
        "finetune_seconds": round(seconds, 1), "steps": meta["recipe"]["steps_run"],
        "patch": meta["patch_size"], "batch": meta["recipe"]["batch_size"], "optimizer": meta["recipe"]["optimizer"],
        "max_lr": meta["recipe"]["schedule"]["max_lr"], "network": meta["network"]["name"],
        "history": [(h["seconds"], round(h["mean_dice"], 4)) for h in meta["validation"]["history"]],
        "test_dice": result, "device": str(device), **memory, "train_cases": train_ids, "val_cases": val_ids, "test_cases": len(test_ids),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, torch threads "
                   f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    line = json.dumps(record)
    print(line, flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as stream:
            stream.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
