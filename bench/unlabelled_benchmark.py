"""Side by side at equal total time: ``sslseg finetune`` on the labelled cases alone against the same command with
``--unlabelled`` (the other cases' images, their labels never read), scored on the same never-seen test cases.

    python bench/unlabelled_benchmark.py --data DIR [--minutes 10] [--train 10 --unlabelled 60 --test 30]

The cases of DIR, sorted and permuted with --split-seed (bench/finetune_time_to_dice.split_cases): the first --train
form the labelled folder, the next --test are scored, and --unlabelled of the rest become a list file of images. The
two commands, run at the same moment with one torch thread each (SSLSEG_THREADS=1) so that they share the cores and
any other load equally:

    sslseg finetune --backbone none --data POOL --device cpu --time-limit SECONDS --out MODEL
    sslseg finetune --backbone none --data POOL --device cpu --time-limit SECONDS --out MODEL --unlabelled LIST

each followed by ``sslseg predict`` on the test images. ``--code LABEL=DIR`` adds the --unlabelled command run from
another source tree (e.g. one with another time split). Writes results.jsonl and results.md under --out (default
bench/results/unlabelled-<task>-<time>/); "total s" is the whole fine-tuning command's own time (model.json:
training.seconds, or unlabelled.seconds.total with --unlabelled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from finetune_time_to_dice import score_folder, split_cases  # noqa: E402
from task_benchmark import SSLSEG, Run, make_pool, sslseg_run  # noqa: E402


def write_list(dataset, case_ids, path) -> str:
    """A list file of the images of ``case_ids`` (absolute paths, one a line)."""
    by_id = {case.case_id: case for case in dataset.cases}
    with open(path, "w", encoding="utf-8") as stream:
        stream.writelines(os.path.abspath(by_id[c].images[0]) + "\n" for c in case_ids)
    return path


def arms(args, dataset, pool, test_ids, unlabelled_list, out) -> list:
    by_id = {case.case_id: case for case in dataset.cases}
    test_images = [by_id[c].images[0] for c in test_ids]
    env = dict(os.environ, SSLSEG_THREADS="1")
    settings = SimpleNamespace(val_cases=None, minutes=args.minutes)
    extra = ["--unlabelled", unlabelled_list, "--seed", str(args.seed)]
    runs = [sslseg_run("labelled-only", settings, pool, test_images, out, ["--seed", str(args.seed)], env),
            sslseg_run("unlabelled", settings, pool, test_images, out, extra, env)]
    if args.pretrain_steps:
        runs.append(pretrain_arm(args, pool, test_images, unlabelled_list, out, env))
    for variant in args.code:
        label, _, tree = variant.partition("=")
        runs.append(sslseg_run(f"unlabelled-{label}", settings, pool, test_images, out, extra, env,
                               code=os.path.abspath(tree)))
    return runs


def pretrain_arm(args, pool, test_images, unlabelled_list, out, env) -> Run:
    """S3D pretraining on labelled + unlabelled images, then fine-tuning from it, in the same total time."""
    label = f"s3d-{args.pretrain_steps}-then-finetune"
    model = os.path.join(out, "models", label)
    predictions = os.path.join(out, "predictions", label)
    both = [sys.executable, os.path.join(HERE, "pretrain_then_finetune.py"), "--data", pool, "--unlabelled",
            unlabelled_list, "--total", f"{args.minutes * 60:g}", "--steps", str(args.pretrain_steps), "--out", model,
            "--seed", str(args.seed)]
    predict = [*SSLSEG, "predict", "--model", model, "--input", *test_images, "--output", predictions, "--device",
               "cpu", "--progress", "none"]
    return Run(label, [both, predict], predictions, os.path.join(out, "logs"), env, model)


def phase_seconds(log) -> dict | None:
    """The JSON line bench/pretrain_then_finetune.py prints last, if the log has one."""
    with open(log, encoding="utf-8") as stream:
        lines = [line for line in stream if line.startswith('{"pretrain_seconds"')]
    return json.loads(lines[-1]) if lines else None


def record_for(run, dataset, test_ids) -> dict:
    record = {"label": run.label, "exit_codes": run.codes, "wall_seconds": round(run.seconds, 1),
              "commands": [shlex.join(c) for c in run.commands], "log": run.log}
    meta_path = os.path.join(run.model, "model.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as stream:
            meta = json.load(stream)
        unlabelled = meta.get("unlabelled")
        record.update(steps=meta["recipe"]["steps_run"], unlabelled=unlabelled,
                      total_seconds=(unlabelled or {}).get("seconds", {}).get("total")
                      or meta["training"]["seconds"])
        phases = phase_seconds(run.log)
        if phases:
            record.update(total_seconds=phases["total_seconds"], unlabelled={
                "images": None, "used": None, "seconds": {"pretrain": phases["pretrain_seconds"],
                                                          "finetune": meta["training"]["seconds"]}})
    if not any(run.codes):
        record["test_dice"] = score_folder(dataset, test_ids, run.predictions)
    return record


def table(records, names) -> str:
    lines = ["| method | total s | phases (s) | pseudo-labelled used | " + " | ".join(names) + " | mean |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |"]
    for r in records:
        dice = r.get("test_dice")
        cells = ([f"{dice['per_label'][n]:.3f}" for n in names] + [f"{dice['mean']:.3f}"]) if dice else \
            ["failed"] * (len(names) + 1)
        unlabelled = r.get("unlabelled") or {}
        phases = ", ".join(f"{k} {v}" for k, v in unlabelled.get("seconds", {}).items() if k != "total") or "-"
        used = f"{unlabelled['used']} of {unlabelled['images']}" if unlabelled.get("images") else "-"
        lines.append(f"| {r['label']} | {r.get('total_seconds', '-')} | {phases} | {used} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder (nnU-Net/MSD layout, one channel)")
    parser.add_argument("--minutes", type=float, default=10, help="total time of each command (default 10)")
    parser.add_argument("--train", type=int, default=10, help="labelled cases")
    parser.add_argument("--unlabelled", type=int, default=60, help="cases given as unlabelled images")
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the product's --seed")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                        help="the --unlabelled command from another sslseg source tree")
    parser.add_argument("--pretrain-steps", type=int, default=0, metavar="N",
                        help="also the self-supervised alternative: N S3D pretraining steps on all the images, then "
                             "fine-tuning for the time left (bench/pretrain_then_finetune.py)")
    parser.add_argument("--out", help="output folder (default bench/results/unlabelled-<task>-<time>)")
    parser.add_argument("--task", help="task name (default: the data folder's name)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.data = os.path.abspath(args.data)
    task = args.task or os.path.basename(args.data.rstrip(os.sep))
    out = os.path.abspath(args.out or os.path.join(REPO, "bench", "results",
                                                   f"unlabelled-{task}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"unlabelled_benchmark: {out} is not empty; give a new --out")
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    dataset, train_ids, _, test_ids = split_cases(args.data, args.train, 0, args.test, args.split_seed)
    used = set(train_ids) | set(test_ids)
    rest = [c.case_id for c in dataset.cases if c.case_id not in used]
    if len(rest) < args.unlabelled:
        raise SystemExit(f"unlabelled_benchmark: only {len(rest)} cases left for --unlabelled {args.unlabelled}")
    unlabelled_list = write_list(dataset, rest[:args.unlabelled], os.path.join(out, "unlabelled.txt"))
    pool = make_pool(dataset, train_ids, os.path.join(out, "pool"))
    runs = arms(args, dataset, pool, test_ids, unlabelled_list, out)
    with ThreadPoolExecutor(len(runs)) as executor:
        finished = list(executor.map(lambda run: run(), runs))
    setting = {"task": task, "minutes": args.minutes, "train": args.train, "unlabelled_cases": args.unlabelled,
               "test_cases": test_ids, "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores "
                                                 f"(shared), load after {os.getloadavg()[0]:.1f}"}
    records = [{**record_for(run, dataset, test_ids), **setting} for run in finished]
    names = [dataset.label_names[v] for v in sorted(dataset.label_names)]
    text = table(records, names)
    command = "python bench/unlabelled_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    with open(os.path.join(out, "results.jsonl"), "a", encoding="utf-8") as stream:
        stream.writelines(json.dumps({**r, "command": command}) + "\n" for r in records)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as stream:
        stream.write(text + "\n\ncommand: " + command + "\n")
    print(f"# {task}: {len(runs)} commands side by side, 1 thread each; results in {out}")
    print(text)
    print("command: " + command)
    return records


if __name__ == "__main__":
    main()
