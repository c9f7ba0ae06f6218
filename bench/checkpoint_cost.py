"""What a fine-tuning checkpoint (``sslseg finetune --resume``) costs: a real cpu-preset run on hippocampus that
checkpoints every few seconds, and the time of each atomic checkpoint write (torch.save of weights, optimiser
state and kept weights to a hidden file, fsync, check, rename) against the run's 15-minute budget.

    python bench/checkpoint_cost.py --cases 10 --steps 60 --every 5

Prints the command, the checkpoint size and the seconds of each write, and the share of a 900 s run that the
default interval (300 s: 3 checkpoints) costs. The machine may be shared: say so with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "Task04_Hippocampus")
sys.path.insert(0, REPO)
sys.path.insert(1, os.path.join(REPO, "Testing"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=float, default=5.0, help="checkpoint interval of the measured run (s)")
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args(argv)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    from conftest import copy_dataset_subset
    from sslseg.finetuning.resume import CHECKPOINT_EVERY

    with tempfile.TemporaryDirectory() as root:
        copy_dataset_subset(args.data, os.path.join(root, "data"), args.cases)
        out = os.path.join(root, "model")
        command = [sys.executable, "-m", "sslseg", "finetune", "--data", os.path.join(root, "data"), "--out", out,
                   "--preset", args.preset, "--device", "cpu", "--steps", str(args.steps), "--checkpoint-every",
                   str(args.every), "--progress", "json"]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
        if result.returncode:
            sys.exit(result.stderr[-2000:])
        events = [json.loads(line) for line in result.stdout.splitlines()]
        costs = [e for e in events if e.get("event") == "log" and "checkpoint(s)" in e.get("message", "")]
        meta = json.load(open(os.path.join(out, "model.json"), encoding="utf-8"))
    print(costs[-1]["message"] if costs else "no checkpoint was written (raise --steps or lower --every)")
    print(f"run: {meta['training']['train_seconds']} s of training, {meta['recipe']['steps_run']} steps, "
          f"network {meta['network'].get('name')}")
    if costs:
        mean = float(costs[-1]["message"].split("mean ")[1].split(" s")[0])
        count = 900.0 / CHECKPOINT_EVERY
        print(f"default interval {CHECKPOINT_EVERY:g} s: {count:g} checkpoints in a 900 s run cost "
              f"{count * mean:.2f} s = {100 * count * mean / 900:.2f} % of it")


if __name__ == "__main__":
    main()
