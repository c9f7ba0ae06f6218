import json
import os

import numpy as np
import pytest

from sslseg.datasets import dataset_from_lists, load_dataset
from sslseg.errors import UserError
from sslseg.imageio import Geometry, read_image, resample_to_grid, write_image


def test_hippocampus_dataset_reads_labels_and_cases(hippocampus_dir):
    dataset = load_dataset(hippocampus_dir)
    assert len(dataset.cases) == 100
    assert dataset.label_names == {1: "Anterior", 2: "Posterior"}
    assert dataset.num_classes == 3
    assert dataset.channel_names == ["MRI"]
    assert all(os.path.isfile(case.images[0]) and os.path.isfile(case.label) for case in dataset.cases)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_keeps_geometry_exactly(tmp_path, suffix):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 9, 11)).astype(np.float32)
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    geometry = Geometry(array.shape, (0.7, 0.8, 2.5), (10.5, -3.25, 7.0), tuple(rotation.ravel()))
    path = write_image(array, geometry, tmp_path / f"image{suffix}")
    back, back_geometry = read_image(path)
    assert np.array_equal(back, array)
    assert back_geometry.shape == geometry.shape
    assert np.allclose(back_geometry.spacing, geometry.spacing, atol=1e-6)
    assert np.allclose(back_geometry.origin, geometry.origin, atol=1e-5)
    assert np.allclose(back_geometry.direction, geometry.direction, atol=1e-6)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".partial")]


def test_truncated_nifti_gives_clear_error(tmp_path, hippocampus_dir):
    source = os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")
    data = open(source, "rb").read()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="broken.nii.gz"):
        read_image(broken)


def test_nnunet_v2_layout_with_channels(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    geometry = Geometry((4, 5, 6))
    for case in ("a", "b"):
        for channel in range(2):
            write_image(np.zeros((4, 5, 6), np.float32), geometry, tmp_path / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        write_image(np.zeros((4, 5, 6), np.uint8), geometry, tmp_path / "labelsTr" / f"{case}.nii.gz")
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(tmp_path)
    assert [case.case_id for case in dataset.cases] == ["a", "b"]
    assert [os.path.basename(p) for p in dataset.cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert dataset.label_names == {1: "tumour"}
    assert dataset.channel_names == ["T1", "T2"]


def test_missing_files_are_reported(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    write_image(np.zeros((2, 2, 2), np.uint8), Geometry((2, 2, 2)), tmp_path / "labelsTr" / "x.nii.gz")
    with pytest.raises(UserError, match="x_0000.nii.gz"):
        load_dataset(tmp_path)
    with pytest.raises(UserError, match="not a dataset folder"):
        load_dataset(tmp_path / "imagesTr")


def test_explicit_lists_need_matching_lengths():
    with pytest.raises(UserError):
        dataset_from_lists(["a.nii.gz", "b.nii.gz"], ["a_seg.nii.gz"])
    dataset = dataset_from_lists(["x/case1_0000.nii.gz"], ["y/case1.nii.gz"], {1: "organ"})
    assert dataset.cases[0].case_id == "case1"


def test_resample_label_to_other_grid_is_nearest_neighbour():
    source = Geometry((4, 4, 4), (2.0, 2.0, 2.0))
    target = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (-0.5, -0.5, -0.5))
    label = np.zeros((4, 4, 4), np.uint8)
    label[1:3, 1:3, 1:3] = 2
    out = resample_to_grid(label, source, target, is_label=True)
    assert out.shape == (8, 8, 8)
    assert set(np.unique(out)) == {0, 2}
