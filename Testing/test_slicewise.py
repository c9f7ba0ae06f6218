"""The slice-wise (2D) configuration: the plan for thick-slice and isotropic geometries, the automatic choice and its
overrides, the 2D network's folding of slices, and a real short 2D run on synthetic cine-cardiac-like stacks that
predicts onto each input's exact grid, with the choice recorded in model.json and read back by predict and by the
Slicer module's model list."""

import json
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from sslseg.errors import UserError
from sslseg.finetuning.planning import make_plan
from sslseg.presets import get_preset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def geometries(shape_zyx, spacing_xyz, count=10, jitter=0):
    """``count`` case geometries (shape [z, y, x], spacing [x, y, z]), in-plane sizes varied by up to ``jitter``."""
    return [SimpleNamespace(shape=(shape_zyx[0], shape_zyx[1] + (i * 7) % (jitter + 1),
                                   shape_zyx[2] - (i * 5) % (jitter + 1)), spacing=tuple(spacing_xyz))
            for i in range(count)]


CARDIAC = geometries((10, 220, 250), (1.5, 1.5, 10.0), jitter=20)  # the hidden task's geometry
CARDIAC_BOXES = [[80.0, 100.0, 110.0]] * 10  # labelled region [z, y, x] mm
HIPPOCAMPUS = geometries((36, 50, 35), (1.0, 1.0, 1.0))


def budget(preset):
    from sslseg.networks.resenc import architecture_kwargs, step_cost

    return step_cost(architecture_kwargs(preset.arch), preset.budget_patch) * preset.batch_size


def test_thick_slices_plan_a_slice_wise_network_within_the_same_budget():
    from sslseg.networks.resenc import step_cost

    preset = get_preset("cpu")
    plan = make_plan(CARDIAC, "MR", 1, preset, foreground_boxes=CARDIAC_BOXES, config="auto")
    assert plan.configuration == "2d" and plan.slice_axis == 0
    assert plan.reasons[0].startswith("configuration 2d (auto): thick slices along z")
    assert plan.patch_size[0] == 1 and plan.patch_size[1] < 220 and plan.patch_size[2] < 250  # a part of a slice,
    assert plan.patch_size[1] * 1.5 >= 100 and plan.patch_size[2] * 1.5 >= 110  # holding the labelled region,
    assert plan.batch_size >= 4  # many of them per step
    config = plan.spec["config"]
    assert config["slice_axis"] == 0 and all(len(k) == 2 for k in config["kernel_sizes"])
    assert all(len(s) == 2 for s in config["strides"]) and plan.stride[0] == 1
    assert all(p % s == 0 for p, s in zip(plan.patch_size, plan.stride))
    assert step_cost(config, plan.patch_size) * plan.batch_size <= budget(preset) * 1.001
    assert plan.spacing == [1.5, 1.5, 10.0]  # the data's own grid: no interpolation across slices
    saved = plan.to_dict()
    assert saved["configuration"] == "2d" and saved["slice_axis"] == "z"
    # the same data, 3D asked for: the thick-slice 3D plan of before (all slices, a small in-plane patch)
    volume = make_plan(CARDIAC, "MR", 1, preset, foreground_boxes=CARDIAC_BOXES, config="3d")
    assert volume.configuration == "3d" and volume.patch_size[0] > 1 and "slice_axis" not in volume.spec["config"]
    assert volume.reasons[0] == "configuration 3d: as asked"


def test_isotropic_data_keeps_the_3d_plan_unchanged():
    preset = get_preset("cpu")
    boxes = [[30.0, 40.0, 20.0]] * 10
    auto = make_plan(HIPPOCAMPUS, "MR", 1, preset, foreground_boxes=boxes, config="auto")
    volume = make_plan(HIPPOCAMPUS, "MR", 1, preset, foreground_boxes=boxes, config="3d")
    assert auto.configuration == "3d" and auto.slice_axis is None
    assert auto.reasons[0] == "configuration 3d (auto): no thick-slice axis"
    assert (auto.patch_size, auto.batch_size, auto.spacing, auto.spec) == \
        (volume.patch_size, volume.batch_size, volume.spacing, volume.spec)
    assert auto.reasons[1:] == volume.reasons[1:]


def test_thick_slices_whose_3d_patch_holds_the_slice_stay_3d():
    """Hippocampus at 5 mm: the 3D patch holds each slice whole, and 3D measured better there."""
    thick = geometries((7, 50, 36), (1.0, 1.0, 5.0), jitter=4)
    preset = get_preset("cpu")
    auto = make_plan(thick, "MR", 1, preset, config="auto")
    volume = make_plan(thick, "MR", 1, preset, config="3d")
    assert auto.configuration == "3d" and "thick slices along z" in auto.reasons[0]
    assert "but a 3D patch within the budget sees 100 % of each slice" in auto.reasons[0]
    assert (auto.patch_size, auto.batch_size, auto.spec) == (volume.patch_size, volume.batch_size, volume.spec)
    assert make_plan(thick, "MR", 1, preset, config="2d").configuration == "2d"


def test_two_d_can_be_asked_for_on_isotropic_data_and_thin_structures_keep_their_grid():
    plan = make_plan(HIPPOCAMPUS, "MR", 1, get_preset("cpu"), config="2d")
    assert plan.configuration == "2d" and plan.slice_axis == 0 and plan.patch_size[0] == 1
    assert plan.spacing == [1.0, 1.0, 1.0]
    assert all(kernel == [3, 3] for kernel in plan.spec["config"]["kernel_sizes"])


