"""``sslseg finetune --unlabelled``: a real short run on hippocampus cases (4 labelled, 6 unlabelled images; the test
preset, a few steps) that writes a model and records what it did, the labelled-only fallback with too few images,
and every bad unlabelled input refused in one line before any work (nothing written, inputs untouched).
"""

import json
import os
import shutil

import numpy as np
import SimpleITK as sitk

import sslseg
from bad_inputs import Untouched, assert_refused, assert_user_error, run_cli
from conftest import copy_dataset_subset
from sslseg.finetuning import unlabelled as flow

LABELLED = 4


def make_folders(tmp_path, hippocampus_dir, unlabelled: int):
    """A labelled folder of the first cases and a folder of copies of the next ``unlabelled`` images."""
    entries = copy_dataset_subset(hippocampus_dir, tmp_path / "data", LABELLED)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for entry in entries[LABELLED:LABELLED + unlabelled]:
        shutil.copyfile(os.path.join(hippocampus_dir, entry["image"]), folder / os.path.basename(entry["image"]))
    return tmp_path / "data", folder


def finetune(data, unlabelled, out, **options):
    return sslseg.finetune("none", data=str(data), unlabelled=str(unlabelled), out=str(out), preset="test",
                           steps=6, device="cpu", progress="none", **options)


def test_short_run_uses_the_unlabelled_images(tmp_path, hippocampus_dir):
    data, folder = make_folders(tmp_path, hippocampus_dir, 6)
    with Untouched(data, folder):
        model = finetune(data, folder, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    record = meta["unlabelled"]
    assert record["images"] == 6 and record["method"] == flow.METHOD
    assert 1 <= record["used"] <= 6 and len(record["used_cases"]) == record["used"]
    assert set(record["seconds"]) == {"round1", "pseudo_labels", "round2", "total"}
    assert record["seconds"]["total"] >= record["seconds"]["round1"] + record["seconds"]["round2"]
    # round 2 trained on the labelled cases and the kept pseudo-labelled ones, its steps the rest of the budget
    assert set(record["used_cases"]) < set(meta["training"]["train_cases"])
    assert len(meta["training"]["train_cases"]) == LABELLED + record["used"]
    assert record["round1"]["steps"] + meta["recipe"]["steps_run"] == 6
    assert meta["training"]["data"] == str(data) and "initial_model" not in meta
    assert meta["channel_names"] == ["MRI"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".sslseg-unlabelled-")], "work folder left"
    written = sslseg.predict(model, str(folder / sorted(os.listdir(folder))[0]), str(tmp_path / "pred"),
                             device="cpu")
    assert len(written) == 1


def test_too_few_unlabelled_images_train_the_labelled_cases(tmp_path, hippocampus_dir):
    data, folder = make_folders(tmp_path, hippocampus_dir, flow.MIN_UNLABELLED - 1)
    finetune(data, folder, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["unlabelled"]["used"] == 0 and meta["unlabelled"]["method"] is None
    assert "fewer than" in meta["unlabelled"]["reason"]
    assert len(meta["training"]["train_cases"]) == LABELLED


def spoil(path, value):
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = value
    spoilt = sitk.GetImageFromArray(array)
    spoilt.CopyInformation(image)
    sitk.WriteImage(spoilt, str(path), True)


def two_channels(path):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    vector = sitk.GetImageFromArray(np.stack([array, array], axis=-1), isVector=True)
    vector.CopyInformation(image)
    sitk.WriteImage(vector, str(path), True)


def test_bad_unlabelled_images_are_refused_before_any_work(tmp_path, hippocampus_dir):
    data, folder = make_folders(tmp_path, hippocampus_dir, 3)
    first = folder / sorted(os.listdir(folder))[0]
    out = tmp_path / "model"

    def refused(source, *words):
        with Untouched(data, folder):
            assert_user_error(lambda: finetune(data, source, out), "--unlabelled", *words)
        assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".sslseg")]

    refused(tmp_path / "missing", "not found")
    with Untouched(data, folder):
        assert_user_error(lambda: finetune(data, folder, out, init_model=str(tmp_path / "any")), "--init-model")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    refused(empty, "names no images")
    again = tmp_path / "again.txt"
    again.write_text(f"{first}\n{data / 'imagesTr' / sorted(os.listdir(data / 'imagesTr'))[0]}\n")
    refused(again, "labelled case")
    same_name = tmp_path / "same"
    same_name.mkdir()
    shutil.copyfile(data / "imagesTr" / sorted(os.listdir(data / "imagesTr"))[0],
                    same_name / sorted(os.listdir(data / "imagesTr"))[0])
    refused(same_name, "name of a labelled case")
    for name, spoiler, words in (("nan", lambda p: spoil(p, np.nan), ("NaN",)),
                                 ("channels", two_channels, ("channel",)),
                                 ("garbage", lambda p: p.write_bytes(b"not an image at all"), ())):
        bad = tmp_path / name
        bad.mkdir()
        target = bad / first.name
        shutil.copyfile(first, target)
        spoiler(target)
        refused(bad, *words)


def test_command_line_refuses_in_one_line(tmp_path, hippocampus_dir):
    data, folder = make_folders(tmp_path, hippocampus_dir, 2)
    listed = tmp_path / "list.txt"
    listed.write_text(f"{folder / sorted(os.listdir(folder))[0]}\n{tmp_path / 'gone.nii.gz'}\n")
    result = run_cli("finetune", "--data", data, "--unlabelled", listed, "--out", tmp_path / "model", "--preset",
                     "test", "--steps", 2, "--device", "cpu")
    assert_refused(result, "--unlabelled", "gone.nii.gz")
    assert not (tmp_path / "model").exists()


def test_slicer_logic_passes_unlabelled_volumes(slicer_scene, hippocampus_dir, tmp_path):
    """The panel's console call: volume nodes from the scene become a list file in the job's work folder and the
    same flow runs in the background process; a training volume listed again is refused before any work."""
    import slicer

    from sslseg.errors import UserError
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic
    from test_module_segmentation_logic import LABELS, _loadPair

    logic = SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))
    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in ("hippocampus_006", "hippocampus_007")]
    volumes = [slicer.util.loadVolume(os.path.join(hippocampus_dir, "imagesTr", f"hippocampus_0{n}.nii.gz"))
               for n in (11, 14, 36, 39, 40)]
    try:
        logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=2,
                       unlabelledVolumes=volumes + [pairs[0][0]])
    except UserError as error:
        assert "training volume" in str(error)
    else:
        raise AssertionError("a training volume among the unlabelled ones was accepted")
    assert logic.modelStore.listModels() == []
    model = logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=6,
                           unlabelledVolumes=volumes, waitForCompletion=True)
    record = json.loads(open(os.path.join(model, "model.json"), encoding="utf-8").read())["unlabelled"]
    assert record["images"] == 5 and record["used"] >= 1 and "round2" in record["seconds"]
    assert [l["name"] for l in logic.modelLabels(model)] == [l["name"] for l in LABELS]
