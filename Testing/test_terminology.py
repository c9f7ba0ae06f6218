"""Segment terminology (Slicer's standard codes for what a segment is) from the training labels to every predicted
segment: ``--label-info`` entries -> fine-tuning -> model.json -> ``sslseg predict --seg-nrrd`` -> the .seg.nrrd's
segment tags -> a real Slicer segmentation node. Malformed entries are refused with one line before any work.

Real files throughout: hippocampus cases copied from ../shared/data, a model fine-tuned for two steps of the test
preset on the CPU, the CLI in subprocesses, SimpleITK reading the written headers, slicer-core loading the file."""

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import sslseg
from conftest import copy_dataset_subset
from bad_inputs import Untouched, assert_refused, assert_user_error, partial_files, run_cli
from sslseg.finetuning.options import check_label_info
from sslseg.imageio import Geometry
from sslseg.model_folder import check_terminology, read_model_meta
from sslseg.segfile import write_seg_nrrd

CASES = 4
CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMY = "Anatomic codes - DICOM master list"
# Hippocampal structure (SNOMED CT 5366009) with the modifiers anterior (255549009) and posterior (255551008)
ANTERIOR = (f"{CONTEXT}~SCT^123037004^Anatomical Structure~SCT^5366009^Hippocampus~SCT^255549009^Anterior~"
            f"{ANATOMY}~^^~^^")
POSTERIOR = (f"{CONTEXT}~SCT^123037004^Anatomical Structure~SCT^5366009^Hippocampus~SCT^255551008^Posterior~"
             f"{ANATOMY}~^^~^^")
LABEL_INFO = [{"value": 1, "name": "Anterior", "color": [0.8, 0.3, 0.2], "terminology": ANTERIOR},
              {"value": 2, "name": "Posterior", "color": [0.2, 0.5, 0.9], "terminology": POSTERIOR}]


