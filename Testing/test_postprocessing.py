"""Largest-component post-processing: chosen from the training labels and the validation cases, stored in
model.json, applied by every prediction, refused when model.json names a label the model does not have."""

import json
import os

import numpy as np
import pytest
import torch

from sslseg.errors import UserError
from sslseg.finetuning import finetune
from sslseg.imageio import read_image
from sslseg.inference import segment_array
from sslseg.model_folder import load_model
from sslseg.postprocessing import (choose_largest_component, keep_largest_components, largest_component,
                                   single_piece_classes)

NAMES = {1: "Anterior", 2: "Posterior"}
LABELS = [{"name": "Anterior", "value": 1}, {"name": "Posterior", "value": 2}]


def two_blobs():
    """Class 1: a 4x4x4 cube and a separate single voxel; class 2: one 3x3x3 cube."""
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[10, 10, 10] = 1
    labels[6:9, 1:4, 6:9] = 2
    return labels


def components(mask) -> int:
    import SimpleITK as sitk

    return int(sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                              True)).max())


def test_only_the_largest_piece_of_the_chosen_classes_is_kept():
    labels = two_blobs()
    before = labels.copy()
    kept = keep_largest_components(labels, [1])
    assert np.array_equal(labels, before)  # the input is not modified
    assert kept[10, 10, 10] == 0 and (kept == 1).sum() == 64
    assert np.array_equal(kept == 2, labels == 2)  # a class not chosen is untouched
    assert np.array_equal(keep_largest_components(labels, []), labels)
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_a_class_in_two_pieces_is_not_eligible_and_diagonal_neighbours_are_one_piece():
    one_piece = np.zeros((6, 6, 6), np.uint8)
    one_piece[1, 1, 1] = one_piece[2, 2, 2] = 1  # touching at a corner (thick slices)
    one_piece[4, 4, 4] = 2
    assert single_piece_classes([one_piece, two_blobs()[:6, :6, :6]], 3) == [1, 2]
    # in two_blobs the stray voxel is 1 of 65 (the largest piece holds 98 %): still one piece
    split = np.zeros((10, 10, 10), np.uint8)
    split[0:3, 0:3, 0:3] = 1
    split[6:9, 6:9, 6:9] = 1  # two equal pieces
    assert single_piece_classes([one_piece, split], 3) == [2]
    assert single_piece_classes([np.zeros((4, 4, 4), np.uint8)], 2) == []  # never present: nothing to decide


def test_the_validation_decides_per_class():
    chosen, reasons = choose_largest_component(LABELS, [1, 2], [0.8, 0.7], [0.85, 0.69])
    assert chosen == [1] and "0.800 -> 0.850" in reasons[0] and "lowers" in reasons[1]
    chosen, reasons = choose_largest_component(LABELS, [2], None, None)
    assert chosen == [2] and "more than one piece" in reasons[0] and "no validation" in reasons[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hippocampus_dir):
    images = sorted(os.listdir(os.path.join(hippocampus_dir, "imagesTr")))[:6]
    out = finetune("none", images=[os.path.join(hippocampus_dir, "imagesTr", n) for n in images],
                   labels=[os.path.join(hippocampus_dir, "labelsTr", n) for n in images], label_names=NAMES,
                   out=tmp_path_factory.mktemp("post") / "model", preset="test", device="cpu", steps=20,
                   val_cases=2, progress="none")
    return out, os.path.join(hippocampus_dir, "imagesTr", sorted(os.listdir(
        os.path.join(hippocampus_dir, "imagesTr")))[10])


def test_training_records_the_choice_and_prediction_applies_it(trained):
    out, image_path = trained
    meta = json.load(open(os.path.join(out, "model.json"), encoding="utf-8"))
    post = meta["postprocessing"]
    assert set(post["largest_component"]) <= {1, 2} and len(post["reasons"]) == 2
    model = load_model(out)
    image, geometry = read_image(image_path)
    model.meta["postprocessing"] = {"largest_component": []}
    raw = segment_array(model, image[None].astype(np.float32), geometry, torch.device("cpu"), tta=False)
    model.meta["postprocessing"] = {"largest_component": [1, 2]}
    processed = segment_array(model, image[None].astype(np.float32), geometry, torch.device("cpu"), tta=False)
    assert np.array_equal(processed, keep_largest_components(raw, [1, 2]))
    assert all(components(processed == v) <= 1 for v in (1, 2))


def test_a_model_json_naming_an_unknown_label_is_refused_in_one_line(trained, tmp_path):
    out, _ = trained
    spoiled = tmp_path / "spoiled"
    spoiled.mkdir()
    meta = json.load(open(os.path.join(out, "model.json"), encoding="utf-8"))
    meta["postprocessing"] = {"largest_component": [7]}
    (spoiled / "model.json").write_text(json.dumps(meta), encoding="utf-8")
    (spoiled / "model.pt").write_bytes(open(os.path.join(out, "model.pt"), "rb").read())
    with pytest.raises(UserError, match=r"postprocessing.largest_component.*\[1, 2\]") as error:
        load_model(spoiled)
    assert "\n" not in str(error.value)
