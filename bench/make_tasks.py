"""The developers' own second and third benchmark tasks, built from the sample data as nnU-Net/MSD dataset folders.

    python bench/make_tasks.py [--out bench/results/tasks] [--tasks aniso multilabel large cardiac] [--seed 0]

- ``aniso``: the 100 MSD hippocampus cases (1 mm isotropic) resampled to 5 mm slices along z (in-plane 1 mm kept):
  7 slices for a median case, like cine cardiac MRI's ~10 thick slices. The image is smoothed along z with a
  Gaussian whose FWHM is the slice thickness before sampling (a thick slice averages its slab); labels are sampled
  with nearest neighbour. Labels 1 Anterior, 2 Posterior.
- ``cardiac``: 50 synthetic cine-cardiac-like short-axis stacks (bench/cardiac_phantom.py): 8-12 slices of 10 mm,
  1.5 mm in-plane, about 220 x 250 voxels over a torso in which the heart fills a small part; right ventricle
  (a crescent beside the septum), myocardium (a ring of 5-11 mm around the left ventricle) and left ventricle
  (bright blood), with bright vessels, lungs, liver, a bias field, noise and a different contrast per case; each
  thick slice averages its slab (partial volume at the base and apex), labels at the slab centre.
- ``multilabel``: 30 views of the TotalSegmentator example CT (one subject), 1.5 mm isotropic, 160 x 130 x 40 voxels
  (x, y, z), five organs renumbered 1..5 (spleen, right kidney, left kidney, liver, stomach).
- ``large``: 30 views of the TotalSegmentator example MRI (one subject), 0.75 mm isotropic, 128 x 160 x 64 voxels,
  one structure (kidney, left or right; 4-6 cm) - a large binary task where a hippocampus-sized patch sees a
  fraction of the organ.

Each view is the source volume resampled once (B-spline for the image; for the labels a linear resampling of each
class's mask followed by argmax, as nnU-Net resamples segmentations) through a random shift, an in-plane rotation
and an isotropic scaling, and is kept only when it holds enough of every kept structure. Views of one subject share
its anatomy, so test Dice on these tasks measures fitting under shifts and rotations, not generalisation to new
patients; each dataset.json says so. The TotalSegmentator masks are model outputs (no manual annotation).

Deterministic: the same --seed gives the same files. A task folder is written beside its final place and renamed
when complete; an existing folder is replaced only if this script made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import SimpleITK as sitk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.environ.get("SSLSEG_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "tasks")
MADE_BY = "bench/make_tasks.py"
ANISO_SLICE_MM = 5.0

# TotalSegmentator v2 class values (the "total" CT and "total_mr" maps agree on these five).
ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach"}
TS_REFERENCE = ("TotalSegmentator test reference files (Wasserthal et al. 2023, Radiology: Artificial Intelligence "
                "5:e230024); masks are TotalSegmentator outputs, not manual annotations")
TS_LICENCE = "Apache-2.0"


class ViewSpec:
    """How to cut random views from one source volume: ``classes`` maps each kept structure's name (value 1, 2, ...
    in that order) to the source label values it merges; ``centres``, when given, lists the groups of source values
    around whose box centre the views alternate (default: all kept values together)."""

    def __init__(self, name, image, label, channel, classes, spacing, size_mm, shift_mm, keep_fraction, cases,
                 description, centres=None, pixel_type=sitk.sitkFloat32):
        self.name, self.image, self.label, self.channel, self.classes = name, image, label, channel, classes
        self.spacing, self.size_mm, self.shift_mm = spacing, size_mm, shift_mm
        self.keep_fraction, self.cases, self.description = keep_fraction, cases, description
        self.centres = centres or [sum(classes.values(), [])]
        self.pixel_type = pixel_type

    @property
    def size(self):
        return [int(round(mm / s)) for mm, s in zip(self.size_mm, self.spacing)]


def view_specs(source_root):
    ts = os.path.join(source_root, "TotalSegmentator_example")
    files = {m: (os.path.join(ts, "imagesTr", f"ts_{m}_sm.nii.gz"), os.path.join(ts, "labelsTr", f"ts_{m}_sm.nii.gz"))
             for m in ("ct", "mr")}
    common = ("Derived from ONE subject: every case is a random view (shift, in-plane rotation up to 15 degrees, "
              "scaling 0.9-1.1) of the same volume, so cases are strongly correlated and test Dice measures fitting "
              "under these transforms, not generalisation to new patients. ")
    organs = {name: [value] for value, name in ORGANS.items()}
    return {
        "multilabel": ViewSpec(
            "multilabel", *files["ct"], "CT", organs, (1.5, 1.5, 1.5), (240.0, 195.0, 60.0), (20.0, 20.0, 12.0),
            0.3, 30, common + "Five abdominal organs on CT (spleen, right kidney, left kidney, liver, stomach), "
            "resampled from 3 mm to 1.5 mm isotropic; 160 x 130 x 40 voxels (x, y, z).", pixel_type=sitk.sitkInt16),
        "large": ViewSpec(
            "large", *files["mr"], "MRI", {"kidney": [2, 3]}, (0.75, 0.75, 0.75), (96.0, 120.0, 48.0),
            (15.0, 15.0, 5.0), 0.5, 30, common + "One structure on MRI (a kidney, the right or the left one in "
            "alternate cases; 4-6 cm), resampled from 3 mm to 0.75 mm isotropic; 128 x 160 x 64 voxels (x, y, z): "
            "a large binary task.", centres=[[2], [3]], pixel_type=sitk.sitkInt16),
    }


# --- writing -------------------------------------------------------------------------------------------------

def write_dataset(folder, name, description, channel, label_names, cases, extra) -> None:
    """imagesTr/, labelsTr/ and dataset.json (nnU-Net v2 keys plus the MSD training list) for ``cases``, a list of
    (case id, image, label) SimpleITK images."""
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for case_id, image, label in cases:
        sitk.WriteImage(image, os.path.join(folder, "imagesTr", case_id + ".nii.gz"), True)
        sitk.WriteImage(label, os.path.join(folder, "labelsTr", case_id + ".nii.gz"), True)
    meta = {"name": name, "description": description, **extra, "tensorImageSize": "3D",
            "channel_names": {"0": channel}, "labels": {"background": 0, **{n: v for v, n in label_names.items()}},
            "numTraining": len(cases), "file_ending": ".nii.gz", "made_by": MADE_BY,
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c, _, _ in cases]}
    with open(os.path.join(folder, "dataset.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)


def publish(partial, final) -> None:
    """Rename the finished ``partial`` folder to ``final``, replacing a folder this script made earlier only."""
    if os.path.lexists(final):
        try:
            with open(os.path.join(final, "dataset.json"), encoding="utf-8") as stream:
                ours = json.load(stream).get("made_by") == MADE_BY
        except (OSError, ValueError):
            ours = False
        if not ours or os.path.islink(final):
            raise SystemExit(f"make_tasks: {final} exists and was not made by {MADE_BY}; move it away first")
        shutil.rmtree(final)
    os.rename(partial, final)


def build(name, out, make) -> str:
    """Run ``make(folder)`` into a hidden sibling of ``out/name`` and publish it; nothing is left on failure."""
    os.makedirs(out, exist_ok=True)
    final = os.path.join(out, name)
    partial = os.path.join(out, f".{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        make(partial)
        publish(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


# --- aniso: thick slices -------------------------------------------------------------------------------------

def thick_slice_grid(image, slice_mm):
    """(size, spacing, origin) of a grid with ``slice_mm`` slices along z covering the image's z extent."""
    size, spacing = image.GetSize(), image.GetSpacing()
    slices = max(1, int(round(size[2] * spacing[2] / slice_mm)))
    # centre the stack of slabs on the volume: first slab centre, in source index units along z
    first = -0.5 + (size[2] * spacing[2] - slices * slice_mm) / 2 / spacing[2] + slice_mm / 2 / spacing[2]
    origin = image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, first))
    return (size[0], size[1], slices), (spacing[0], spacing[1], slice_mm), origin