@pytest.fixture(scope="module")
def data(tmp_path_factory, hippocampus_dir):
    """A copy of four hippocampus cases with their own dataset.json (the shared data stay untouched)."""
    root = tmp_path_factory.mktemp("inputs") / "hippocampus"
    copy_dataset_subset(hippocampus_dir, root, CASES)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, data):
    """A model fine-tuned (two steps, test preset, CPU) through the CLI with a --label-info file carrying
    terminology, as a user (or the Slicer module) would run it."""
    work = tmp_path_factory.mktemp("engine")
    info = work / "labels.json"
    info.write_text(json.dumps(LABEL_INFO))
    out = work / "hippocampus"
    result = run_cli("finetune", "--data", data, "--label-info", info, "--out", out, "--preset", "test",
                     "--steps", "2", "--val-cases", "0", "--device", "cpu", "--progress", "none")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _tags(path) -> dict:
    """{segment name: {tag: value}} from a .seg.nrrd's ``Segment{i}_Tags`` fields (Slicer's "key:value|" list)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    result, index = {}, 0
    while reader.HasMetaDataKey(f"Segment{index}_Name"):
        raw = reader.GetMetaData(f"Segment{index}_Tags")
        pairs = [item.split(":", 1) for item in raw.split("|") if item]
        result[reader.GetMetaData(f"Segment{index}_Name")] = dict(pairs)
        index += 1
    return result


# --- checking entries ------------------------------------------------------------------------------------------

def test_slicer_entries_are_accepted_as_they_are():
    assert check_terminology(ANTERIOR, "x") == ANTERIOR
    checked = check_label_info(LABEL_INFO)
    assert [entry["terminology"] for entry in checked] == [ANTERIOR, POSTERIOR]
    assert check_label_info([{"value": 1, "name": "A"}]) == [{"value": 1, "name": "A"}]  # optional


BAD_ENTRIES = {
    "not text": (5, ["terminology", "string"]),
    "two lines": (ANTERIOR.replace("~SCT^5366009", "\n~SCT^5366009"), ["terminology", "one line"]),
    "too long": (ANTERIOR + "x" * 3000, ["terminology", "one line"]),
    "tag separator": (ANTERIOR.replace("Anterior~", "Anterior|x~"), ["terminology", "|"]),
    "a name only": ("Hippocampus", ["terminology", "7", "fields"]),
    "no context": ("~" + ANTERIOR.split("~", 1)[1], ["terminology", "context"]),
    "type not coded": (ANTERIOR.replace("SCT^5366009^Hippocampus", "Hippocampus"), ["terminology", "type"]),
    "type without code": (ANTERIOR.replace("SCT^5366009^", "^^"), ["terminology", "type", "code value"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_malformed_entry_is_refused_in_one_line(case):
    entry, words = BAD_ENTRIES[case]
    assert_user_error(lambda: check_label_info([{"value": 1, "name": "A", "terminology": entry}]),
                      "--label-info", "entry 1", *words)


def test_malformed_entry_is_refused_before_training(tmp_path, data):
    info = tmp_path / "labels.json"
    info.write_text(json.dumps([{"value": 1, "name": "A", "terminology": "Hippocampus"}]))
    out = tmp_path / "model"
    with Untouched(data, info):
        result = run_cli("finetune", "--data", data, "--label-info", info, "--out", out, "--preset", "test",
                         "--steps", "2", "--device", "cpu", "--progress", "none")
    assert_refused(result, "--label-info", "terminology")
    assert not os.path.lexists(out) and not partial_files(tmp_path)


def test_model_json_with_a_garbled_entry_is_refused(tmp_path, model):
    garbled = tmp_path / "garbled"
    shutil.copytree(model, garbled)
    meta = json.loads((garbled / "model.json").read_text())
    meta["labels"][0]["terminology"] = ANTERIOR + "\n"
    (garbled / "model.json").write_text(json.dumps(meta))
    assert_user_error(lambda: read_model_meta(garbled), "labels", "terminology", "one line")


# --- writing and the whole path ----------------------------------------------------------------------------------

def test_seg_nrrd_tags_keep_status_and_add_terminology(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 1:3], labels[3, 4, 5] = 1, 2
    path = write_seg_nrrd(labels, Geometry(labels.shape), [LABEL_INFO[0], {"value": 2, "name": "Plain"}],
                          tmp_path / "x.seg.nrrd")
    tags = _tags(path)
    assert tags["Anterior"] == {"Segmentation.Status": "inprogress", "TerminologyEntry": ANTERIOR}
    assert tags["Plain"] == {"Segmentation.Status": "inprogress"}  # without terminology: as before
    bad = {"value": 1, "name": "A", "terminology": "a|b"}
    assert_user_error(lambda: write_seg_nrrd(labels, Geometry(labels.shape), [bad], tmp_path / "y.seg.nrrd"),
                      "terminology")
    assert not os.path.lexists(tmp_path / "y.seg.nrrd") and not partial_files(tmp_path)


def test_terminology_survives_training_and_prediction(tmp_path, data, model):
    labels = read_model_meta(model)["labels"]
    assert [(label["name"], label.get("terminology")) for label in labels] == \
        [("Anterior", ANTERIOR), ("Posterior", POSTERIOR)]
    scan = sorted((data / "imagesTr").iterdir())[0]
    out = tmp_path / "segmentations"
    result = run_cli("predict", "--model", model, "--input", scan, "--output", out, "--seg-nrrd", "--device", "cpu",
                     "--progress", "none")
    assert result.returncode == 0, result.stderr[-2000:]
    seg_file = out / scan.name.replace(".nii.gz", ".seg.nrrd")
    tags = _tags(seg_file)
    assert {name: tag.get("TerminologyEntry") for name, tag in tags.items()} == \
        {"Anterior": ANTERIOR, "Posterior": POSTERIOR}
    assert all(tag["Segmentation.Status"] == "inprogress" for tag in tags.values())


def test_model_without_terminology_predicts_as_before(tmp_path, data):
    model = sslseg.finetune("none", data=str(data), out=str(tmp_path / "plain"), preset="test", steps=2,
                            device="cpu", val_cases=0, progress="none")
    assert all("terminology" not in label for label in read_model_meta(model)["labels"])
    scan = sorted((data / "imagesTr").iterdir())[0]
    written = sslseg.predict(model, scan, tmp_path / "out", device="cpu", seg_nrrd=True, progress="none")
    tags = _tags(written[1])
    assert tags == {"Anterior": {"Segmentation.Status": "inprogress"},
                    "Posterior": {"Segmentation.Status": "inprogress"}}


def test_slicer_reads_the_terminology_of_predicted_segments(tmp_path, data, model, slicer_scene):
    import slicer
    import vtk

    scan = sorted((data / "imagesTr").iterdir())[0]
    written = sslseg.predict(str(model), scan, tmp_path, device="cpu", seg_nrrd=True, progress="none")
    node = slicer.util.loadSegmentation(written[1])
    segmentation = node.GetSegmentation()
    found = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.mutable("")
        assert segment.GetTag("TerminologyEntry", value)
        found[segment.GetName()] = str(value)
    assert found == {"Anterior": ANTERIOR, "Posterior": POSTERIOR}
    entry = slicer.vtkSlicerTerminologyEntry()  # Slicer's own parser accepts what the engine wrote
    assert slicer.modules.terminologies.logic().DeserializeTerminologyEntry(found["Anterior"], entry)
    assert entry.GetTypeObject().GetCodeValue() == "5366009"
    assert entry.GetTypeModifierObject().GetCodeMeaning() == "Anterior"


class _SettingsStore:
    """Slicer's settings as ``qt.QSettings`` offers them (``value``/``setValue``), in memory."""

    def __init__(self, values=None):
        self.values = dict(values or {})

    def value(self, key):
        return self.values.get(key)

    def setValue(self, key, value):
        self.values[key] = value


