"""Planning from the data (sslseg.finetuning.planning): one plan per data shape (isotropic, thick-slice,
multi-channel, tiny, large, with a fixed backbone network), the normalisation rules, and the planned network built
for real (a CPU forward pass whose output has the patch's shape)."""

import json
import math

import numpy as np
import pytest
import torch

from sslseg.backbones.catalog import catalog_entry
from sslseg.errors import UserError
from sslseg.finetuning.planning import foreground_box, make_plan, plan_topology, thick_axis
from sslseg.imageio import Geometry
from sslseg.networks import build_from_spec, spec_for
from sslseg.networks.resenc import architecture_kwargs, step_cost
from sslseg.presets import get_preset

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def geometries(shape_zyx, spacing_xyz, count=10, jitter=0.08, seed=0, spacings=None):
    """``count`` case geometries around a median shape [z, y, x] (a few % apart, as real cases are)."""
    rng = np.random.default_rng(seed)
    result = []
    for index in range(count):
        shape = tuple(max(1, int(round(s * (1 + rng.uniform(-jitter, jitter))))) for s in shape_zyx)
        spacing = tuple(spacings[index]) if spacings is not None else tuple(spacing_xyz)
        result.append(Geometry(shape, spacing, (0.0, 0.0, 0.0), IDENTITY))
    return result


def plan_for(shape_zyx, spacing_xyz, preset="cpu", modality="MR", in_channels=1, **kwargs):
    return make_plan(geometries(shape_zyx, spacing_xyz), modality, in_channels, get_preset(preset), **kwargs)


def assert_builds_and_keeps_the_shape(plan, in_channels=1, num_classes=3):
    """The planned spec builds a network whose output covers exactly the planned patch (a real forward pass)."""
    network = build_from_spec(plan.spec, in_channels, num_classes).eval()
    with torch.no_grad():
        output = network(torch.zeros(1, in_channels, *plan.patch_size))
    assert tuple(output.shape) == (1, num_classes, *plan.patch_size)
    assert [p % s for p, s in zip(plan.patch_size, plan.stride)] == [0, 0, 0]


def budget_cost(preset="cpu", in_channels=1):
    preset = get_preset(preset)
    return step_cost(architecture_kwargs(preset.arch), preset.budget_patch, in_channels)


# --- one plan per data shape ---------------------------------------------------------------------------------

def test_isotropic_hippocampus_like_data_keep_the_cpu_sweet_spot():
    plan = plan_for((36, 50, 35), (1.0, 1.0, 1.0))
    assert plan.spacing == [1.0, 1.0, 1.0] and plan.anisotropy_axis is None
    assert plan.patch_size == [32, 48, 32] and plan.batch_size == 2
    # the very network the cpu preset was tuned with
    assert plan.spec["name"] == "ResEncXS-cpu" and plan.spec["config"] == spec_for("ResEncXS-cpu")["config"]
    assert plan.normalization == "zscore"
    assert_builds_and_keeps_the_shape(plan)
    record = plan.to_dict()
    assert record["anisotropy_axis"] is None and record["kernel_sizes"] == [[3, 3, 3]] * 4 and record["reasons"]
    json.dumps(record)


def test_thick_slices_pool_in_plane_first_with_in_plane_kernels():
    plan = plan_for((10, 250, 220), (1.5, 1.5, 10.0))
    assert plan.anisotropy_axis == 0 and plan.spacing[2] == pytest.approx(10.0)
    config = plan.spec["config"]
    # in-plane strides first, 1x3x3 kernels while z is still much coarser, 3x3x3 at the bottleneck
    assert config["strides"][1] == [1, 2, 2] and config["kernel_sizes"][0] == [1, 3, 3]
    assert config["kernel_sizes"][1] == [1, 3, 3] and config["kernel_sizes"][-1] == [3, 3, 3]
    # the patch covers every slice, and z is never pooled below 4 voxels
    assert plan.patch_size[0] == 10
    size = 10
    for stride in config["strides"]:
        assert stride[0] == 1 or size >= 8
        size //= stride[0]
    assert size >= 4
    # in-plane axes are shrunk to the budget, following the data's aspect, not down to the slice count
    assert min(plan.patch_size[1:]) >= 48
    assert step_cost(config, plan.patch_size) <= budget_cost()
    assert_builds_and_keeps_the_shape(plan)
    assert plan.to_dict()["anisotropy_axis"] == "z"


