"""Prediction: results on the input's exact grid (oblique, anisotropic), physically correct resampling, Slicer
.seg.nrrd output, and the finetune/predict command line with --progress json, end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import slicerio

from sslseg.errors import UserError
from sslseg.finetuning import finetune
from sslseg.imageio import Geometry, read_image, write_image
from sslseg.inference import predict
from sslseg.model_folder import load_model
from sslseg.preprocessing import resample_probabilities, resampled_geometry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS_KEYS = {"event", "phase", "step", "total", "loss", "lr", "val_dice", "elapsed", "eta"}


def rotation(ax, ay, az):
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def files(root, count, start=0):
    names = sorted(os.listdir(os.path.join(root, "imagesTr")))[start:start + count]
    return [os.path.join(root, "imagesTr", n) for n in names], [os.path.join(root, "labelsTr", n) for n in names]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, hippocampus_dir):
    images, labels = files(hippocampus_dir, 4)
    out = tmp_path_factory.mktemp("model") / "hippo"
    return finetune("none", images=images, labels=labels, label_names={1: "Anterior", 2: "Posterior"}, out=out,
                    preset="test", device="cpu", steps=15, val_cases=0, progress="none")


def test_predictions_land_on_oblique_and_anisotropic_grids(tmp_path, hippocampus_dir, tiny_model):
    source = files(hippocampus_dir, 1, start=10)[0][0]
    image, geometry = read_image(source)
    oblique = Geometry(geometry.shape, geometry.spacing, (12.25, -40.5, 7.75), tuple(rotation(20, -15, 35).ravel()))
    # anisotropic: every second slice along z, 2 mm apart (the model resamples to its 1 mm and back)
    thick = image[::2]
    anisotropic = Geometry(thick.shape, (0.9, 1.1, 2.0), (3.0, 5.0, -7.0), tuple(rotation(0, 25, -10).ravel()))
    inputs = {"plain": (image, geometry), "oblique": (image, oblique), "aniso": (thick, anisotropic)}
    for name, (array, grid) in inputs.items():
        write_image(array, grid, tmp_path / "in" / f"{name}.nrrd")
    written = predict(tiny_model, tmp_path / "in", tmp_path / "out", device="cpu", progress="none")
    assert sorted(os.path.basename(p) for p in written) == ["aniso.nii.gz", "oblique.nii.gz", "plain.nii.gz"]
    results = {}
    for name, (array, grid) in inputs.items():
        labels, out_grid = read_image(tmp_path / "out" / f"{name}.nii.gz")
        assert labels.shape == array.shape
        assert out_grid.same_grid(grid, tolerance=1e-5), (name, out_grid, grid)
        assert set(np.unique(labels)) <= {0, 1, 2}
        results[name] = labels
    # the network works in voxel space: the oblique copy of the same voxels gets the same labels
    assert np.array_equal(results["oblique"], results["plain"])
    assert results["plain"].any()


def test_resampling_back_is_physically_exact():
    """A sphere drawn on the model's 1 mm grid lands on an oblique anisotropic input grid where the sphere is."""
    grid = Geometry((30, 40, 50), (0.8, 1.3, 2.2), (-20.0, 10.0, 5.0), tuple(rotation(10, 20, 30).ravel()))
    model_grid = resampled_geometry(grid, [1.0, 1.0, 1.0])
    assert np.allclose(model_grid.direction, grid.direction) and model_grid.spacing == (1.0, 1.0, 1.0)

    def physical_points(g):
        zyx = np.stack(np.meshgrid(*[np.arange(s) for s in g.shape], indexing="ij"), -1).reshape(-1, 3)
        xyz1 = np.c_[zyx[:, ::-1], np.ones(len(zyx))]
        return (g.index_to_physical() @ xyz1.T).T[:, :3]

    centre = grid.index_to_physical() @ np.array([25, 20, 15, 1.0])
    radius = 12.0

    def sphere(g):
        return (np.linalg.norm(physical_points(g) - centre[:3], axis=1) < radius).reshape(g.shape)

    inside = sphere(model_grid).astype(np.float32)
    probabilities = np.stack([1 - inside, inside])
    back = resample_probabilities(probabilities, model_grid, grid)
    predicted = np.argmax(back, axis=0) == 1
    truth = sphere(grid)
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.95


