"""The developers' own benchmark tasks (bench/make_tasks.py) and the side-by-side benchmark on any task folder
(bench/task_benchmark.py with bench/plain_monai_baseline.py): the tasks are valid dataset folders with the intended
grids and labels, the plain script plans by its stated rule, and a short run of both methods is scored."""

import importlib
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
VIEWS = 3  # views per TotalSegmentator task here: the first ones of the full 30-case build


def bench_module(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def tasks(hippocampus_dir, totalseg_dir, tmp_path_factory):
    """The three tasks, built once from the real data (aniso in full, VIEWS views of the others)."""
    make_tasks = bench_module("make_tasks")
    out = tmp_path_factory.mktemp("tasks")
    lines = []
    built = make_tasks.make_tasks(str(out), source=os.path.dirname(hippocampus_dir), views=VIEWS, log=lines.append)
    assert len(lines) == 3 and all("label(s) absent" in line for line in lines)
    return built


def read(path):
    import SimpleITK as sitk

    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), image


def test_tasks_load_as_datasets_with_the_intended_grids(tasks):
    from sslseg.datasets import load_dataset

    expected = {"aniso": (100, {1: "Anterior", 2: "Posterior"}, (1.0, 1.0, 5.0), None),
                "multilabel": (VIEWS, {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "liver", 5: "stomach"},
                               (1.5, 1.5, 1.5), (160, 130, 40)),
                "large": (VIEWS, {1: "kidney"}, (0.75, 0.75, 0.75), (128, 160, 64))}
    for name, (count, labels, spacing, size) in expected.items():
        dataset = load_dataset(tasks[name])
        assert len(dataset.cases) == count and dataset.label_names == labels, name
        for case in dataset.cases:
            label, header = read(case.label)
            image, image_header = read(case.images[0])
            assert image.shape == label.shape and image_header.GetOrigin() == header.GetOrigin()
            assert np.allclose(header.GetSpacing(), spacing), (case.case_id, header.GetSpacing())
            if size is not None:
                assert header.GetSize() == size
            else:
                assert 5 <= header.GetSize()[2] <= 10, (case.case_id, header.GetSize())
            assert set(np.unique(label)) == set(range(len(labels) + 1)), case.case_id  # every label present
    for name in ("multilabel", "large"):
        meta = json.load(open(os.path.join(tasks[name], "dataset.json")))
        assert "ONE subject" in meta["description"] and meta["licence"] == "Apache-2.0"


def test_aniso_labels_are_the_source_labels_at_the_slab_centres(tasks, hippocampus_dir):
    """Nearest-neighbour sampling of the 1 mm label at the centre of each 5 mm slab, in-plane grid unchanged (every
    case: 39 of them put a slab centre half-way between two source slices)."""
    for name in sorted(os.listdir(os.path.join(tasks["aniso"], "labelsTr"))):
        source, source_header = read(os.path.join(hippocampus_dir, "labelsTr", name.replace("aniso", "hippocampus")))
        thick, header = read(os.path.join(tasks["aniso"], "labelsTr", name))
        depth = source.shape[0]
        slices = int(round(depth / 5.0))
        centres = -0.5 + (depth - 5.0 * slices) / 2 + 2.5 + 5.0 * np.arange(slices)
        assert thick.shape == (slices, *source.shape[1:])
        assert np.array_equal(thick, source[np.clip(np.floor(centres + 0.5).astype(int), 0, depth - 1)])
        assert np.allclose(header.TransformContinuousIndexToPhysicalPoint((0, 0, 0)),
                           source_header.TransformContinuousIndexToPhysicalPoint((0, 0, centres[0])))