def test_thick_axis_takes_its_tenth_percentile_spacing():
    spacings = [(1.5, 1.5, 10.0)] * 7 + [(1.5, 1.5, 6.0)] * 3
    found = make_plan(geometries((10, 250, 220), None, spacings=spacings), "MR", 1, get_preset("quick"))
    assert found.spacing[2] == pytest.approx(float(np.percentile([10.0] * 7 + [6.0] * 3, 10)))
    # many thin slices: not a thick-slice axis in nnU-Net's sense, the median spacing stays
    many = make_plan(geometries((200, 250, 220), (1.5, 1.5, 10.0)), "MR", 1, get_preset("quick"))
    assert many.spacing[2] == pytest.approx(10.0)
    assert thick_axis([10.0, 1.5, 1.5]) == 0 and thick_axis([2.0, 1.0, 1.0]) is None


def test_multi_channel_data_plan_and_build_with_every_channel():
    plan = plan_for((36, 50, 35), (1.0, 1.0, 1.0), in_channels=3)
    assert plan.in_channels == 3 and plan.preprocessor().in_channels == 3
    assert plan.patch_size == [32, 48, 32]
    assert_builds_and_keeps_the_shape(plan, in_channels=3)


def test_tiny_cases_smaller_than_one_stride_still_get_a_network():
    plan = plan_for((5, 6, 5), (1.0, 1.0, 1.0))
    assert all(p >= 8 for p in plan.patch_size) and plan.spec["config"]["n_stages"] >= 2
    assert plan.batch_size >= 2
    assert_builds_and_keeps_the_shape(plan)


def test_large_volumes_are_coarsened_on_the_cpu_within_a_bound():
    cpu = make_plan(geometries((88, 140, 200), (0.625,) * 3, count=8), "MR", 1, get_preset("cpu"))
    factor = cpu.spacing[0] / 0.625
    assert 1.0 < factor <= get_preset("cpu").max_coarsening
    assert cpu.spacing[0] == pytest.approx(cpu.spacing[1]) == pytest.approx(cpu.spacing[2])
    median = np.asarray([88, 140, 200]) / factor
    coverage = math.prod(cpu.patch_size) / math.prod(median)
    assert coverage >= 0.11  # about half the median case along each axis
    extent_mm = [p * cpu.spacing[0] for p in cpu.patch_size]
    assert min(extent_mm) >= 25 and max(extent_mm) >= 50  # a 4-6 cm organ fits, unlike a 2 x 3 x 2 cm patch
    assert any("coarsened" in reason for reason in cpu.reasons)
    assert_builds_and_keeps_the_shape(cpu)
    # the GPU presets keep the full resolution and a GPU-sized patch
    gpu = make_plan(geometries((88, 140, 200), (0.625,) * 3, count=8), "MR", 1, get_preset("quick"))
    assert gpu.spacing == pytest.approx([0.625] * 3) and math.prod(gpu.patch_size) > 64 ** 3


def test_coarsening_follows_the_labelled_region_not_the_case():
    def plan_with_box(box_zyx_mm):
        cases = geometries((88, 140, 200), (0.625,) * 3, count=8)
        return make_plan(cases, "MR", 1, get_preset("cpu"), foreground_boxes=[list(box_zyx_mm)] * len(cases))

    # a 5 cm organ: coarsened until the patch holds it, shaped like it
    organ = plan_with_box((50, 55, 55))
    factor = organ.spacing[0] / 0.625
    assert 1.5 < factor <= get_preset("cpu").max_coarsening
    extent_mm = [p * organ.spacing[0] for p in organ.patch_size]
    assert min(extent_mm) >= 45 and max(extent_mm) <= 2 * min(extent_mm)
    assert any("labelled region (55 x 55 x 50 mm" in reason for reason in organ.reasons)
    assert_builds_and_keeps_the_shape(organ)
    # a 1 cm lesion in the same scans keeps the full resolution: the patch holds it already
    lesion = plan_with_box((10, 10, 10))
    assert lesion.spacing == pytest.approx([0.625] * 3)
    assert not any("coarsened" in reason for reason in lesion.reasons)
    # cine cardiac MRI: the heart fits at about its own in-plane spacing; the slices are never touched
    heart = make_plan(geometries((10, 250, 220), (1.5, 1.5, 10.0)), "MR", 1, get_preset("cpu"),
                      foreground_boxes=[[90.0, 120.0, 120.0]] * 10)
    assert heart.spacing[2] == pytest.approx(10.0) and heart.spacing[0] / 1.5 < 1.3
    assert heart.patch_size[0] == 10 and heart.patch_size[1] * heart.spacing[1] >= 110


def test_foreground_box_measures_the_labelled_extent_in_mm():
    label = np.zeros((10, 20, 30), np.uint8)
    label[2:5, 3:13, 7:8] = 2
    assert foreground_box(label, [5.0, 1.0, 0.5]) == [15.0, 10.0, 0.5]
    assert foreground_box(np.zeros((4, 4, 4), np.uint8), [1.0, 1.0, 1.0]) is None


