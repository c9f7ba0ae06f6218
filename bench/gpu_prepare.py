"""Prepare the GPU suite's bundle on a machine with internet access: the wheels the GPU machine lacks and the
hippocampus cases the suite uses, in one folder that travels with the checkout (it is git-ignored).

    python bench/gpu_prepare.py                       # -> .gpu_bundle/ (wheels/ + Task04_Hippocampus/), ~58 MB

Then, on the GPU machine, from the repository root (one command, at most 8 minutes on one H100):

    python3 bench/gpu_suite.py --bundle .gpu_bundle --out "$OUT"

The GPU machine is expected to hold a CUDA build of torch (and numpy, einops); SimpleITK, MONAI and
dynamic-network-architectures come from the bundle's wheels, for ``--python`` (default 3.12, the GPU machine's),
at the versions installed here. The cases: the suite's split of ``--data`` (10 training + 30 test cases, see
``gpu_suite.split``), not the whole dataset, to stay under ``MAX_MB``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WHEELS = ("SimpleITK", "monai", "dynamic-network-architectures")  # what a CUDA torch image lacks
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
MAX_MB = 60
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "Task04_Hippocampus")


def download_wheels(folder: str, python: str) -> list:
    """``pip download`` of each of WHEELS at the version installed here (binary only, no dependencies)."""
    os.makedirs(folder, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               python, "--implementation", "cp", "-d", folder, *[a for p in PLATFORMS for a in ("--platform", p)],
               *pins]
    subprocess.run(command, check=True)
    return sorted(os.listdir(folder))


def copy_cases(data: str, target: str, split_seed: int) -> int:
    """The suite's cases of ``data`` (images, labels and a dataset.json listing just them) into ``target``."""
    import gpu_suite

    from sslseg.datasets import load_dataset

    train, _, test, _ = gpu_suite.split(data, gpu_suite.FULL, split_seed)
    with open(os.path.join(data, "dataset.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    kept = []
    for image, label in train + test:
        entry = {}
        for key, path in (("image", image), ("label", label)):
            relative = os.path.relpath(path, data)
            os.makedirs(os.path.dirname(os.path.join(target, relative)), exist_ok=True)
            shutil.copyfile(path, os.path.join(target, relative))
            entry[key] = "./" + relative
        kept.append(entry)
    meta.update(training=kept, numTraining=len(kept), test=[], numTest=0)
    order_ids = {c.images[0]: c.case_id for c in load_dataset(data).cases}
    with open(os.path.join(target, gpu_suite.SPLIT_FILE), "w", encoding="utf-8") as stream:
        json.dump([order_ids[p[0]] for p in train + test], stream)
    with open(os.path.join(target, "dataset.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)
    return len(kept)


def folder_mb(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder)
               for name in names) / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=os.path.join(REPO, ".gpu_bundle"), help="output folder")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the hippocampus folder (MSD Task04 layout)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version")
    parser.add_argument("--split-seed", type=int, default=0, help="as gpu_suite.py's --split-seed")
    args = parser.parse_args(argv)
    shutil.rmtree(args.bundle, ignore_errors=True)
    wheels = download_wheels(os.path.join(args.bundle, "wheels"), args.python)
    cases = copy_cases(args.data, os.path.join(args.bundle, "Task04_Hippocampus"), args.split_seed)
    size = folder_mb(args.bundle)
    print(f"{args.bundle}: {len(wheels)} wheels ({', '.join(wheels)}), {cases} cases; {size:.1f} MB")
    if size > MAX_MB:
        raise SystemExit(f"the bundle is {size:.1f} MB, over {MAX_MB} MB")
    print('on the GPU machine: python3 bench/gpu_suite.py --bundle .gpu_bundle --out "$OUT"   '
          '(carry .gpu_bundle)')


if __name__ == "__main__":
    main()