def test_views_are_seeded_and_keep_plausible_organ_volumes(tasks, totalseg_dir, tmp_path):
    make_tasks = bench_module("make_tasks")
    again = make_tasks.make_tasks(str(tmp_path), tasks=["large"], source=os.path.dirname(totalseg_dir), views=2,
                                  log=lambda line: None)["large"]
    for case in ("large_000", "large_001"):
        for sub in ("imagesTr", "labelsTr"):
            first, _ = read(os.path.join(tasks["large"], sub, case + ".nii.gz"))
            second, _ = read(os.path.join(again, sub, case + ".nii.gz"))
            assert np.array_equal(first, second), (case, sub)
    source, header = read(os.path.join(totalseg_dir, "labelsTr", "ts_ct_sm.nii.gz"))
    source_ml = {k: np.isin(source, [v]).sum() * np.prod(header.GetSpacing()) / 1000
                 for k, v in enumerate(make_tasks.ORGANS, start=1)}
    for number in range(VIEWS):
        view, view_header = read(os.path.join(tasks["multilabel"], "labelsTr", f"multilabel_{number:03d}.nii.gz"))
        for k, full in source_ml.items():
            view_ml = (view == k).sum() * np.prod(view_header.GetSpacing()) / 1000
            # at least the kept 30 %, at most the organ zoomed by the smallest scaling (0.9)
            assert 0.29 * full <= view_ml <= full / 0.9 ** 3 + 1, (number, k, view_ml, full)


def test_plain_baseline_plans_from_shape_and_spacing():
    plain = bench_module("plain_monai_baseline")
    hippocampus = plain.plan([(35, 50, 35), (39, 55, 39)], [(1.0, 1.0, 1.0)] * 2)  # as before the rule existed
    assert hippocampus["patch"] == [32, 48, 32] and hippocampus["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert hippocampus["kernels"] == [[3, 3, 3]] * 4 and hippocampus["filters"] == [16, 32, 64, 128]
    cardiac = plain.plan([(10, 250, 220)], [(10.0, 1.5, 1.5)])  # thick slices: in-plane first, 1x3x3 kernels
    assert cardiac["patch"] == [10, 160, 160]
    assert cardiac["kernels"][:2] == [[1, 3, 3]] * 2 and cardiac["strides"][1:3] == [[1, 2, 2]] * 2
    thin = plain.plan([(7, 50, 35)], [(5.0, 1.0, 1.0)])  # too few slices to downsample along z at all
    assert thin["patch"][0] == 7 and all(s[0] == 1 for s in thin["strides"])
    large = plain.plan([(88, 140, 200)], [(0.625, 0.625, 0.625)])
    assert np.prod(large["patch"]) <= plain.PATCH_VOXELS and large["patch"] == [64, 64, 64]
    network = plain.network_from(thin, 1, 3)
    import torch

    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 1, *thin["patch"])).shape == (1, 3, *thin["patch"])


def test_short_side_by_side_run_scores_both_methods(tasks, tmp_path):
    task_benchmark = bench_module("task_benchmark")
    out = tmp_path / "run"
    records = task_benchmark.main(["--data", tasks["aniso"], "--minutes", "0.3", "--train", "2", "--val", "auto",
                                   "--test", "1", "--out", str(out), "--code", f"tree={REPO}"])
    # --code runs the same command from another source tree (here this one: the code before a change, usually)
    assert [r["label"] for r in records] == ["sslseg-default", "plain-monai", "sslseg-tree"]
    product, plain, _ = records
    for record in records:
        assert record["exit_codes"] in ([0, 0], [0]), record
        assert set(record["test_dice"]["per_label"]) == {"Anterior", "Posterior"}
        assert record["test_dice"]["cases"] == 1 and record["steps"] > 0
        assert 0.0 <= record["test_dice"]["mean"] <= 1.0
    assert sorted(product["train_cases"]) == sorted(plain["train_cases"]) and len(plain["train_cases"]) == 2
    assert product["val_cases"] == [] and "warning" not in product
    # --val auto: the user's command, without --val-cases (the product's default holds none out of 2 cases)
    assert "--val-cases" not in product["commands"][0] and "--val 0" in plain["commands"][0]
    assert plain["plan"]["kernels"][0] == [1, 3, 3]  # the thick-slice rule, on the real task
    test_case = records[0]["test_cases"][0]
    for label in ("sslseg-default", "plain-monai", "sslseg-tree"):
        assert (out / "predictions" / label / f"{test_case}.nii.gz").is_file()
    table = (out / "results.md").read_text()
    assert "| aniso | sslseg-default |" in table and "| aniso | plain-monai |" in table
    assert "command: python bench/task_benchmark.py --data" in table
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