def test_a_default_terminology_is_not_a_choice(slicer_scene):
    """The Segment Editor gives every segment it adds the segmentation node's default terminology, else the user's
    (the Segmentations/DefaultTerminologyEntry setting): such a segment says nothing about what it holds, like the
    placeholder of new segments, and is exported without terminology. A chosen one is kept."""
    import slicer

    from SSLCommonLib import nodeBridge

    assert "Tissue" in nodeBridge._placeholderTerminology()
    # a user's default as the setting holds it (with a trailing "|")
    userDefault = f"{CONTEXT}~SCT^123037004^Anatomical Structure~SCT^28273000^Bile duct~^^~{ANATOMY}~^^~^^|"
    nodeDefault = ANTERIOR.replace("255549009^Anterior", "^^")  # hippocampus, no modifier
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    slicer.vtkSlicerTerminologiesModuleLogic.SetDefaultTerminologyEntryAsString(node, nodeDefault)
    segmentation = node.GetSegmentation()
    for name, entry in (("placeholder", None), ("user default", userDefault.split("|")[0]),
                        ("node default", nodeDefault), ("chosen", POSTERIOR)):
        segment = segmentation.GetSegment(segmentation.AddEmptySegment("", name))
        if entry:
            segment.SetTag("TerminologyEntry", entry)
    names = ["placeholder", "user default", "node default", "chosen"]
    store = _SettingsStore({"Segmentations/DefaultTerminologyEntry": userDefault})
    assert nodeBridge.segmentTerminologies(node, names, settings=store) == {
        "placeholder": None, "user default": None, "node default": None, "chosen": POSTERIOR}
    # without the user's setting, that entry is a choice like any other; the node's own default still is not
    assert nodeBridge.segmentTerminologies(node, names, settings=_SettingsStore()) == {
        "placeholder": None, "user default": userDefault.split("|")[0], "node default": None, "chosen": POSTERIOR}
