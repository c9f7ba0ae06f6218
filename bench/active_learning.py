"""Does annotating the most uncertain cases help? Active learning on hippocampus: uncertainty-chosen versus randomly
chosen cases, at the same annotation budget.

    python bench/active_learning.py --minutes 5 --seeds 0 1 2 --pool 30 --test 20
    python bench/active_learning.py --smoke          # the whole protocol in about a minute (tiny network)

Protocol (uncertainty sampling, Settles 2009, "Active Learning Literature Survey", section 3.1): the 100 cases are
split once (--split-seed) into --test never-seen test cases and the rest. For each seed, --initial labelled cases
and a pool of --pool unlabelled cases are drawn from the rest; a model is trained on the initial cases (the cpu
preset, --minutes of training); it ranks the pool by uncertainty (``sslseg.ranking.rank_cases``); --add cases are
then added either by uncertainty (the top of the ranking) or at random (seeded), and a model is trained again from
the same start on each enlarged set, for the same time. All three models are scored by Dice on the test cases.
The pool's ground truth also tells how well the uncertainty score finds the cases the first model gets wrong
(Spearman correlation of score and 1 - Dice).

Prints the command first, then one line per seed, then the Markdown table; writes one JSON file (every run, the
settings, the command) and the Markdown table to --json-out and --md-out (by default
docs/results/active_learning.{json,md}; a --smoke run writes only where asked: it measures nothing).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling benchmark scripts
sys.path.insert(1, REPO)
# --smoke: the same protocol on a tiny network and tiny sets, to check the script end to end in about a minute
SMOKE = {"preset": "test", "steps": 6, "minutes": 0.0, "initial": 2, "add": 1, "pool": 3, "test": 2, "seeds": [0]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="hippocampus dataset folder (MSD Task04 layout)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time of each model (default 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one run each (default 0 1 2)")
    parser.add_argument("--pool", type=int, default=30, help="unlabelled cases to choose from (default 30)")
    parser.add_argument("--test", type=int, default=20, help="never-seen test cases (default 20)")
    parser.add_argument("--initial", type=int, default=5, help="labelled cases to start from (default 5)")
    parser.add_argument("--add", type=int, default=5, help="cases added per strategy (default 5)")
    parser.add_argument("--preset", default="cpu", help="fine-tuning preset (default cpu)")
    parser.add_argument("--steps", type=int, help="fixed step count instead of --minutes")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the test split (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA for the test Dice (ranking always uses it)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, about a minute: checks the script")
    parser.add_argument("--json-out", help="JSON result file (default docs/results/active_learning.json)")
    parser.add_argument("--md-out", help="Markdown table file (default docs/results/active_learning.md)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.initial + args.pool + args.test > 100 or min(args.initial, args.add, args.pool, args.test) < 1 \
            or args.add > args.pool:
        parser.error("need 1 <= --add <= --pool and --initial + --pool + --test <= the number of cases")
    return args


def split(dataset, args, seed):
    """(initial ids, pool ids, test ids): the test cases fixed by --split-seed, the rest drawn by ``seed``."""
    ids = sorted(case.case_id for case in dataset.cases)
    order = [ids[i] for i in np.random.default_rng(args.split_seed).permutation(len(ids))]
    test, rest = order[:args.test], order[args.test:]
    rest = [rest[i] for i in np.random.default_rng(1000 + seed).permutation(len(rest))]
    return rest[:args.initial], rest[args.initial:args.initial + args.pool], test


def train(args, ids, out, seed):
    from sslseg.finetuning import finetune

    started = time.monotonic()
    finetune("none", data=args.data, out=out, preset=args.preset, device=args.device, steps=args.steps,
             time_limit=None if args.steps else args.minutes * 60, seed=seed, progress="none",
             train_case_ids=list(ids), val_case_ids=[])
    return round(time.monotonic() - started, 1)


def spearman(a, b) -> float | None:
    """Rank correlation (no ties expected in continuous scores); None when undefined."""
    if len(a) < 3:
        return None
    ranks = [np.argsort(np.argsort(np.asarray(x, float))) for x in (a, b)]
    value = np.corrcoef(*ranks)[0, 1]
    return None if not np.isfinite(value) else round(float(value), 3)


def rank_pool(args, model, dataset, pool, folder):
    """The pool's case ids ranked by the first model (most uncertain first), and each pool case's (score, Dice of
    the first model's segmentation, mean over labels)."""
    from sslseg.finetuning.evaluation import dice_per_class
    from sslseg.imageio import read_image
    from sslseg.ranking import rank_cases

    by_id = {case.case_id: case for case in dataset.cases}
    by_image = {os.path.realpath(by_id[c].images[0]): c for c in pool}
    # ranking as the product does it (mirroring on: the uncertainty is measured over the mirrorings), except in the
    # smoke run, which only checks the script
    ranking = rank_cases(model, [by_id[c].images[0] for c in pool], folder, device=args.device,
                         tta=False if args.smoke else None)
    values = [int(label["value"]) for label in json.load(open(os.path.join(model, "model.json")))["labels"]]
    lookup = np.zeros(256, np.int64)  # label value -> class index
    lookup[values] = np.arange(1, len(values) + 1)
    ranked, pool_dice = [], {}
    for entry in ranking:
        case_id = by_image[os.path.realpath(entry["input"])]
        predicted, truth = read_image(entry["segmentation"])[0], read_image(by_id[case_id].label)[0]
        scores = dice_per_class(lookup[predicted.astype(np.int64)], lookup[truth.astype(np.int64)], len(values) + 1)
        ranked.append(case_id)
        pool_dice[case_id] = (entry["score"], float(np.mean(scores)))
    return ranked, pool_dice


def one_seed(args, dataset, seed, scratch):
    from finetune_time_to_dice import test_dice

    initial, pool, test = split(dataset, args, seed)
    folder = os.path.join(scratch, f"seed{seed}")
    base = os.path.join(folder, "initial")
    record = {"seed": seed, "initial": initial, "test": test,
              "seconds": {"initial": train(args, initial, base, seed)}}
    ranked_ids, pool_dice = rank_pool(args, base, dataset, pool, os.path.join(folder, "ranked"))
    chosen = {"uncertainty": ranked_ids[:args.add],
              "random": [pool[i] for i in np.random.default_rng(seed).choice(len(pool), args.add, replace=False)]}
    record["chosen"] = chosen
    record["pool"] = {c: {"score": s, "dice": round(d, 4)} for c, (s, d) in pool_dice.items()}
    record["pool_spearman_score_vs_error"] = spearman([s or 0.0 for s, _ in pool_dice.values()],
                                                      [1 - d for _, d in pool_dice.values()])
    record["test_dice"] = {"initial": test_dice(base, dataset, test, tta=args.tta, device=args.device)}
    for strategy, added in chosen.items():
        out = os.path.join(folder, strategy)
        record["seconds"][strategy] = train(args, initial + added, out, seed)
        record["test_dice"][strategy] = test_dice(out, dataset, test, tta=args.tta, device=args.device)
    print(json.dumps({"seed": seed, **{k: v["mean"] for k, v in record["test_dice"].items()}}), flush=True)
    return record


def summary(runs) -> dict:
    """Mean and standard deviation of the test Dice per strategy, and of the paired gain of uncertainty."""
    def stats(values):
        values = np.asarray(values, float)
        return {"mean": round(float(values.mean()), 4), "sd": round(float(values.std(ddof=1)), 4) if len(values) > 1
                else None}

    result = {name: stats([r["test_dice"][name]["mean"] for r in runs]) for name in ("initial", "random",
                                                                                      "uncertainty")}
    result["gain_uncertainty_minus_random"] = stats([r["test_dice"]["uncertainty"]["mean"] -
                                                     r["test_dice"]["random"]["mean"] for r in runs])
    return result


def markdown(record) -> str:
    s = record["settings"]
    lines = [f"Active learning on hippocampus: {s['initial']} labelled cases + {s['add']} chosen from a pool of "
             f"{s['pool']}, test Dice on {s['test']} never-seen cases; preset {s['preset']}, "
             f"{str(s['steps']) + ' steps' if s['steps'] else str(s['minutes']) + ' min'} per model, "
             f"{record['machine']}.", "",
             "| seed | initial | + random | + uncertainty | gain | pool Spearman (score vs 1-Dice) |",
             "|---|---|---|---|---|---|"]
    for run in record["runs"]:
        d = {k: v["mean"] for k, v in run["test_dice"].items()}
        lines.append(f"| {run['seed']} | {d['initial']:.3f} | {d['random']:.3f} | {d['uncertainty']:.3f} | "
                     f"{d['uncertainty'] - d['random']:+.3f} | {run['pool_spearman_score_vs_error']} |")
    m = record["summary"]
    lines.append(f"| mean | {m['initial']['mean']:.3f} | {m['random']['mean']:.3f} | {m['uncertainty']['mean']:.3f}"
                 f" | {m['gain_uncertainty_minus_random']['mean']:+.3f} | |")
    lines += ["", f"Command: `{record['command']}`", ""]
    return "\n".join(lines)


def write_outputs(record, args):
    """The JSON record and the Markdown table: where asked, else in docs/results (a smoke run writes only where
    asked: it measures nothing)."""
    folder = None if args.smoke else os.path.join(REPO, "docs", "results")
    json_out = args.json_out or (folder and os.path.join(folder, "active_learning.json"))
    md_out = args.md_out or (folder and os.path.join(folder, "active_learning.md"))
    targets = [(json_out, json.dumps(record, indent=1)), (md_out, markdown(record))]
    print(markdown(record))
    for path, text in targets:
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text + "\n")
            print(f"written: {path}")


def main(argv=None):
    args = parse_args(argv)
    import torch

    from sslseg.datasets import load_dataset

    command = "python " + " ".join(shlex.quote(a) for a in (sys.argv if argv is None else [__file__, *argv]))
    print(command, flush=True)
    dataset = load_dataset(args.data)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sslseg-al-") as scratch:
        runs = [one_seed(args, dataset, seed, scratch) for seed in args.seeds]
        record = {"settings": {k: getattr(args, k) for k in ("initial", "add", "pool", "test", "minutes", "steps",
                                                              "preset", "seeds", "split_seed", "device", "tta")},
                  "runs": runs, "summary": summary(runs), "seconds": round(time.monotonic() - started, 1),
                  "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
                  "command": command}
    write_outputs(record, args)
    return record


if __name__ == "__main__":
    main()
