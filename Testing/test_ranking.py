"""Ranking unlabelled cases by the model's uncertainty (``sslseg rank``, ``sslseg.ranking.rank_cases``): a
deliberately corrupted (noise) volume ranks first among real hippocampus scans, ranking.json is complete and valid,
the command line reports the ranking (table, or a final JSON ``done`` event), and bad input is refused before any
work, leaving the inputs untouched and nothing half-written.

Real files throughout: hippocampus cases copied from ../shared/data, a model fine-tuned on the
CPU (the cpu preset's small network, 60 steps), the CLI in subprocesses."""

import json
import os
import shutil

import numpy as np
import pytest

import sslseg
from bad_inputs import Untouched, assert_refused, partial_files, run_cli
from sslseg.imageio import read_image, write_image
from sslseg.ranking import RANKING_FILE, order_by_uncertainty, rank_cases
from conftest import copy_dataset_subset

TRAIN_CASES = 6
CANDIDATES = 3
ENTRY_KEYS = {"case", "input", "segmentation", "uncertainty_map", "score", "per_segment"}


@pytest.fixture(scope="module")
def data(tmp_path_factory, hippocampus_dir):
    """Six training cases (copied, with their own dataset.json) and a candidate folder: three other real scans and
    one volume of noise on a real scan's grid, with the scan's intensity statistics."""
    root = tmp_path_factory.mktemp("inputs")
    entries = copy_dataset_subset(hippocampus_dir, root / "train", TRAIN_CASES)
    candidates = root / "candidates"
    candidates.mkdir()
    for entry in entries[TRAIN_CASES:TRAIN_CASES + CANDIDATES]:
        shutil.copyfile(os.path.join(hippocampus_dir, entry["image"]), candidates / os.path.basename(entry["image"]))
    image, geometry = read_image(os.path.join(hippocampus_dir, entries[-1]["image"]), np.float32)
    noise = np.random.default_rng(0).normal(image.mean(), image.std(), image.shape).astype(np.float32)
    write_image(noise, geometry, candidates / "noise.nii.gz")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, data):
    """A small real model: the cpu preset's network, 60 steps on the CPU (about a minute). The test preset's network
    is too small for this: after hundreds of steps its softmax is still close to uniform on every voxel (normalised
    entropy 0.7 and more), so no case looks more uncertain than another; this one is sure enough of real anatomy that
    a volume of noise stands out (by 0.03 to 0.07 in score over the seeds tried)."""
    out = tmp_path_factory.mktemp("engine") / "hippocampus"
    return sslseg.finetune("none", data=str(data / "train"), out=str(out), preset="cpu", steps=60, device="cpu",
                           val_cases=0, seed=0, progress="none")


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, data, model):
    out = tmp_path_factory.mktemp("ranked")
    # without mirroring (8 times faster on the CPU): the entropy of one softmax still tells noise from anatomy
    return rank_cases(model, data / "candidates", out, device="cpu", tta=False), out


def test_noise_volume_ranks_first(ranked):
    ranking, _ = ranked
    assert [entry["case"] for entry in ranking][0] == "noise"
    assert len(ranking) == CANDIDATES + 1
    scores = [entry["score"] for entry in ranking]
    assert all(isinstance(s, float) and np.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > scores[1], "the noise volume is not more uncertain than every real scan"


def test_ranking_json_is_valid_and_points_at_the_outputs(ranked, data):
    ranking, out = ranked
    written = json.loads((out / RANKING_FILE).read_text())
    assert written == ranking
    for entry in written:
        assert set(entry) == ENTRY_KEYS
        assert os.path.dirname(entry["input"]) == str(data / "candidates")
        labels, label_geometry = read_image(entry["segmentation"])
        uncertainty, geometry = read_image(entry["uncertainty_map"])
        _, input_geometry = read_image(entry["input"])
        assert geometry.same_grid(input_geometry) and label_geometry.same_grid(input_geometry)
        assert uncertainty.dtype == np.float32 and labels.shape == uncertainty.shape
        assert set(entry["per_segment"]) == {"Anterior", "Posterior"}
    assert not partial_files(out)


def test_cli_prints_the_table_and_reports_the_ranking_as_json(tmp_path, data, model, ranked):
    candidates = data / "candidates"
    with Untouched(candidates, model):
        table = run_cli("rank", "--model", model, "--input", candidates, "--output", tmp_path / "bar",
                        "--device", "cpu", "--no-tta")
        events = run_cli("rank", "--model", model, "--input", *sorted(candidates.iterdir()),
                         "--output", tmp_path / "json", "--device", "cpu", "--no-tta", "--progress", "json")
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0][:2] == ["rank", "score"] and rows[1][0] == "1" and rows[1][-1] == "noise"
    assert events.returncode == 0, events.stderr[-2000:]
    parsed = [json.loads(line) for line in events.stdout.splitlines()]  # every stdout line is an event
    assert [e["event"] for e in parsed].count("done") == 1 and parsed[-1]["event"] == "done"
    ranking = parsed[-1]["ranking"]
    assert ranking == json.loads((tmp_path / "json" / RANKING_FILE).read_text())
    assert [e["case"] for e in ranking] == [e["case"] for e in ranked[0]]  # same model, same inputs, same order


