"""The CPU target, side by side in one run: the product's default CPU command (15-minute limit) against the plain
MONAI script (bench/plain_monai_baseline.py, 15 minutes), trained on the same 10 hippocampus cases (a folder of 10
labelled cases and the product's default command, which trains on all of them below 20 cases) and tested on the
same 30 never-seen cases with the same Dice code. One use of bench/task_benchmark.py, which runs the same
comparison on any dataset folder.

    python bench/cpu_target.py [--minutes 15] [--parallel]

With ``--parallel`` (the default) both runs start at the same moment with one torch thread each, so that they share
the 2 cores and whatever load other jobs put on the machine equally; ``--sequential`` runs them one after the other
with the machine's threads each.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task_benchmark  # noqa: E402
from finetune_time_to_dice import DEFAULT_DATA  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--parallel", dest="parallel", action="store_true", default=True)
    mode.add_argument("--sequential", dest="parallel", action="store_false")
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--log-dir", default=None, help="folder for the logs, models and results (default: "
                                                        "bench/results/<task>-<time>)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:ARGS",
                        help="another sslseg run in the same comparison, e.g. 'p32:--patch 32 48 32'")
    parser.add_argument("--code", action="append", default=[], metavar="LABEL=DIR",
                        help="the default command from another sslseg source tree (e.g. the code before a change)")
    args = parser.parse_args(argv)
    forwarded = ["--data", args.data, "--minutes", f"{args.minutes:g}", "--train", "10", "--val", "auto",
                 "--test", str(args.test), "--parallel" if args.parallel else "--sequential", "--task", "hippocampus"]
    if args.json_out:
        forwarded += ["--json-out", args.json_out]
    if args.log_dir:
        forwarded += ["--out", args.log_dir]
    for variant in args.variant:
        forwarded += ["--variant", variant]
    for code in args.code:
        forwarded += ["--code", code]
    return task_benchmark.main(forwarded)


if __name__ == "__main__":
    main()