def thick_slices(image, label, slice_mm=ANISO_SLICE_MM):
    """The image averaged over slabs of ``slice_mm`` (Gaussian along z with that FWHM, minus the source's own
    thickness) and sampled at the slab centres; the label sampled with nearest neighbour."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    fwhm = math.sqrt(max(slice_mm ** 2 - image.GetSpacing()[2] ** 2, 0.0))
    smooth = sitk.RecursiveGaussianImageFilter()
    smooth.SetDirection(2)
    smooth.SetSigma(fwhm / (2 * math.sqrt(2 * math.log(2))))
    blurred = smooth.Execute(image)
    size, spacing, origin = thick_slice_grid(image, slice_mm)
    direction = image.GetDirection()
    thick = sitk.Resample(blurred, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, 0.0,
                          sitk.sitkFloat32)
    labels = sitk.Resample(label, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, spacing, direction, 0,
                           sitk.sitkUInt8)
    return thick, labels


def make_aniso(source_root):
    def make(folder):
        source = os.path.join(source_root, "Task04_Hippocampus")
        with open(os.path.join(source, "dataset.json"), encoding="utf-8") as stream:
            meta = json.load(stream)
        cases = []
        for entry in meta["training"]:
            case_id = os.path.basename(entry["label"]).split(".")[0].replace("hippocampus", "aniso")
            image = sitk.ReadImage(os.path.join(source, entry["image"]))
            label = sitk.ReadImage(os.path.join(source, entry["label"]))
            cases.append((case_id, *thick_slices(image, label)))
        cases.sort(key=lambda c: c[0])
        description = (f"MSD Task04 hippocampus resampled to {ANISO_SLICE_MM:g} mm slices along z (1 mm in-plane "
                       "kept): an anisotropic multi-label task like thick-slice cine cardiac MRI. Image: Gaussian "
                       "slab average then linear sampling; labels: nearest neighbour. Same patients and case "
                       "numbers as the source, so splits match the hippocampus benchmark.")
        write_dataset(folder, "HippocampusThickSlices", description, "MRI", {1: "Anterior", 2: "Posterior"}, cases,
                      {"reference": meta.get("reference", ""), "licence": meta.get("licence", "CC-BY-SA 4.0"),
                       "source": "Task04_Hippocampus", "spacing_mm": [1.0, 1.0, ANISO_SLICE_MM]})
    return make


# --- multilabel / large: random views of one volume ----------------------------------------------------------

def box_centre(label, values):
    """Physical centre of the box around the voxels whose value is in ``values``."""
    where = np.argwhere(np.isin(sitk.GetArrayViewFromImage(label), values))
    index = (where.min(axis=0) + where.max(axis=0))[::-1] / 2
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def random_transform(centre, axis, rng):
    """Rotation about ``axis`` (up to 15 degrees) and isotropic scaling (0.9-1.1) around ``centre``."""
    transform = sitk.Similarity3DTransform()
    transform.SetCenter(centre.tolist())
    transform.SetRotation(axis.tolist(), float(np.deg2rad(rng.uniform(-15, 15))))
    transform.SetScale(float(rng.uniform(0.9, 1.1)))
    return transform


def resample_classes(label, spec, grid, transform):
    """The kept classes (renumbered 1..K) on ``grid`` (size, origin, spacing, direction): each class mask
    resampled linearly, then argmax."""
    source = sitk.GetArrayViewFromImage(label)
    kept = sum(spec.classes.values(), [])
    masks = [~np.isin(source, kept)] + [np.isin(source, values) for values in spec.classes.values()]
    resampled = []
    for mask in masks:
        image = sitk.GetImageFromArray(mask.astype(np.float32))
        image.CopyInformation(label)
        outside = 0.0 if resampled else 1.0  # background outside the source volume
        resampled.append(sitk.GetArrayFromImage(sitk.Resample(image, grid[0], transform, sitk.sitkLinear,
                                                              grid[1], grid[2], grid[3], outside)))
    result = sitk.GetImageFromArray(np.argmax(np.stack(resampled), axis=0).astype(np.uint8))
    result.SetOrigin(grid[1])
    result.SetSpacing(grid[2])
    result.SetDirection(grid[3])
    return result


def random_grid(image, spec, centre, rng):
    """(grid, transform) of one random view: its (size, origin, spacing, direction) around a randomly shifted
    ``centre``, and the rotation and scaling mapping it into the source."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = centre + direction @ (rng.uniform(-1, 1, 3) * np.asarray(spec.shift_mm))
    origin = centre - direction @ ((np.asarray(spec.size) - 1) / 2 * np.asarray(spec.spacing))
    grid = (spec.size, origin.tolist(), spec.spacing, image.GetDirection())
    return grid, random_transform(centre, direction[:, 2], rng)