def _made(path, folder=False):
    """``path``, created first as a file (or a folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if folder else path.write_text("x")
    return path


# each: (tmp_path, candidates folder) -> (options replacing the defaults, words the one error line must contain)
BAD_RUNS = {
    "missing input": (lambda t, c: {"--input": [t / "nothing.nii.gz"]}, ["input", "not found"]),
    "not an image": (lambda t, c: {"--input": [_made(t / "notes.txt")]}, ["not an image"]),
    "input twice": (lambda t, c: {"--input": [c, c / "noise.nii.gz"]}, ["more than once"]),
    "not a model": (lambda t, c: {"--model": [_made(t / "empty", folder=True)]}, ["model"]),
    "output is a file": (lambda t, c: {"--output": [_made(t / "afile")]}, ["--output", "not a folder"]),
    "ranking.json is a folder": (lambda t, c: {"--output": [_made(t / "taken" / RANKING_FILE, folder=True).parent]},
                                 [RANKING_FILE, "folder"]),
    "bad overlap": (lambda t, c: {"--overlap": ["1.5"]}, ["--overlap"]),
    "bad device": (lambda t, c: {"--device": ["gpu7"]}, ["device"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_input_is_refused_before_any_work(tmp_path, data, model, case):
    change, words = BAD_RUNS[case]
    options = {"--model": [model], "--input": [data / "candidates"], "--output": [tmp_path / "out"],
               "--device": ["cpu"], **change(tmp_path, data / "candidates")}
    with Untouched(data, model):
        result = run_cli("rank", *[item for key, values in options.items() for item in (key, *values)])
    assert_refused(result, *words)
    assert not os.path.lexists(tmp_path / "out") and not os.path.lexists(tmp_path / "taken" / "noise.nii.gz")
    assert not partial_files(tmp_path)


def test_order_puts_unscored_cases_last_and_breaks_ties_by_name():
    entries = [{"case": c, "score": s} for c, s in (("b", 0.2), ("c", None), ("a", 0.2), ("d", 0.9))]
    assert [e["case"] for e in order_by_uncertainty(entries)] == ["d", "a", "b", "c"]


def test_active_learning_benchmark_smoke_run(tmp_path, hippocampus_dir):
    """The benchmark script's whole protocol on tiny settings (about ten seconds): three models, a ranked pool, the
    cases chosen by uncertainty and at random, their test Dice, the JSON record and the Markdown table."""
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "active_learning.py")
    json_out, md_out = tmp_path / "al.json", tmp_path / "al.md"
    with Untouched(hippocampus_dir):
        result = subprocess.run([sys.executable, script, "--smoke", "--data", hippocampus_dir, "--json-out", json_out,
                                 "--md-out", md_out], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith("python ") and "--smoke" in result.stdout.splitlines()[0]
    record = json.loads(json_out.read_text())
    run = record["runs"][0]
    chosen = {case for ids in run["chosen"].values() for case in ids}
    assert set(run["chosen"]) == {"uncertainty", "random"}
    assert all(len(ids) == record["settings"]["add"] for ids in run["chosen"].values())
    assert chosen <= set(run["pool"]) and not chosen & set(run["initial"])
    assert len(run["test"]) == record["settings"]["test"]
    assert not set(run["test"]) & (chosen | set(run["initial"]) | set(run["pool"]))  # never seen in training
    # the uncertainty choice is the top of the pool's ranking by score
    top = max(run["pool"], key=lambda case: run["pool"][case]["score"])
    assert run["chosen"]["uncertainty"][0] == top
    for strategy in ("initial", "random", "uncertainty"):
        assert 0.0 <= run["test_dice"][strategy]["mean"] <= 1.0
    table = md_out.read_text()
    assert "| seed | initial | + random | + uncertainty |" in table and record["command"] in table