def test_seg_nrrd_has_names_colours_and_geometry(tmp_path, hippocampus_dir, tiny_model):
    source = files(hippocampus_dir, 1, start=11)[0][0]
    written = predict(tiny_model, source, tmp_path, device="cpu", seg_nrrd=True, output_format="nrrd",
                      progress="none")
    label_file, seg_file = written
    assert seg_file.endswith(".seg.nrrd") and label_file.endswith(".nrrd")
    segmentation = slicerio.read_segmentation(seg_file)
    model = load_model(tiny_model)
    assert [s["name"] for s in segmentation["segments"]] == ["Anterior", "Posterior"]
    assert [s["labelValue"] for s in segmentation["segments"]] == [1, 2]
    for segment, label in zip(segmentation["segments"], model.labels):
        assert np.allclose(segment["color"], label["color"], atol=1e-5)
    labels, geometry = read_image(label_file)
    _, source_geometry = read_image(source)
    assert np.allclose(segmentation["ijkToLPS"], source_geometry.index_to_physical(), atol=1e-5)
    # slicerio gives voxels in (i, j, k) = (x, y, z) order
    assert np.array_equal(np.transpose(segmentation["voxels"], (2, 1, 0)), labels)


def test_predict_refuses_bad_input_before_writing(tmp_path, tiny_model):
    two_channel = np.zeros((2, 8, 9, 10), np.float32)
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.moveaxis(two_channel, 0, -1), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "two.mha"))
    with pytest.raises(UserError, match="channel"):
        predict(tiny_model, tmp_path / "two.mha", tmp_path / "out", device="cpu", progress="none")
    with pytest.raises(UserError, match="overlap"):
        predict(tiny_model, tmp_path / "two.mha", tmp_path / "out", device="cpu", overlap=1.0, progress="none")
    assert not (tmp_path / "out").exists()


def _json_lines(stdout):
    events = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert events, "no output"
    return events


