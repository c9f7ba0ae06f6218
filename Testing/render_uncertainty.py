"""Render the SSLSegmentation module's uncertainty overlay from real data, for the README and the Extensions Index.

What it does is what a user does, through the module's own logic on real Slicer core nodes (``slicer-core``, wired
by ``slicer_harness``): load hippocampus MRI scans (MSD Task04) into the scene, fine-tune a small model on four of
them (the ``test`` preset on the CPU, about a minute), segment an unseen scan with ``uncertainty=True``, and draw
the result as Slicer shows it: the scan, the uncertainty volume over it in the module's warm colour map (window
0..1, half opacity) and the predicted segments' outlines, on the three planes through the hippocampus, with the
per-segment summary the module logs. Drawn with matplotlib (no Qt, no GPU).

    .venv/bin/python Testing/render_uncertainty.py [PNG] [--data ../shared/data/Task04_Hippocampus]
    # -> Resources/Screenshots/SSLSegmentation-uncertainty.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_FILE = os.path.join(REPO_ROOT, "Resources", "Screenshots", "SSLSegmentation-uncertainty.png")
DATA = os.path.join(os.environ.get("SSLSEG_SHARED_DATA", os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")),
                    "Task04_Hippocampus")
TRAIN_CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_011", "hippocampus_014"]
CASE = "hippocampus_040"
LABELS = [{"value": 1, "name": "Anterior", "color": [0.95, 0.85, 0.1]},
          {"value": 2, "name": "Posterior", "color": [0.1, 0.85, 0.95]}]
STEPS, PATCH = 120, [32, 48, 32]


def _setUpPaths():
    for path in (REPO_ROOT, os.path.join(REPO_ROOT, "SSLCommon"), os.path.join(REPO_ROOT, "SSLSegmentation"),
                 os.path.dirname(os.path.abspath(__file__))):
        if path not in sys.path:
            sys.path.insert(0, path)


def trainAndSegment(data, work):
    """``(image, labels, uncertainty, summary, spacing)`` of ``CASE``, from the module's logic on real nodes."""
    import slicer_harness

    slicer_harness.start()
    import slicer

    from sslseg.imageio import read_image
    from SSLCommonLib import nodeBridge
    from SSLSegmentationLib import resultNodes
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    def image(case):
        return os.path.join(data, "imagesTr", f"{case}.nii.gz")

    pairs = []
    for case in TRAIN_CASES:
        volume = slicer.util.loadVolume(image(case))
        reference, _ = read_image(os.path.join(data, "labelsTr", f"{case}.nii.gz"))
        pairs.append((volume, nodeBridge.labelArrayToSegmentationNode(reference.astype(np.uint8), LABELS, volume)))
    logic = SSLSegmentationLogic(modelsFolder=os.path.join(work, "models"))
    model = logic.finetune(None, pairs, preset="test", device="cpu", steps=STEPS, patchSize=PATCH,
                           validationShare=0.0, waitForCompletion=True, onLog=print)
    volume = slicer.util.loadVolume(image(CASE))
    result = logic.segment(model, volume, device="cpu", tta=True, uncertainty=True, waitForCompletion=True,
                           onLog=print)
    labels, _ = nodeBridge.segmentationToLabelArray(result, volume, [entry["name"] for entry in LABELS])
    uncertaintyVolume, summary = resultNodes.uncertaintyOf(result)
    spacing = volume.GetSpacing()  # x, y, z
    return (slicer.util.arrayFromVolume(volume).astype(np.float32), labels,
            slicer.util.arrayFromVolume(uncertaintyVolume).copy(), summary, spacing)


def _planes(array, centre):
    """The axial, coronal and sagittal planes of ``array[z, y, x]`` through ``centre`` (z, y, x)."""
    z, y, x = centre
    return [array[z], array[:, y], array[:, :, x]]


def render(pngPath, image, labels, uncertainty, summary, spacing, title=CASE):
    """Draw the three planes: the scan, the uncertainty over it (Inferno, 0..1, opacity 0.55), segment outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D

    from SSLSegmentationLib.resultNodes import summaryText

    foreground = np.argwhere(labels > 0)
    centre = tuple(int(v) for v in (foreground.mean(axis=0) if len(foreground) else np.array(labels.shape) // 2))
    low, high = np.percentile(image, [1, 99.5])
    sx, sy, sz = spacing
    aspects = [sy / sx, sz / sx, sz / sy]  # rows / columns spacing of each plane
    names = ["axial", "coronal", "sagittal"]
    figure, axes = plt.subplots(1, 3, figsize=(10.5, 4.4), dpi=110, gridspec_kw={"wspace": 0.05})
    figure.patch.set_facecolor("black")
    for axis, scan, doubt, segments, aspect, name in zip(axes, _planes(image, centre), _planes(uncertainty, centre),
                                                         _planes(labels, centre), aspects, names):
        axis.imshow(scan, cmap="gray", vmin=low, vmax=high, aspect=aspect, origin="lower", interpolation="bilinear")
        overlay = axis.imshow(doubt, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55, aspect=aspect, origin="lower",
                              interpolation="bilinear")
        for entry in LABELS:
            mask = (segments == entry["value"]).astype(float)
            if mask.any():
                axis.contour(mask, levels=[0.5], colors=[to_rgb(entry["color"])], linewidths=1.2, origin="lower")
        axis.set_title(name, color="white", fontsize=10)
        axis.axis("off")
    bar = figure.colorbar(overlay, ax=list(axes), fraction=0.025, pad=0.02)
    bar.set_label("uncertainty (normalised entropy)", color="white")
    bar.ax.yaxis.set_tick_params(color="white", labelcolor="white")
    figure.suptitle(f"SSL Segmentation: uncertainty over {title}\n{summaryText(summary)}", color="white",
                    fontsize=11, y=1.04)
    handles = [Line2D([], [], color=to_rgb(entry["color"]), linewidth=1.5, label=entry["name"]) for entry in LABELS]
    legend = figure.legend(handles=handles, loc="lower left", ncol=len(handles), frameon=False, labelcolor="white",
                           fontsize=8, title="predicted segments", title_fontsize=8, bbox_to_anchor=(0.01, -0.03))
    legend.get_title().set_color("white")
    figure.text(0.99, 0.01, f"model: test preset, {STEPS} steps on {len(TRAIN_CASES)} cases, CPU; overlay: "
                "Inferno, window 0..1, opacity 0.55", color="white", fontsize=8, ha="right")
    os.makedirs(os.path.dirname(os.path.abspath(pngPath)), exist_ok=True)
    figure.savefig(pngPath, facecolor=figure.get_facecolor(), bbox_inches="tight")
    plt.close(figure)
    return pngPath


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("png", nargs="?", default=PNG_FILE)
    parser.add_argument("--data", default=DATA, help="the MSD Task04_Hippocampus folder")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.data, "dataset.json")):
        parser.error(f"no hippocampus data at {args.data} (give --data)")
    _setUpPaths()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory(prefix="render-uncertainty-") as work:
        image, labels, uncertainty, summary, spacing = trainAndSegment(args.data, work)
    print(render(args.png, image, labels, uncertainty, summary, spacing))


if __name__ == "__main__":
    main()