def test_fixed_networks_keep_3d_and_bad_configurations_are_refused():
    preset = get_preset("cpu")
    fixed = make_plan(CARDIAC, "MR", 1, preset, stride=[16, 16, 16], config="auto")
    assert fixed.configuration == "3d" and "starting network is a 3D network" in fixed.reasons[0]
    with pytest.raises(UserError, match="--config 2d needs a network planned from the data"):
        make_plan(CARDIAC, "MR", 1, preset, stride=[16, 16, 16], config="2d")
    with pytest.raises(UserError, match="--config must be one of"):
        make_plan(CARDIAC, "MR", 1, preset, config="4d")
    with pytest.raises(UserError, match="one slice thick"):
        make_plan(CARDIAC, "MR", 1, preset, config="2d", patch_size=[2, 64, 64])
    from sslseg.finetuning.options import check_finetune_options

    with pytest.raises(UserError, match="--config"):
        check_finetune_options(out="/tmp/never-written", config="4d")


@pytest.mark.parametrize("axis", [0, 2])
def test_the_2d_network_segments_every_slice_on_its_own(axis):
    import torch

    from sslseg.networks import build_from_spec, total_stride
    from sslseg.networks.resenc import planned_spec

    spec = planned_spec("ResEncT-test", [[1, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]], slice_axis=0)
    spec["config"]["slice_axis"] = axis
    network = build_from_spec(spec, 1, 3).eval()
    assert total_stride(spec["config"]) == [1 if a == axis else 4 for a in range(3)]
    x = torch.randn(2, 1, *[3 if a == axis else 16 for a in range(3)])
    with torch.no_grad():
        out = network(x)
        assert out.shape == (2, 3, *x.shape[2:])
        for k in range(3):
            one = x.select(2 + axis, k)
            assert torch.allclose(out.select(2 + axis, k), network(one), atol=1e-5)
        network.decoder.deep_supervision = True
        deep = network(x)
    assert [tuple(d.shape) for d in deep][0] == tuple(out.shape) and deep[1].shape[2 + axis] == 3


# --- a real short run ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cardiac_folder(tmp_path_factory):
    """Four synthetic cine-cardiac-like stacks (bench/cardiac_phantom.py) as a dataset folder, oblique grids."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from cardiac_phantom import make_cardiac
    from make_tasks import write_dataset

    folder = tmp_path_factory.mktemp("cardiac") / "cardiac"
    make_cardiac(write_dataset, seed=3, cases=4)(str(folder))
    return str(folder)


def test_a_short_2d_run_predicts_onto_each_input_grid(cardiac_folder, tmp_path):
    import SimpleITK as sitk

    import sslseg
    from sslseg.model_folder import load_model

    import io

    from sslseg.progress import Reporter

    stream = io.StringIO()
    out = sslseg.finetune("none", data=cardiac_folder, out=str(tmp_path / "model"), preset="test", steps=4,
                          device="cpu", progress=Reporter("json", stream=stream))
    messages = [json.loads(line) for line in stream.getvalue().splitlines()]
    meta = json.load(open(os.path.join(out, "model.json"), encoding="utf-8"))
    assert meta["plan"]["configuration"] == "2d" and meta["plan"]["slice_axis"] == "z"
    assert meta["plan"]["reasons"][0].startswith("configuration 2d (auto)")
    assert meta["network"]["config"]["slice_axis"] == 0 and meta["patch_size"][0] == 1
    assert "in-plane" in meta["recipe"]["augmentation"]["rotation"]
    assert any("configuration 2d (auto)" in str(m.get("message", "")) for m in messages)
    model = load_model(out)
    assert "configuration 2d" in model.summary()
    images = sorted(os.path.join(cardiac_folder, "imagesTr", n) for n in os.listdir(
        os.path.join(cardiac_folder, "imagesTr")))[:2]
    written = sslseg.predict(out, images, str(tmp_path / "pred"), device="cpu", tta=True)  # in-plane mirroring
    for image_path, label_path in zip(images, written):
        source, result = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
        assert result.GetSize() == source.GetSize()
        assert np.allclose(result.GetSpacing(), source.GetSpacing())
        assert np.allclose(result.GetOrigin(), source.GetOrigin())
        assert np.allclose(result.GetDirection(), source.GetDirection())
        assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1, 2, 3}
    # continuing from it (--init-model) keeps the slice-wise configuration
    again = sslseg.finetune("none", data=cardiac_folder, out=str(tmp_path / "again"), preset="test", steps=2,
                            device="cpu", progress="none", init_model=out)
    plan = json.load(open(os.path.join(again, "model.json"), encoding="utf-8"))["plan"]
    assert plan["configuration"] == "2d" and plan["patch_size"] == meta["patch_size"]
    # the Slicer module's model list shows the configuration read from model.json
    from SSLSegmentationLib.modelStore import ModelStore

    store = ModelStore(tmp_path / "store")
    store.addModel(out, "cardiac", move=False)
    (listed,) = store.listModels()
    assert listed["configuration"] == "2d"


def test_3d_override_is_recorded(cardiac_folder, tmp_path):
    import sslseg

    out = sslseg.finetune("none", data=cardiac_folder, out=str(tmp_path / "model"), preset="test", steps=2,
                          device="cpu", progress="none", config="3d")
    meta = json.load(open(os.path.join(out, "model.json"), encoding="utf-8"))
    assert meta["plan"]["configuration"] == "3d" and meta["plan"]["reasons"][0] == "configuration 3d: as asked"
    assert "slice_axis" not in meta["network"]["config"] and meta["patch_size"][0] > 1
    assert math.prod(meta["patch_size"]) > 0
