"""The plain MONAI script the product is compared with: DynUNet planned by the small rule below, batch 2, AdamW
lr 3e-3 with poly decay over the time budget, Dice + CE, positive/negative crops, flips, per-case z-score; trained
for --time-limit seconds on the training cases at their own voxel grid (no resampling), then the test cases are
segmented (sliding window) and written as label files on their original grids, and scored with the benchmarks' one
Dice code.

    python bench/plain_monai_baseline.py --train 10 --test 30 --time-limit 900
    python bench/plain_monai_baseline.py --data bench/results/tasks/aniso --train 10 --test 30 --time-limit 900

The plan, from the training cases' median shape and spacing (z, y, x), in the spirit of nnU-Net's rules:
- patch: the median shape, shrunk one voxel at a time along the axis with the largest extent in mm until it holds at
  most 64^3 voxels; then rounded down to a multiple of the network's total stride along each axis;
- stages: an axis is downsampled (stride 2) while the patch keeps at least 4 voxels along it and its spacing is less
  than twice the finest spacing among such axes (at most 5 downsamplings); a stage's kernel is 1 along an axis until
  its spacing comes within twice the finest, 3 from then on (so thick-slice data get 1 x 3 x 3 kernels and
  in-plane-first strides);
- filters 16, 32, 64, ... (at most 320).
On the 1 mm hippocampus crops (medians 32-39 x 48-55 x 32-39) this gives the patch 32 x 48 x 32 and strides 1, 2, 2, 2
that this script used before the rule existed.
"""

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet
from monai.transforms import Compose, NormalizeIntensityd, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from finetune_time_to_dice import DEFAULT_DATA, label_values, score_folder, split_cases  # noqa: E402

PATCH_VOXELS = 64 ** 3
MAX_DOWNSAMPLINGS = 5
MIN_FEATURE_VOXELS = 4
MAX_FILTERS = 320


# --- the plan ------------------------------------------------------------------------------------------------

def shrink_patch(shape, spacing, budget=PATCH_VOXELS) -> np.ndarray:
    """The median shape, shrunk along its longest axis in mm until it holds at most ``budget`` voxels."""
    patch = np.maximum(np.round(np.asarray(shape, float)), 1)
    while np.prod(patch) > budget:
        axis = int(np.argmax(patch * spacing))
        patch[axis] -= 1
    return patch


def stages(patch, spacing):
    """(kernels, strides) per stage, as nnU-Net plans them: an axis is downsampled while the patch keeps >= 4 voxels
    along it and its spacing is less than twice the finest among such axes; its kernel is 1 until its spacing comes
    within twice the finest, 3 from then on."""
    current, size = np.asarray(spacing, float).copy(), np.asarray(patch, float).copy()
    three = np.zeros(3, bool)
    kernels, strides = [], [[1, 1, 1]]
    while True:
        three |= current / current.min() < 2
        kernels.append([3 if t else 1 for t in three])
        room = size / 2 >= MIN_FEATURE_VOXELS
        if len(strides) > MAX_DOWNSAMPLINGS or not room.any():
            return kernels, strides
        step = np.where(room & (current / current[room].min() < 2), 2, 1)
        strides.append(step.tolist())
        current, size = current * step, size / step


def round_patch(patch, spacing, multiple, budget=PATCH_VOXELS) -> list:
    """Each axis down to a multiple of its total stride (at least one multiple), then back under the budget."""
    rounded = np.maximum(np.floor(patch / multiple), 1) * multiple
    while np.prod(rounded) > budget and (rounded > multiple).any():
        axis = int(np.argmax(np.where(rounded > multiple, rounded * spacing, -1)))
        rounded[axis] -= multiple[axis]
    return [int(p) for p in rounded]


def plan(shapes, spacings) -> dict:
    """The patch and the network's stages from the training cases' shapes and spacings (z, y, x)."""
    shape, spacing = np.median(np.asarray(shapes), axis=0), np.median(np.asarray(spacings), axis=0)
    kernels, strides = stages(shrink_patch(shape, spacing), spacing)
    multiple = np.prod(np.asarray(strides), axis=0)
    patch = round_patch(shrink_patch(shape, spacing), spacing, multiple)
    return {"patch": patch, "kernels": kernels, "strides": strides, "median_shape": shape.tolist(),
            "median_spacing": spacing.tolist(),
            "filters": [min(16 * 2 ** i, MAX_FILTERS) for i in range(len(strides))]}


def network_from(plan_, in_channels, classes) -> DynUNet:
    return DynUNet(3, in_channels, classes, kernel_size=plan_["kernels"], strides=plan_["strides"],
                   upsample_kernel_size=plan_["strides"][1:], filters=plan_["filters"], norm_name="instance")


