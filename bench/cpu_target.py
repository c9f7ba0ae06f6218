"""The CPU target, side by side in one run: the default ``cpu`` preset (15-minute limit) against the plain MONAI
script (bench/plain_monai_baseline.py, 15 minutes), trained on the same 10 hippocampus cases and tested on the same
30 never-seen cases with the same Dice code.

    python bench/cpu_target.py [--minutes 15] [--parallel]

With ``--parallel`` (the default) both runs start at the same moment with one torch thread each, so that they share
the 2 cores and whatever load other jobs put on the machine equally; ``--sequential`` runs them one after the other
with the machine's threads each.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--sequential", dest="parallel", action="store_false")
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:ARGS",
                        help="another sslseg run in the same comparison, e.g. 'p32:--patch 32 48 32'")
    args = parser.parse_args()
    seconds = args.minutes * 60
    out = args.json_out or tempfile.mktemp(suffix=".jsonl")
    logs = args.log_dir or tempfile.mkdtemp()
    common = ["--train", "10", "--val", "5", "--test", str(args.test), "--json-out", out]
    ours = [sys.executable, os.path.join(HERE, "finetune_time_to_dice.py"), "--preset", "cpu", "--keep", "last",
            "--label", "sslseg-cpu-preset", *common]
    if args.minutes != 15:
        ours += ["--time-limit", str(seconds)]
    plain = [sys.executable, os.path.join(HERE, "plain_monai_baseline.py"), "--time-limit", str(seconds), *common]
    env = dict(os.environ)
    if args.parallel:
        env["SSLSEG_THREADS"] = "1"
        plain += ["--threads", "1"]
    started = time.time()
    runs = [(ours, "sslseg"), (plain, "plain")]
    for variant in args.variant:
        label, extra = variant.split(":", 1)
        command = [a if a != "sslseg-cpu-preset" else f"sslseg-{label}" for a in ours] + extra.split()
        runs.append((command, label))
    if args.parallel:
        procs = [subprocess.Popen(cmd, env=env, stdout=open(os.path.join(logs, f"{name}.out"), "w"),
                                  stderr=open(os.path.join(logs, f"{name}.err"), "w")) for cmd, name in runs]
        codes = [p.wait() for p in procs]
    else:
        codes = [subprocess.call(cmd, env=env, stdout=open(os.path.join(logs, f"{name}.out"), "w"),
                                 stderr=open(os.path.join(logs, f"{name}.err"), "w")) for cmd, name in runs]
    records = [json.loads(line) for line in open(out)] if os.path.exists(out) else []
    print(f"# {'parallel, 1 thread each' if args.parallel else 'sequential'}; {time.time() - started:.0f} s; "
          f"exit codes {codes}; logs in {logs}")
    print("| run | steps | training s | test Dice Anterior | Posterior | mean |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in records[-len(runs):]:
        d = r["test_dice"]
        print(f"| {r['label']} | {r['steps']} | {r['finetune_seconds']} | {d['per_label']['Anterior']:.3f} | "
              f"{d['per_label']['Posterior']:.3f} | {d['mean']:.3f} |")
    print("command: python bench/cpu_target.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
