"""Side by side on any dataset folder: the product's default CPU command against the plain MONAI script, trained on
the same cases for the same minutes and scored on the same never-seen test cases with the same Dice code.

    python bench/task_benchmark.py --data DIR [--minutes 15] [--train 10 --val 5 --test 30] [--parallel|--sequential]

The cases of DIR, sorted and permuted with --split-seed: the first --train + --val form the labelled folder both
methods get, the next --test are scored. The product runs as a user would run it on that folder:

    sslseg finetune --backbone none --data POOL --device cpu --val-cases VAL --time-limit SECONDS --out MODEL
    sslseg predict --model MODEL --input TEST_IMAGES --output PREDICTIONS --device cpu

(the cpu preset's defaults; it holds VAL of the cases out for validation by its own seeded rule). ``--val auto``:
the folder is the --train cases and ``--val-cases`` is left out, so the product's own default decides (every case
trains below 20 cases), exactly the command a user types. The plain script (bench/plain_monai_baseline.py)
trains on exactly the cases the product trains on, for the same time, and writes its test predictions too. Both
prediction folders are scored on each case's original grid by finetune_time_to_dice.score_folder. With --parallel
(the default) the runs start together with one thread each, so that they share the cores and any load from other
jobs equally; --sequential runs them one after the other.

Writes (under --out, default bench/results/<task>-<time>/): results.jsonl (one record per run), results.md (the
table), logs/, models/, predictions/, and the labelled folder pool/ (links to DIR's files). "training s" is the
product's own run time from model.json (reading, training, validation) and the plain script's time from its start
to the end of training; both are held to the same limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from finetune_time_to_dice import score_folder, split_cases  # noqa: E402

SSLSEG = [sys.executable, "-m", "sslseg"]


class Run:
    """One method in the comparison: the commands it runs one after the other, and where its outputs go."""

    def __init__(self, label, commands, predictions, log_dir, env=None, model=None, json_out=None, cwd=None):
        self.label, self.commands, self.predictions, self.env, self.cwd = label, commands, predictions, env, cwd
        self.model, self.json_out = model, json_out  # the product's model folder; the plain script's record file
        self.log = os.path.join(log_dir, f"{label}.log")
        self.codes, self.seconds = [], None

    def __call__(self):
        started = time.monotonic()
        with open(self.log, "w", encoding="utf-8") as log:
            for command in self.commands:
                log.write("$ " + shlex.join(command) + "\n")
                log.flush()
                self.codes.append(subprocess.call(command, env=self.env, cwd=self.cwd, stdout=log,
                                                  stderr=subprocess.STDOUT))
                if self.codes[-1]:
                    break
        self.seconds = time.monotonic() - started
        return self


# --- the labelled folder -------------------------------------------------------------------------------------

def make_pool(dataset, case_ids, folder) -> str:
    """A dataset folder holding only ``case_ids`` (symbolic links to the original files) and its dataset.json."""
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    meta_path = os.path.join(dataset.root, "dataset.json")
    meta = json.load(open(meta_path, encoding="utf-8")) if os.path.exists(meta_path) else {}
    by_id = {case.case_id: case for case in dataset.cases}
    entries = []
    for case_id in sorted(case_ids):
        case = by_id[case_id]
        if len(case.images) != 1:
            raise SystemExit(f"task_benchmark: case {case_id} has {len(case.images)} channels; one only")
        names = {}
        for sub, path in (("imagesTr", case.images[0]), ("labelsTr", case.label)):
            names[sub] = os.path.basename(path)
            os.symlink(os.path.abspath(path), os.path.join(folder, sub, names[sub]))
        entries.append({"image": f"./imagesTr/{names['imagesTr']}", "label": f"./labelsTr/{names['labelsTr']}"})
    meta.update({"numTraining": len(entries), "training": entries})
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)
    return folder


def product_split(pool, val, seed=0):
    """(train ids, validation ids) the product will use on ``pool``: its own split rule, asked in advance so that
    the plain script can train on the same cases (checked against model.json afterwards)."""
    from sslseg.datasets import load_dataset
    from sslseg.finetuning.data import split_cases as product_split_cases

    return product_split_cases([case.case_id for case in load_dataset(pool).cases], val, seed)


# --- the runs ------------------------------------------------------------------------------------------------

def sslseg_run(label, args, pool, test_images, out, extra=(), env=None, code=None) -> Run:
    """The product's two commands; ``code``: another source tree of sslseg to run them from (its folder)."""
    model = os.path.join(out, "models", label)
    predictions = os.path.join(out, "predictions", label)
    val = [] if args.val_cases is None else ["--val-cases", str(args.val_cases)]
    finetune = [*SSLSEG, "finetune", "--backbone", "none", "--data", pool, "--device", "cpu", *val,
                "--time-limit", f"{args.minutes * 60:g}", "--out", model, *extra]
    predict = [*SSLSEG, "predict", "--model", model, "--input", *test_images, "--output", predictions, "--device",
               "cpu", "--progress", "none"]
    if code:  # the tree comes first on sys.path: `python -m` puts the working folder there
        env = dict(env or os.environ, PYTHONPATH=code)
    return Run(label, [finetune, predict], predictions, os.path.join(out, "logs"), env, model, cwd=code)


