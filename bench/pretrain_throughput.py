"""Pretraining throughput (samples/s) per method and architecture, and DDP scaling from 1 to 2 processes.

Runs the real ``sslseg pretrain`` code (data pipeline, masks / fusion, forward, backward, optimiser step) on real
hippocampus MRI and times the steps after a warm-up from the progress events (validation and start-up excluded).
Prints the machine, the command and one line per configuration; ``--json-out`` keeps the figures.

    python bench/pretrain_throughput.py                                  # CPU: T/S presets, 3 methods, DDP 1->2
    python bench/pretrain_throughput.py --archs ResEncL --patch 64 --steps 4 --warmup 1 --no-ddp
    python bench/pretrain_throughput.py --device cuda --archs ResEncL --patch 160 --batch 2   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEFAULT_IMAGES = os.path.join(os.path.dirname(REPO), "shared", "data", "Task04_Hippocampus", "imagesTr")
DEFAULT_PATCH = {"ResEncT-test": 32, "ResEncS-cpu": 64, "ResEncL": 64}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next(line.split(":", 1)[1].strip() for line in stream if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}, load average at start {os.getloadavg()[0]:.2f}")


def image_list(folder: str, count: int, directory: str) -> str:
    names = sorted(n for n in os.listdir(folder) if n.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))[:count]
    path = os.path.join(directory, "images.txt")
    with open(path, "w") as stream:
        stream.writelines(os.path.join(folder, n) + "\n" for n in names)
    return path


def rate_from_events(events, warmup: int, batch: int, processes: int):
    """samples/s between the progress events of step ``warmup`` and of the last step."""
    progress = {e["step"]: e["elapsed"] for e in events if e.get("event") == "progress"}
    last = max(progress)
    seconds = progress[last] - progress[warmup]
    return (last - warmup) * batch * processes / seconds, seconds / (last - warmup)


class _Recorder:
    """Collects the JSON events the trainer emits (in-process runs)."""

    def __init__(self):
        self.lines = []

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass

    def events(self):
        return [json.loads(line) for line in "".join(self.lines).splitlines() if line.strip()]


def single_process(method, arch, patch, batch, steps, warmup, device, images, workdir, workers):
    import sslseg
    from sslseg.pretraining.reporting import PretrainReporter

    out = os.path.join(workdir, f"{method}-{arch}")
    shutil.rmtree(out, ignore_errors=True)
    recorder = _Recorder()
    sslseg.pretrain(method, images=images, out=out, arch=arch, steps=steps, batch=batch, patch=patch,
                    device=device, progress=PretrainReporter("json", stream=recorder), report_every=1,
                    val_every=steps, save_every=10 ** 9, workers=workers, val_batch=1)
    return rate_from_events(recorder.events(), warmup, batch, 1)


def torchrun(processes, threads, method, arch, patch, batch, steps, warmup, images, workdir):
    out = os.path.join(workdir, f"ddp{processes}x{threads}-{method}-{arch}")
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": REPO}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "sslseg", "pretrain", "--method", method, "--images", images, "--out", out, "--arch", arch,
               "--steps", str(steps), "--batch", str(batch), "--patch", str(patch), "--device", "cpu",
               "--progress", "json", "--report-every", "1", "--save-every", str(10 ** 9)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return rate_from_events(events, warmup, batch, processes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["s3d", "mae", "volf"])
    parser.add_argument("--archs", nargs="+", default=["ResEncT-test", "ResEncS-cpu"])
    parser.add_argument("--patch", type=int, help="cube edge; default per architecture " + str(DEFAULT_PATCH))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--images", default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=8, help="number of images")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 1 -> 2 process DDP scaling runs")
    parser.add_argument("--ddp-arch", default="ResEncS-cpu")
    parser.add_argument("--ddp-method", default="s3d")
    parser.add_argument("--threads", type=int, help="torch threads of the single-process runs (default: torch's); "
                        "1 is steadier on a machine shared with other jobs")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    print("machine:", machine())
    print("command: python bench/pretrain_throughput.py " + " ".join(sys.argv[1:]))
    results = []
    with tempfile.TemporaryDirectory(prefix="sslseg-bench-") as workdir:
        images = image_list(args.images, args.count, workdir)
        print(f"{'method':<6} {'arch':<13} {'patch':>6} {'batch':>5} {'samples/s':>10} {'s/step':>8}")
        for arch in args.archs:
            patch = args.patch or DEFAULT_PATCH.get(arch, 64)
            for method in args.methods:
                rate, per_step = single_process(method, arch, patch, args.batch, args.steps, args.warmup,
                                                args.device, images, workdir, args.workers)
                results.append({"kind": "single", "method": method, "arch": arch, "patch": patch,
                                "batch": args.batch, "device": args.device, "samples_per_s": rate,
                                "s_per_step": per_step})
                print(f"{method:<6} {arch:<13} {patch:>6} {args.batch:>5} {rate:>10.2f} {per_step:>8.3f}", flush=True)
        if not args.no_ddp and args.device == "cpu":
            patch = args.patch or DEFAULT_PATCH.get(args.ddp_arch, 64)
            print(f"DDP scaling (gloo, CPU), {args.ddp_method} {args.ddp_arch} patch {patch}, batch {args.batch} "
                  "per process:")
            for processes, threads in ((1, 1), (1, 2), (2, 1)):
                rate, per_step = torchrun(processes, threads, args.ddp_method, args.ddp_arch, patch, args.batch,
                                          args.steps, args.warmup, images, workdir)
                results.append({"kind": "ddp", "processes": processes, "threads": threads,
                                "method": args.ddp_method, "arch": args.ddp_arch, "patch": patch,
                                "batch": args.batch, "samples_per_s": rate, "s_per_step": per_step})
                print(f"  {processes} process(es) x {threads} thread(s): {rate:.2f} samples/s "
                      f"({per_step:.3f} s/step)", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.json_out:
        with open(args.json_out, "w") as stream:
            json.dump({"machine": machine(), "argv": sys.argv[1:], "results": results}, stream, indent=2)


if __name__ == "__main__":
    main()