def test_a_backbone_fixes_the_network_and_the_plan_adapts_around_it():
    network_plan = {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore", "patch_size": [160, 160, 160]}
    plan = plan_for((10, 250, 220), (1.5, 1.5, 10.0), preset="cpu", modality="CT", stride=[32, 32, 32],
                    network_plan=network_plan)
    assert plan.spec is None and plan.stride == [32, 32, 32]
    assert plan.spacing == [1.0, 1.0, 1.0]  # the backbone's pretraining spacing, no coarsening
    assert [p % 32 for p in plan.patch_size] == [0, 0, 0]
    assert math.prod(plan.patch_size) <= 32 * 48 * 32 and plan.batch_size == 2
    # nnssl backbones are fine-tuned on z-scored input even for CT data
    assert plan.normalization == "zscore"
    # hippocampus with a backbone on the cpu preset: today's 32^3
    hippo = plan_for((36, 50, 35), (1.0, 1.0, 1.0), stride=[32, 32, 32], network_plan=network_plan)
    assert hippo.patch_size == [32, 32, 32]
    # the GPU presets: at most the backbone's recommended patch
    gpu = plan_for((200, 300, 300), (1.0, 1.0, 1.0), preset="quick", stride=[32, 32, 32], network_plan=network_plan)
    assert all(p <= 160 for p in gpu.patch_size) and math.prod(gpu.patch_size) <= 160 ** 3


def test_explicit_patch_must_fit_the_strides():
    plan = plan_for((36, 50, 35), (1.0, 1.0, 1.0), patch_size=[16, 16, 16], batch_size=3)
    assert plan.patch_size == [16, 16, 16] and plan.batch_size == 3
    assert_builds_and_keeps_the_shape(plan)
    with pytest.raises(UserError, match="multiple of the network's total stride"):
        plan_for((36, 50, 35), (1.0, 1.0, 1.0), patch_size=[36, 50, 36])
    with pytest.raises(UserError, match="multiple"):
        plan_for((36, 50, 35), (1.0, 1.0, 1.0), stride=[32, 32, 32], patch_size=[16, 32, 32])


# --- normalisation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality, network_plan, expected", [
    ("CT", None, "ct"),
    ("MR", None, "zscore"),
    ("CT", {"normalization": "zscore"}, "zscore"),
    ("MR", {"normalization": "ct"}, "ct"),
    ("CT", {"normalization": "rescale01"}, "zscore"),
])
def test_normalisation_follows_the_backbone_else_the_modality(modality, network_plan, expected):
    stride = None if network_plan is None else [16, 16, 16]
    plan = plan_for((36, 50, 35), (1.0, 1.0, 1.0), modality=modality, stride=stride, network_plan=network_plan)
    assert plan.normalization == expected
    assert plan.preprocessor().normalization == expected
    if expected == "ct":
        assert list(plan.intensity_range) == [-1000.0, 1000.0]


def test_misfm_catalog_entries_clip_ct_and_point_at_the_release_folder():
    for name in ("MISFM-FMUNet-AbdomenCT1K", "MISFM-PCTNet-CT10k"):
        entry = catalog_entry(name)
        assert entry["input"]["normalization"] == "ct"
        assert entry["files"]["checkpoint"]["manual"].startswith("https://drive.google.com/drive/folders/")


# --- topology and cost ---------------------------------------------------------------------------------------

def test_topology_follows_nnunet_rules():
    iso = plan_topology([1.0, 1.0, 1.0], [32, 48, 32], max_stages=6)
    assert iso.strides == [[1, 1, 1]] + [[2, 2, 2]] * 3 and iso.kernel_sizes == [[3, 3, 3]] * 4
    thick = plan_topology([10.0, 1.5, 1.5], [10, 64, 64], max_stages=6)
    assert thick.strides[1:3] == [[1, 2, 2], [1, 2, 2]] and thick.strides[3] == [2, 2, 2]
    assert thick.kernel_sizes[:2] == [[1, 3, 3], [1, 3, 3]] and thick.kernel_sizes[2] == [3, 3, 3]
    assert plan_topology([1.0, 1.0, 1.0], [8, 8, 8], max_stages=6).strides == [[1, 1, 1], [2, 2, 2]]
    assert len(plan_topology([1.0, 1.0, 1.0], [256, 256, 256], max_stages=4).strides) == 4


def test_step_cost_rates_in_plane_kernels_and_patch_size():
    config = architecture_kwargs("ResEncXS-cpu")
    assert step_cost(config, [32, 48, 48]) > step_cost(config, [32, 48, 32])
    in_plane = dict(config, kernel_sizes=[[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]])
    assert step_cost(in_plane, [32, 48, 32]) < step_cost(config, [32, 48, 32])
