"""The uncertainty map: the normalised entropy of the TTA-averaged softmax, written on the input's exact grid,
summarised per case (mean, per segment, ranking score) in the return value and the ``done`` event; a noise volume
scores higher than real scans. Real files throughout: hippocampus cases from ../shared/data and a model trained on the CPU."""

import json
import os

import numpy as np
import pytest
import torch

from bad_inputs import run_cli
from sslseg.errors import UserError
from sslseg.finetuning import finetune
from sslseg.imageio import Geometry, read_image, write_image
from sslseg.inference import predict, segment_array
from sslseg.model_folder import load_model
from sslseg.preprocessing import read_channels
from sslseg.uncertainty import entropy, summarize
from test_inference_geometry import files

NAMES = {1: "Anterior", 2: "Posterior"}
SUMMARY_KEYS = {"mean", "per_segment", "score", "file"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hippocampus_dir):
    """The test preset's network trained for its 20 steps on six cases: weak, but it has seen anatomy."""
    images, labels = files(hippocampus_dir, 6)
    return finetune("none", images=images, labels=labels, label_names=NAMES,
                    out=tmp_path_factory.mktemp("model") / "hippo", preset="test", device="cpu", val_cases=0,
                    progress="none")


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, hippocampus_dir):
    """Three real scans (one of them on an oblique, shifted grid) and noise with a real scan's statistics."""
    folder = tmp_path_factory.mktemp("candidates")
    images, _ = files(hippocampus_dir, 3, start=40)
    for index, path in enumerate(images):
        image, geometry = read_image(path)
        if index == 0:
            rotated = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
            geometry = Geometry(geometry.shape, (0.9, 1.2, 1.6), (11.5, -3.25, 40.0), tuple(rotated.ravel()))
        write_image(image, geometry, folder / f"real{index}.nii.gz")
    image, geometry = read_image(images[-1], np.float32)
    noise = np.random.default_rng(0).normal(image.mean(), image.std(), image.shape).astype(np.float32)
    write_image(noise, geometry, folder / "noise.nii.gz")
    return folder


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, model_dir, candidates):
    out = tmp_path_factory.mktemp("out")
    return predict(model_dir, candidates, out, device="cpu", uncertainty=True), out


# --- the measure ---------------------------------------------------------------------------------------------

def test_entropy_is_normalised_for_numpy_and_torch():
    probabilities = np.array([[1.0, 1 / 3, 0.5, 0.0], [0.0, 1 / 3, 0.5, 0.0], [0.0, 1 / 3, 0.0, 1.0]], np.float32)
    expected = [0.0, 1.0, np.log(2) / np.log(3), 0.0]
    assert np.allclose(entropy(probabilities), expected, atol=1e-5)
    assert np.allclose(entropy(torch.from_numpy(probabilities)).numpy(), expected, atol=1e-5)
    random = torch.softmax(torch.randn(5, 7, 8, 9), dim=0)
    values = entropy(random)
    assert values.shape == (7, 8, 9) and 0.0 <= float(values.min()) and float(values.max()) <= 1.0


def test_summary_per_segment_and_score():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[2, 2, 2] = 1
    uncertainty = np.full(labels.shape, 0.1, np.float32)
    uncertainty[2, 2, 2] = 0.4
    uncertainty[0, 0, 0] = 0.9  # unsure far from the structure: counts towards the score too
    summary = summarize(labels, uncertainty, [{"value": 1, "name": "A"}, {"value": 2, "name": "B"}])
    assert summary["per_segment"] == {"A": pytest.approx(0.4), "B": None}
    assert summary["mean"] == pytest.approx(float(uncertainty.mean()))
    # the voxel, its six neighbours and the doubtful corner
    assert summary["score"] == pytest.approx((0.4 + 6 * 0.1 + 0.9) / 8)
    assert summarize(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 3), np.float32), [])["score"] == 0.0


# --- prediction with uncertainty ------------------------------------------------------------------------------

def test_uncertainty_maps_lie_exactly_on_the_inputs_grid(predicted, candidates, model_dir):
    written, out = predicted
    labels_meta = load_model(model_dir).labels
    assert sorted(written.uncertainty) == ["noise", "real0", "real1", "real2"]
    for name, summary in written.uncertainty.items():
        assert set(summary) == SUMMARY_KEYS and set(summary["per_segment"]) == set(NAMES.values())
        assert summary["file"] == os.path.abspath(out / f"{name}_uncertainty.nii.gz") and summary["file"] in written
        image, geometry = read_image(candidates / f"{name}.nii.gz")
        values, grid = read_image(summary["file"])
        assert values.dtype == np.float32 and values.shape == image.shape
        assert grid.same_grid(geometry, tolerance=1e-5), (name, grid, geometry)
        assert 0.0 <= values.min() and values.max() <= 1.0 and values.std() > 0
        # the summary is that of the written map and labels
        labels, _ = read_image(out / f"{name}.nii.gz")
        assert summarize(labels, values, labels_meta) == {k: v for k, v in summary.items() if k != "file"}


def test_noise_scores_higher_than_every_real_scan(predicted):
    written, _ = predicted
    scores = {name: summary["score"] for name, summary in written.uncertainty.items()}
    assert all(scores["noise"] > scores[name] for name in ("real0", "real1", "real2")), scores


def test_segment_array_returns_the_map_of_the_tta_mean(model_dir, hippocampus_dir):
    model = load_model(model_dir)
    image, geometry = read_channels([files(hippocampus_dir, 1, start=50)[0][0]], "case", 1)
    labels, uncertainty = segment_array(model, image, geometry, torch.device("cpu"), tta=True, uncertainty=True)
    assert labels.shape == uncertainty.shape == geometry.shape and uncertainty.dtype == np.float32
    assert np.array_equal(labels, segment_array(model, image, geometry, torch.device("cpu"), tta=True))
    plain = segment_array(model, image, geometry, torch.device("cpu"), tta=False, uncertainty=True)[1]
    assert not np.allclose(plain, uncertainty)  # the mirrorings change the averaged softmax


def test_cli_reports_the_summaries_in_the_done_event(tmp_path, model_dir, hippocampus_dir):
    source = files(hippocampus_dir, 1, start=60)[0][0]
    result = run_cli("predict", "--model", model_dir, "--input", source, "--output", tmp_path / "out",
                     "--device", "cpu", "--uncertainty", "--progress", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    done = events[-1]
    assert done["event"] == "done" and len(done["outputs"]) == 2
    name = os.path.basename(source)[:-len(".nii.gz")]
    summary = done["uncertainty"][name]
    assert set(summary) == SUMMARY_KEYS and 0.0 < summary["score"] <= 1.0
    assert any("TTA on" in e.get("message", "") for e in events if e["event"] == "log")  # --uncertainty turns it on


def test_uncertainty_option_is_checked_and_map_names_cannot_collide(tmp_path, model_dir, candidates):
    with pytest.raises(UserError, match="uncertainty"):
        predict(model_dir, candidates, tmp_path / "a", device="cpu", uncertainty="yes")
    image, geometry = read_image(candidates / "real1.nii.gz")
    write_image(image, geometry, tmp_path / "in" / "x.nii.gz")
    write_image(image, geometry, tmp_path / "in" / "x_uncertainty.nii.gz")
    with pytest.raises(UserError, match="both be written as"):
        predict(model_dir, tmp_path / "in", tmp_path / "b", device="cpu", uncertainty=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
