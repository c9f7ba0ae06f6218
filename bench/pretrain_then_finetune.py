"""The self-supervised alternative to ``--unlabelled``, as two existing commands within one total time: S3D
pretraining on the labelled and unlabelled images (the fine-tuning network ResEncXS-cpu, the cpu preset's patch,
1 mm spacing: hippocampus's own), then fine-tuning from that backbone for whatever time is left.

    python bench/pretrain_then_finetune.py --data POOL --unlabelled LIST --total SECONDS --steps N --out MODEL

``sslseg pretrain`` has no time limit, so its ``--steps`` are chosen to take about the share wanted; the fine-tuning
gets the total minus the pretraining's measured wall time. Used as an arm of bench/unlabelled_benchmark.py
(``--pretrain-steps``). Prints one JSON line: the seconds of each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SSLSEG = [sys.executable, "-m", "sslseg"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--unlabelled", required=True, help="list file of unlabelled images")
    parser.add_argument("--total", type=float, required=True, help="seconds for both phases")
    parser.add_argument("--steps", type=int, required=True, help="pretraining steps")
    parser.add_argument("--method", default="s3d")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = args.out + ".pretraining"
    images = os.path.join(os.path.dirname(os.path.abspath(args.out)), "pretrain_images.txt")
    os.makedirs(os.path.dirname(images), exist_ok=True)
    labelled = sorted(os.path.join(args.data, "imagesTr", n) for n in os.listdir(os.path.join(args.data, "imagesTr")))
    with open(args.unlabelled, encoding="utf-8") as stream:
        unlabelled = [line.strip() for line in stream if line.strip()]
    with open(images, "w", encoding="utf-8") as stream:
        stream.writelines(os.path.realpath(p) + "\n" for p in labelled + unlabelled)
    pretrain = [*SSLSEG, "pretrain", "--method", args.method, "--images", images, "--out", work, "--arch",
                "ResEncXS-cpu", "--patch", "32", "48", "32", "--batch", "2", "--spacing", "1", "--steps",
                str(args.steps), "--device", "cpu", "--workers", "0", "--seed", str(args.seed)]
    print("$ " + " ".join(pretrain), flush=True)
    code = subprocess.call(pretrain)
    pretrain_seconds = time.monotonic() - started
    if code:
        return code
    rest = max(30.0, args.total - pretrain_seconds)
    finetune = [*SSLSEG, "finetune", "--backbone", os.path.join(work, "checkpoint_final.pth"), "--data", args.data,
                "--device", "cpu", "--time-limit", f"{rest:.0f}", "--out", args.out, "--seed", str(args.seed)]
    print("$ " + " ".join(finetune), flush=True)
    code = subprocess.call(finetune)
    print(json.dumps({"pretrain_seconds": round(pretrain_seconds, 1), "finetune_limit": round(rest, 1),
                      "total_seconds": round(time.monotonic() - started, 1)}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