def resample_image(image, spec, grid, transform):
    """The image on ``grid`` (B-spline), stored with the spec's pixel type."""
    lowest = float(sitk.GetArrayViewFromImage(image).min())
    view = sitk.Resample(image, grid[0], transform, sitk.sitkBSpline, grid[1], grid[2], grid[3], lowest,
                         sitk.sitkFloat32)
    return sitk.Cast(sitk.Round(view), spec.pixel_type) if spec.pixel_type != sitk.sitkFloat32 else view


def needed_voxels(label, spec, values) -> dict:
    """Voxels (on the view's grid) each kept class needs: ``keep_fraction`` of its volume in the source, counting
    only the source values in ``values`` (the structures a view is centred on)."""
    source = sitk.GetArrayViewFromImage(label)
    ratio = np.prod(label.GetSpacing()) / np.prod(spec.spacing)
    needed = {}
    for k, kept in enumerate(spec.classes.values(), start=1):
        centred = [v for v in kept if v in values]
        if centred:
            needed[k] = spec.keep_fraction * ratio * int(np.isin(source, centred).sum())
    return needed


def enough(view_label, needed) -> bool:
    counts = np.bincount(sitk.GetArrayViewFromImage(view_label).ravel(), minlength=max(needed) + 1)
    return all(counts[k] >= n for k, n in needed.items())