def plain_run(args, train_ids, out) -> Run:
    predictions = os.path.join(out, "predictions", "plain-monai")
    json_out = os.path.join(out, "plain.jsonl")
    command = [sys.executable, os.path.join(HERE, "plain_monai_baseline.py"), "--data", args.data,
               "--train", str(args.train), "--val", str(args.held), "--test", str(args.test),
               "--split-seed", str(args.split_seed), "--train-ids", *train_ids,
               "--time-limit", f"{args.minutes * 60:g}", "--predictions", predictions,
               "--json-out", json_out]
    if args.parallel:
        command += ["--threads", "1"]
    return Run("plain-monai", [command], predictions, os.path.join(out, "logs"), json_out=json_out)


def runs_for(args, dataset, train_ids, test_ids, pool, out) -> list:
    by_id = {case.case_id: case for case in dataset.cases}
    test_images = [by_id[c].images[0] for c in test_ids]
    env = dict(os.environ, SSLSEG_THREADS="1") if args.parallel else None
    runs = [sslseg_run("sslseg-default", args, pool, test_images, out, env=env), plain_run(args, train_ids, out)]
    for variant in args.variant:
        label, _, extra = variant.partition(":")
        runs.append(sslseg_run(f"sslseg-{label}", args, pool, test_images, out, shlex.split(extra), env))
    for variant in args.code:
        label, _, tree = variant.partition("=")
        runs.append(sslseg_run(f"sslseg-{label}", args, pool, test_images, out, env=env,
                               code=os.path.abspath(tree)))
    return runs


# --- the results ---------------------------------------------------------------------------------------------

def record_for(run, dataset, test_ids, task, product_ids) -> dict:
    """One JSON record: the run's steps, training seconds and test Dice (or why it has none)."""
    record = {"task": task, "label": run.label, "exit_codes": run.codes, "wall_seconds": round(run.seconds, 1),
              "commands": [shlex.join(c) for c in run.commands], "log": run.log, "test_cases": test_ids}
    if run.model:
        meta_path = os.path.join(run.model, "model.json")
        if os.path.exists(meta_path):
            meta = json.load(open(meta_path, encoding="utf-8"))
            training = meta.get("training", {})
            record.update(steps=meta["recipe"]["steps_run"], train_seconds=training.get("seconds"),
                          patch=meta.get("patch_size"), network=meta.get("network", {}).get("name"),
                          train_cases=training.get("train_cases"), val_cases=training.get("val_cases"))
            if training.get("train_cases") is not None and sorted(training["train_cases"]) != sorted(product_ids):
                record["warning"] = "the product trained on other cases than the plain script"
    elif os.path.exists(run.json_out):
        with open(run.json_out, encoding="utf-8") as stream:
            last = [json.loads(line) for line in stream][-1]
        record.update(steps=last["steps"], train_seconds=last["finetune_seconds"], patch=last["plan"]["patch"],
                      network="DynUNet", plan=last["plan"], train_cases=last["train_cases"])
    if not any(run.codes):
        record["test_dice"] = score_folder(dataset, test_ids, run.predictions)
    return record