def test_cli_finetune_and_predict_with_json_progress(tmp_path, hippocampus_dir):
    images, labels = files(hippocampus_dir, 4, start=20)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    model = tmp_path / "model"
    run = subprocess.run([sys.executable, "-m", "sslseg", "finetune", "--backbone", "none", "--images", *images,
                          "--labels", *labels, "--label-names", "Anterior", "Posterior", "--out", str(model),
                          "--preset", "test", "--steps", "6", "--val-cases", "1", "--device", "cpu",
                          "--progress", "json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    events = _json_lines(run.stdout)  # every stdout line is one JSON object
    kinds = [e["event"] for e in events]
    assert kinds.index("start") < kinds.index("progress") and kinds[-1] == "done"
    start = events[kinds.index("start")]
    assert start["total_steps"] == 6 and start["device"] == "cpu" and start["note"]
    progress = [e for e in events if e["event"] == "progress"]
    assert all(set(e) == PROGRESS_KEYS and e["phase"] == "train" and e["total"] == 6 for e in progress)
    assert progress[-1]["step"] == 6 and progress[-1]["eta"] == 0 and progress[-1]["val_dice"] is not None
    validation = [e for e in events if e["event"] == "validation"]
    assert validation and set(validation[-1]["dice"]) == {"Anterior", "Posterior"}
    assert events[-1]["model"] == str(model) and (model / "model.json").is_file()

    out = tmp_path / "segs"
    run = subprocess.run([sys.executable, "-m", "sslseg", "predict", "--model", str(model), "--input", images[0],
                          "--output", str(out), "--seg-nrrd", "--progress", "json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    events = _json_lines(run.stdout)
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]) == 2
    assert all(os.path.isfile(p) for p in events[-1]["outputs"])
    assert any(e["event"] == "progress" and e["phase"] == "predict" for e in events)

    run = subprocess.run([sys.executable, "-m", "sslseg", "finetune", "--images", images[0], "--labels", images[1],
                          "--out", str(tmp_path / "bad"), "--preset", "test", "--progress", "json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2
    events = _json_lines(run.stdout)
    assert events[-1]["event"] == "error" and "label" in events[-1]["message"]
    assert not (tmp_path / "bad").exists()


# --- the torch resampling of prediction (on the GPU when there is one) ---------------------------------------

def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_torch_resampling_agrees_with_simpleitk_on_real_data(hippocampus_dir, tiny_model):
    """The model's probabilities of a real scan on an oblique, anisotropic grid, brought back with torch
    (grid_sample, in slabs) and with SimpleITK: the same labels (Dice >= 0.999 per class) and probabilities."""
    import torch

    from sslseg.inference import labels_on_grid, window_probabilities
    from sslseg.preprocessing import resample_probabilities_torch

    model = load_model(tiny_model)
    image, geometry = read_image(files(hippocampus_dir, 1, start=12)[0][0])
    inputs = {"oblique-anisotropic": Geometry(geometry.shape, (0.9, 1.1, 2.0), (3.0, 5.0, -7.0),
                                              tuple(rotation(0, 25, -10).ravel())),
              "fine": Geometry(geometry.shape, (0.6, 0.7, 0.8), (-1.0, 2.0, 3.0), tuple(rotation(30, 0, 0).ravel()))}
    for name, input_grid in inputs.items():
        array, grid = model.preprocessor.image(image[None].astype(np.float32), input_grid)
        assert not grid.same_grid(input_grid)
        probabilities = window_probabilities(model.network, array, model.patch_size, torch.device("cpu"))
        reference = resample_probabilities(probabilities.numpy(), grid, input_grid)
        assert np.abs(resample_probabilities_torch(probabilities, grid, input_grid).numpy() - reference).max() < 1e-4
        expected = model.label_values_array()[np.argmax(reference, axis=0)]
        labels, _ = labels_on_grid(probabilities, grid, input_grid, model.label_values_array())
        assert labels.dtype == np.uint8 and labels.shape == image.shape
        for value in (1, 2):
            assert (expected == value).any() and _dice(labels == value, expected == value) >= 0.999, name


def test_slabs_cover_the_volume_whatever_their_size(hippocampus_dir, tiny_model):
    import torch

    from sslseg.inference import window_probabilities
    from sslseg.preprocessing import resampled_slabs

    model = load_model(tiny_model)
    image, geometry = read_image(files(hippocampus_dir, 1, start=13)[0][0])
    target = Geometry(geometry.shape, (1.3, 0.8, 1.1), geometry.origin, tuple(rotation(10, 20, 0).ravel()))
    array, grid = model.preprocessor.image(image[None].astype(np.float32), target)
    probabilities = window_probabilities(model.network, array, model.patch_size, torch.device("cpu"))
    whole = [slab for _, _, slab in resampled_slabs(probabilities, grid, target, slab_voxels=1 << 30)]
    pieces = list(resampled_slabs(probabilities, grid, target, slab_voxels=3 * target.shape[1] * target.shape[2]))
    assert len(whole) == 1 and len(pieces) == -(-target.shape[0] // 3)
    assert [z0 for z0, _, _ in pieces] == list(range(0, target.shape[0], 3)) and pieces[-1][1] == target.shape[0]
    assert torch.allclose(torch.cat([slab for _, _, slab in pieces], dim=1), whole[0], atol=1e-6)
    assert torch.allclose(whole[0].sum(dim=0), torch.ones(target.shape), atol=1e-4)  # still probabilities


def test_window_batch_on_the_cpu_and_prediction_with_tta(tmp_path, hippocampus_dir, tiny_model):
    import torch

    from sslseg.inference import window_batch_size

    model = load_model(tiny_model)
    assert window_batch_size(model.network, 1, model.patch_size, torch.device("cpu")) == 2
    source = files(hippocampus_dir, 1, start=14)[0][0]
    written = predict(tiny_model, source, tmp_path, device="cpu", tta=True, sw_batch_size=3, progress="none")
    labels, grid = read_image(written[0])
    image, geometry = read_image(source)
    assert labels.shape == image.shape and grid.same_grid(geometry, tolerance=1e-5)
    assert written.uncertainty == {}


def test_window_count_follows_the_sliding_scan():
    from sslseg.inference import window_count

    assert window_count((36, 50, 35), (32, 48, 32)) == 8  # hippocampus: 2 x 2 x 2
    assert window_count((32, 48, 32), (32, 48, 32)) == 1
    assert window_count((100, 48, 32), (32, 48, 32)) == 6  # 68 voxels past the first window: 5 steps of 16
    assert window_count((40, 40, 40), (32, 32, 32), overlap=0.25) == 8


def test_cpu_default_mirrors_small_cases_only(tmp_path, hippocampus_dir, tiny_model):
    """With no --tta on the CPU: a case of at most CPU_TTA_MAX_WINDOWS windows is mirrored, a larger one is not."""
    from sslseg.inference import CPU_TTA_MAX_WINDOWS, window_count

    model = load_model(tiny_model)
    source = files(hippocampus_dir, 1, start=12)[0][0]
    image, geometry = read_image(source)
    # the tiny test network's patch is 16 x 24 x 16: a crop a little larger takes 2 x 2 x 2 windows, the whole case
    # many more
    small = np.ascontiguousarray(image[8:28, 12:40, 8:28])
    write_image(small, Geometry(small.shape, geometry.spacing, geometry.origin, geometry.direction),
                tmp_path / "in" / "small.nii.gz")
    write_image(image, geometry, tmp_path / "in" / "large.nii.gz")
    assert window_count(small.shape, model.patch_size) <= CPU_TTA_MAX_WINDOWS < window_count(image.shape,
                                                                                               model.patch_size)
    results = {}
    for tta in (None, True, False):
        predict(tiny_model, tmp_path / "in", tmp_path / str(tta), device="cpu", tta=tta, progress="none")
        results[tta] = {n: read_image(tmp_path / str(tta) / f"{n}.nii.gz")[0] for n in ("small", "large")}
    assert not np.array_equal(results[True]["small"], results[False]["small"])  # mirroring changes something
    assert np.array_equal(results[None]["small"], results[True]["small"])
    assert np.array_equal(results[None]["large"], results[False]["large"])