def make_views(spec, seed, views=None):
    """The task's maker: ``views`` cases (default the spec's; fewer give the first ones of the full build)."""
    wanted = spec.cases if views is None else views

    def make(folder):
        image, label = sitk.ReadImage(spec.image), sitk.ReadImage(spec.label)
        rng = np.random.default_rng(seed)
        cases, tries = [], 0
        while len(cases) < wanted:
            if tries >= 20 * wanted:
                raise SystemExit(f"make_tasks: {spec.name}: only {len(cases)} views with enough foreground")
            values = spec.centres[len(cases) % len(spec.centres)]
            grid, transform = random_grid(image, spec, box_centre(label, values), rng)
            view_label = resample_classes(label, spec, grid, transform)
            tries += 1
            if enough(view_label, needed_voxels(label, spec, values)):
                view = resample_image(image, spec, grid, transform)
                cases.append((f"{spec.name}_{len(cases):03d}", view, view_label))
        names = dict(enumerate(spec.classes, start=1))
        write_dataset(folder, f"TotalSegmentator{spec.name.capitalize()}", spec.description, spec.channel, names,
                      cases, {"reference": TS_REFERENCE, "licence": TS_LICENCE,
                              "source": "TotalSegmentator_example/imagesTr/" + os.path.basename(spec.image),
                              "spacing_mm": list(spec.spacing), "views_tried": tries, "seed": seed})
    return make


# --- main ----------------------------------------------------------------------------------------------------

def summary(folder) -> str:
    """One line: case count, shape range (x, y, z), spacing and label voxel presence."""
    with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    shapes, spacings, missing = [], set(), 0
    for entry in meta["training"]:
        label = sitk.ReadImage(os.path.join(folder, entry["label"]))
        shapes.append(label.GetSize())
        spacings.add(tuple(round(s, 3) for s in label.GetSpacing()))
        present = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
        missing += len(set(meta["labels"].values()) - present)
    shapes = np.asarray(shapes)
    return (f"{meta['name']}: {len(shapes)} cases, size x,y,z {shapes.min(0).tolist()}..{shapes.max(0).tolist()} "
            f"(median {np.median(shapes, 0).astype(int).tolist()}), spacing {sorted(spacings)} mm, labels "
            f"{meta['labels']}, {missing} label(s) absent across cases")


def make_tasks(out=DEFAULT_OUT, tasks=("aniso", "multilabel", "large"), source=DEFAULT_SOURCE, seed=0, views=None,
               log=print):
    """Build the named tasks into ``out``; returns {task name: folder}."""
    specs = view_specs(source)
    from cardiac_phantom import make_cardiac

    makers = {"aniso": make_aniso(source), "cardiac": make_cardiac(write_dataset, seed), **{name: make_views(spec, seed, views) for name, spec in specs.items()}}
    unknown = sorted(set(tasks) - set(makers))
    if unknown:
        raise SystemExit(f"make_tasks: unknown task(s) {unknown}; choose from {sorted(makers)}")
    built = {}
    for name in tasks:
        built[name] = build(name, out, makers[name])
        log(f"{built[name]}: {summary(built[name])}")
    return built


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the task folders (default %(default)s)")
    parser.add_argument("--tasks", nargs="+", default=["aniso", "multilabel", "large"])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="folder holding Task04_Hippocampus and "
                                                                 "TotalSegmentator_example (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, help="cases per TotalSegmentator task (default 30; fewer for a quick "
                                                  "check: they are the first ones of the full build)")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(min(2, os.cpu_count() or 1))
    make_tasks(args.out, args.tasks, args.source, args.seed, args.views)
    print("command: python bench/make_tasks.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
