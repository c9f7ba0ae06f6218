"""The plain MONAI script the CPU preset is compared with (issue 4): DynUNet (filters 16-128), patch 32x48x32,
batch 2, AdamW lr 3e-3 with poly decay over the time budget, Dice + CE, positive/negative crops, flips; trained for
--time-limit seconds on the same 10 hippocampus cases, tested on the same held-out cases with the same Dice code.

    python bench/plain_monai_baseline.py --train 10 --test 30 --time-limit 900
"""

import argparse
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet
from monai.transforms import Compose, NormalizeIntensityd, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_time_to_dice import DEFAULT_DATA, split_cases  # noqa: E402

PATCH = (32, 48, 32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--val", type=int, default=5, help="skipped cases, so that the test cases match the other bench")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--time-limit", type=float, default=900)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset, train_ids, _, test_ids = split_cases(args.data, args.train, args.val, args.test, args.split_seed)
    by_id = {c.case_id: c for c in dataset.cases}
    from sslseg.preprocessing import read_channels, read_label

    items = []
    for case_id in train_ids:  # read with SimpleITK (MONAI's LoadImage needs nibabel or itk, not installed here)
        image, geometry = read_channels(by_id[case_id].images, case_id)
        items.append({"image": image, "label": read_label(by_id[case_id].label, case_id, geometry)[None]})
    keys = ["image", "label"]
    transforms = Compose([NormalizeIntensityd("image"),
                          SpatialPadd(keys, PATCH),
                          RandCropByPosNegLabeld(keys, "label", PATCH, pos=1, neg=1, num_samples=1),
                          RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                          RandFlipd(keys, prob=0.5, spatial_axis=2)])
    loader = DataLoader(CacheDataset(items, transforms, progress=False), batch_size=2, shuffle=True, num_workers=0)
    network = DynUNet(3, 1, 3, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                      filters=[16, 32, 64, 128], norm_name="instance")
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    started, steps = time.monotonic(), 0
    while time.monotonic() - started < args.time_limit:
        for batch in loader:
            fraction = min((time.monotonic() - started) / args.time_limit, 1.0)
            if fraction >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = 3e-3 * (1 - fraction) ** 0.9
            image, label = batch["image"], batch["label"]
            optimizer.zero_grad()
            loss = loss_function(network(image.as_tensor()), label.as_tensor())
            loss.backward()
            optimizer.step()
            steps += 1
    train_seconds = time.monotonic() - started

    from sslseg.finetuning.evaluation import dice_per_class

    network.eval()
    scores = []
    with torch.no_grad():
        for case_id in test_ids:
            image, geometry = read_channels(by_id[case_id].images, case_id)
            image = (image - image.mean()) / image.std()
            logits = sliding_window_inference(torch.from_numpy(image)[None], PATCH, 2, network)
            predicted = logits.argmax(1)[0].numpy()
            scores.append(dice_per_class(predicted, read_label(by_id[case_id].label, case_id, geometry), 3))
    scores = np.asarray(scores)
    record = {"label": "plain-monai-dynunet", "steps": steps, "finetune_seconds": round(train_seconds, 1),
              "test_dice": {"per_label": {"Anterior": float(scores[:, 0].mean()), "Posterior": float(scores[:, 1].mean())},
                            "mean": float(scores.mean()), "cases": len(test_ids)},
              "machine": f"{platform.node()} {platform.machine()}, torch threads {torch.get_num_threads()}, "
                         f"load {os.getloadavg()[0]:.1f}",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    print(json.dumps(record), flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