def table(records, names) -> str:
    lines = ["| task | method | steps | training s | " + " | ".join(names) + " | mean |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for r in records:
        dice = r.get("test_dice")
        if dice:
            cells = [f"{dice['per_label'][n]:.3f}" for n in names] + [f"{dice['mean']:.3f}"]
        else:
            cells = ["failed"] * (len(names) + 1)
        lines.append(f"| {r['task']} | {r['label']} | {r.get('steps', '-')} | {r.get('train_seconds', '-')} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (nnU-Net/MSD layout, one channel)")
    parser.add_argument("--minutes", type=float, default=15, help="training time of each method (default 15)")
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--val", type=held_out, default=5,
                        help="of the labelled cases, held out by the product for validation (the plain script does "
                             "not see them); 'auto': the product's default on a folder of --train cases")
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--split-seed", type=int, default=0)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--parallel", dest="parallel", action="store_true", default=True,
                      help="both runs at once, one thread each (default)")
    mode.add_argument("--sequential", dest="parallel", action="store_false", help="one after the other")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:ARGS",
                        help="another sslseg run in the same comparison, e.g. 'p32:--patch 32 48 32'")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                        help="the default command run from another sslseg source tree, e.g. the code before a "
                             "change: 'before=/tmp/old' after 'git archive COMMIT | tar -x -C /tmp/old'")
    parser.add_argument("--out", help="output folder (default bench/results/<task>-<time>)")
    parser.add_argument("--json-out", help="also append the records to this JSON lines file")
    parser.add_argument("--task", help="task name in the table (default: the data folder's name)")
    args = parser.parse_args(argv)
    args.val_cases = None if args.val == "auto" else args.val  # the product's option; None: its default
    args.held = args.val_cases or 0  # cases beside --train in the labelled folder
    return args


def held_out(text):
    return text if text == "auto" else int(text)


def main(argv=None, command="python bench/task_benchmark.py"):
    args = parse_args(argv)
    args.data = os.path.abspath(args.data)
    task = args.task or os.path.basename(args.data.rstrip(os.sep))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(REPO, "bench", "results", f"{task}-{stamp}"))
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"task_benchmark: {out} is not empty; give a new --out")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    dataset, train_ids, val_ids, test_ids = split_cases(args.data, args.train, args.held, args.test, args.split_seed)
    pool = make_pool(dataset, train_ids + val_ids, os.path.join(out, "pool"))
    product_train, _ = product_split(pool, args.val_cases)
    runs = runs_for(args, dataset, product_train, test_ids, pool, out)
    started = time.time()
    with ThreadPoolExecutor(len(runs) if args.parallel else 1) as pool_of_runs:
        finished = list(pool_of_runs.map(lambda run: run(), runs))
    setting = {"minutes": args.minutes, "mode": "parallel, 1 thread each" if args.parallel else "sequential",
               "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, load after "
                          f"{os.getloadavg()[0]:.1f}"}
    records = [{**record_for(run, dataset, test_ids, task, product_train), **setting} for run in finished]
    names = [dataset.label_names[v] for v in sorted(dataset.label_names)]
    text = table(records, names)
    full_command = command + " " + shlex.join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(out, "results.jsonl"), "a", encoding="utf-8") as stream:
        stream.writelines(json.dumps({**r, "command": full_command}) + "\n" for r in records)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as stream:
            stream.writelines(json.dumps({**r, "command": full_command}) + "\n" for r in records)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as stream:
        stream.write(text + "\n\ncommand: " + full_command + "\n")
    print(f"# {task}: {setting['mode']}; "
          f"{time.time() - started:.0f} s; exit codes {[r.codes for r in finished]}; results in {out}")
    print(text)
    print("command: " + full_command)
    return records


if __name__ == "__main__":
    main()