# --- data ----------------------------------------------------------------------------------------------------

def read_case(case, values=None):
    """(image [1, z, y, x] float32, label [1, z, y, x] class indices or None, SimpleITK header, spacing z, y, x)."""
    image = sitk.ReadImage(case.images[0])
    if image.GetNumberOfComponentsPerPixel() != 1 or len(case.images) != 1 or image.GetDimension() != 3:
        raise SystemExit(f"plain baseline: case {case.case_id}: one 3D single-channel image per case only")
    array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    label = None
    if values is not None:
        table = np.zeros(256, np.int64)
        table[np.asarray(values)] = np.arange(len(values))
        raw = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(case.label))).astype(np.int64)
        label = table[np.clip(raw, 0, 255)][None].astype(np.uint8)
    return array, label, image, list(reversed(image.GetSpacing()))


def training_loader(items, patch, seed=0):
    keys = ["image", "label"]
    transforms = Compose([NormalizeIntensityd("image"),
                          SpatialPadd(keys, patch),
                          RandCropByPosNegLabeld(keys, "label", patch, pos=1, neg=1, num_samples=1),
                          RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                          RandFlipd(keys, prob=0.5, spatial_axis=2)])
    transforms.set_random_state(seed)
    return DataLoader(CacheDataset(items, transforms, progress=False), batch_size=2, shuffle=True, num_workers=0)


# --- training and inference ----------------------------------------------------------------------------------

def train(network, loader, deadline) -> int:
    """AdamW with poly decay of the learning rate until ``deadline`` (time.monotonic()); returns the steps run."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-5)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    started, steps = time.monotonic(), 0
    time_limit = max(deadline - started, 1e-3)
    network.train()
    while time.monotonic() - started < time_limit:
        for batch in loader:
            fraction = min((time.monotonic() - started) / time_limit, 1.0)
            if fraction >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = 3e-3 * (1 - fraction) ** 0.9
            optimizer.zero_grad()
            loss = loss_function(network(batch["image"].as_tensor()), batch["label"].as_tensor())
            loss.backward()
            optimizer.step()
            steps += 1
    return steps


def predict_case(network, case, patch, values, folder) -> str:
    """Label values of one case on its original grid, written as ``folder/<case>.nii.gz``."""
    image, _, header, _ = read_case(case)
    image = (image - image.mean()) / max(float(image.std()), 1e-8)
    with torch.no_grad():
        logits = sliding_window_inference(torch.from_numpy(image)[None], patch, 2, network)
    labels = np.asarray(values, np.uint8)[logits.argmax(1)[0].numpy()]
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(header)
    path = os.path.join(folder, case.case_id + ".nii.gz")
    sitk.WriteImage(result, path, True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--val", type=int, default=5,
                        help="skipped cases, so that the test cases match the other benchmarks")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--train-ids", nargs="+", help="train on these cases instead (e.g. the ones the product "
                                                       "trained on); the test cases stay those of the split")
    parser.add_argument("--time-limit", type=float, default=900)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--predictions", help="folder for the test cases' label files (default: a temporary one)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset, train_ids, _, test_ids = split_cases(args.data, args.train, args.val, args.test, args.split_seed)
    train_ids = args.train_ids or train_ids
    by_id = {c.case_id: c for c in dataset.cases}
    values = label_values(dataset)
    items, shapes, spacings = [], [], []
    for case_id in train_ids:  # read with SimpleITK (MONAI's LoadImage needs nibabel or itk, not installed here)
        image, label, _, spacing = read_case(by_id[case_id], values)
        items.append({"image": image, "label": label})
        shapes.append(image.shape[1:])
        spacings.append(spacing)
    plan_ = plan(shapes, spacings)
    network = network_from(plan_, 1, len(values))
    steps = train(network, training_loader(items, plan_["patch"]), started + args.time_limit)
    train_seconds = time.monotonic() - started

    network.eval()
    folder = args.predictions or tempfile.mkdtemp(prefix="plain-monai-")
    os.makedirs(folder, exist_ok=True)
    for case_id in test_ids:
        predict_case(network, by_id[case_id], plan_["patch"], values, folder)
    record = {"label": "plain-monai-dynunet", "steps": steps, "finetune_seconds": round(train_seconds, 1),
              "plan": plan_, "test_dice": score_folder(dataset, test_ids, folder), "train_cases": train_ids,
              "predictions": folder,
              "machine": f"{platform.node()} {platform.machine()}, torch threads {torch.get_num_threads()}, "
                         f"load {os.getloadavg()[0]:.1f}",
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    print(json.dumps(record), flush=True)
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
