"""Inference throughput (voxels/s): sslseg's predict path against MONAI's ``sliding_window_inference`` run plainly,
on the same network, the same images and the same device, side by side in one run.

    python bench/inference_throughput.py [--arch ResEncS-cpu] [--device cpu] [--repeats 3]

- ``sslseg``: ``sslseg.inference.segment_array`` - normalisation, Gaussian-blended sliding windows (overlap 0.5),
  softmax, resampling back to the input grid, argmax; inference mode, AMP on CUDA;
- ``plain MONAI``: z-score, ``sliding_window_inference(image, patch, 2, network, overlap=0.5, mode="gaussian")``
  under ``torch.no_grad()``, argmax - the same work without sslseg's code around it;
- ``plain MONAI defaults``: the same with MONAI's default overlap 0.25 and constant blending.

Images: 30 hippocampus crops (35x50x35 voxels typical) and the TotalSegmentator CT example (122x101x30 at 3 mm,
segmented at 3 mm here so that only the sliding window is timed). Weights are random: speed does not depend on them.
"""

import argparse
import os
import platform
import shlex
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ResEncXS-cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=30)
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference

    from sslseg.datasets import load_dataset
    from sslseg.device import resolve_device
    from sslseg.inference import segment_array
    from sslseg.model_folder import FORMAT, Model
    from sslseg.networks import build_from_spec, spec_for
    from sslseg.preprocessing import read_channels

    device, note = resolve_device(args.device)
    spec = spec_for(args.arch)
    torch.manual_seed(0)
    network = build_from_spec(spec, 1, 3).to(device).eval()
    hippocampus = load_dataset(os.path.join(DATA, "Task04_Hippocampus"))
    sets = {"hippocampus": ([read_channels(c.images, c.case_id) for c in hippocampus.cases[:args.cases]],
                            [32, 48, 32], [1.0, 1.0, 1.0]),
            "totalseg-ct": ([read_channels([os.path.join(DATA, "TotalSegmentator_example", "imagesTr",
                                                         "ts_ct_sm.nii.gz")], "ct")], [32, 96, 96], [3.0, 3.0, 3.0])}
    amp = device.type == "cuda"
    print(f"# {platform.node()} {platform.machine()}, {note}; network {args.arch}; repeats {args.repeats}")
    print("| images | voxels | sslseg predict (Mvox/s) | plain MONAI same settings (Mvox/s) | ratio | "
          "plain MONAI defaults (Mvox/s) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (cases, patch, spacing) in sets.items():
        meta = {"format": FORMAT, "network": spec, "in_channels": 1,
                "labels": [{"value": 1, "name": "a", "color": [1, 0, 0]}, {"value": 2, "name": "b", "color": [0, 1, 0]}],
                "preprocessing": {"spacing": spacing, "normalization": "zscore"}, "patch_size": patch}
        model = Model(meta=meta, network=network)
        voxels = sum(image.size for image, _ in cases)

        def ours():
            for image, geometry in cases:
                segment_array(model, image, geometry, device, overlap=0.5, tta=False)

        def plain(overlap, mode):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                for image, _ in cases:
                    image = (image - image.mean()) / image.std()
                    tensor = torch.from_numpy(image)[None].to(device)
                    logits = sliding_window_inference(tensor, patch, 2, network, overlap=overlap, mode=mode)
                    logits.argmax(1).cpu().numpy()

        timings = {"ours": [], "same": [], "defaults": []}
        for _ in range(args.repeats):  # interleaved, so that load from other jobs hits all three alike
            for key, work in (("ours", ours), ("same", lambda: plain(0.5, "gaussian")),
                              ("defaults", lambda: plain(0.25, "constant"))):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                work()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                timings[key].append(time.perf_counter() - started)
        rate = {key: voxels / min(values) / 1e6 for key, values in timings.items()}  # best of the repeats
        print(f"| {name} ({len(cases)}) | {voxels / 1e6:.2f} M | {rate['ours']:.3f} | {rate['same']:.3f} | "
              f"{rate['ours'] / rate['same']:.2f} | {rate['defaults']:.3f} | {rate['ours'] / rate['defaults']:.2f} |")
    print("command: python " + " ".join(shlex.quote(a) for a in sys.argv))


if __name__ == "__main__":
    main()
