"""The human-in-the-loop cycle of the SSLSegmentation module on real slicer-core nodes and real hippocampus scans,
through the REAL background process (python -m sslseg) on the CPU with the tiny ``test`` preset:

- terminology: the training segments' terminology entries travel through model.json to every predicted segment;
- write into an existing segmentation: only the model's segments change, the user's others stay voxel for voxel;
- Segment Editor hand-off: the result and its volume are selected on the editor's parameter node, with a 3D surface;
- uncertainty: the map is a scalar volume on the input's exact geometry (transform included), 0..1, with a summary;
- which case next: ranking puts a deliberately corrupted (noise) volume first; the chosen case loads ready to edit.

One small model is trained once for the file (about a minute on 2 cores); each test then segments tiny volumes.
"""

import os
import time

import numpy as np
import pytest

from sslseg.errors import UserError

TRAIN_CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_011", "hippocampus_014"]
TEST_CASES = ["hippocampus_039", "hippocampus_040"]
LABELS = [{"value": 1, "name": "Anterior", "color": [0.9, 0.2, 0.1]},
          {"value": 2, "name": "Posterior", "color": [0.1, 0.4, 0.9]}]
# Slicer terminology entries (context~category~type~type modifier~anatomic context~region~region modifier)
_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
TERMINOLOGY = {
    "Anterior": f"{_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^5366009^Hippocampus~SCT^255549009^Anterior"
                "~Anatomic codes - DICOM master list~^^~^^",
    "Posterior": f"{_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^5366009^Hippocampus~SCT^255551008^Posterior"
                 "~Anatomic codes - DICOM master list~^^~^^",
}
STEPS = 40
PATCH = [32, 48, 32]


def _image(hippocampus_dir, case):
    return os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz")


def _loadPair(hippocampus_dir, case, terminology=None):
    """A real scan and its reference segmentation as scene nodes; ``terminology`` {name: entry} is set on them."""
    import slicer

    from sslseg.imageio import read_image
    from SSLCommonLib import nodeBridge

    volume = slicer.util.loadVolume(_image(hippocampus_dir, case))
    labelArray, _ = read_image(os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"))
    labels = [dict(entry, terminology=(terminology or {}).get(entry["name"])) for entry in LABELS]
    segmentation = nodeBridge.labelArrayToSegmentationNode(labelArray.astype(np.uint8), labels, volume,
                                                           f"{case} reference")
    return volume, segmentation


def _terminologies(segmentationNode):
    from SSLCommonLib import nodeBridge

    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): nodeBridge.segmentTerminology(segmentation.GetNthSegment(i))
            for i in range(segmentation.GetNumberOfSegments())}


def _mask(segmentationNode, name, volume):
    """The named segment rasterised on the volume's grid (the scene is left as it was)."""
    from SSLCommonLib import nodeBridge

    labelArray, _ = nodeBridge.segmentationToLabelArray(segmentationNode, volume, [name])
    return labelArray


@pytest.fixture(scope="module")
def trained(slicer_harness, hippocampus_dir, tmp_path_factory):
    """``(logic, model path)``: a model fine-tuned from the scene on segmentations whose segments carry terminology."""
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    slicer_harness.clearScene()
    logic = SSLSegmentationLogic(modelsFolder=str(tmp_path_factory.mktemp("models")))
    pairs = [_loadPair(hippocampus_dir, case, TERMINOLOGY) for case in TRAIN_CASES]
    model = logic.finetune(None, pairs, preset="test", device="cpu", steps=STEPS, patchSize=PATCH,
                           validationShare=0.0, waitForCompletion=True)
    slicer_harness.clearScene()
    yield logic, model
    folder = logic.rankingFolder
    logic.clearRanking()
    assert folder is None or not os.path.exists(folder)


@pytest.fixture
def logic(trained):
    logic, _ = trained
    logic.trainingPairs = []
    return logic


@pytest.fixture
def model(trained):
    return trained[1]


def test_panel_preset_note_follows_the_device():
    """What the panel shows under the preset: "auto" (None) takes the device's preset and says so; a GPU preset
    chosen for the CPU is kept, with a warning."""
    import torch

    from SSLSegmentationLib.segmentationLogic import presetNote

    assert presetNote(None, "cpu") == ("cpu", "Preset 'cpu' chosen for the CPU (device cpu).")
    assert presetNote(None, "cuda:0") == ("quick", "Preset 'quick' chosen for the GPU (device cuda:0).")
    assert presetNote(None, "auto")[0] == ("quick" if torch.cuda.is_available() else "cpu")
    preset, note = presetNote("quick", "cpu")
    assert preset == "quick" and "on the CPU it takes hours" in note
    assert presetNote("cpu", "cuda") == ("cpu", "Preset 'cpu' (chosen by you).")
    with pytest.raises(UserError, match="unknown preset 'fast'"):
        presetNote("fast", "cpu")


def test_exported_labels_carry_only_chosen_terminology(slicer_scene, hippocampus_dir, tmp_path):
    """--label-info gets a segment's terminology when one was chosen (from the first pair that has one); Slicer's
    placeholder for new segments is not a choice and is not carried."""
    from SSLSegmentationLib.trainingData import exportDataset

    plain = _loadPair(hippocampus_dir, TRAIN_CASES[0])
    tagged = _loadPair(hippocampus_dir, TRAIN_CASES[1], {"Posterior": TERMINOLOGY["Posterior"]})
    assert _terminologies(plain[1]) == {"Anterior": None, "Posterior": None}
    labels = exportDataset([plain, tagged], ["Anterior", "Posterior"], str(tmp_path / "dataset"), "MR")
    assert [(entry["name"], entry.get("terminology")) for entry in labels] == [
        ("Anterior", None), ("Posterior", TERMINOLOGY["Posterior"])]


def test_terminology_survives_training_model_and_prediction(slicer_scene, hippocampus_dir, logic, model):
    import json

    with open(os.path.join(model, "model.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    assert {entry["name"]: entry.get("terminology") for entry in meta["labels"]} == TERMINOLOGY
    assert {entry["name"]: entry.get("terminology") for entry in logic.modelLabels(model)} == TERMINOLOGY

    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    result = logic.segment(model, volume, device="cpu", waitForCompletion=True)
    assert _terminologies(result) == TERMINOLOGY
    # the .seg.nrrd Slicer writes keeps them (the segment tags are saved with the node)
    path = os.path.join(slicer.app.temporaryPath, "prediction.seg.nrrd")
    assert slicer.util.saveNode(result, path)
    try:
        assert _terminologies(slicer.util.loadSegmentation(path)) == TERMINOLOGY
    finally:
        os.remove(path)


def _userSegmentation(volume):
    """A segmentation the user made on ``volume``: "Anterior" (to be replaced), "Lesion" overlapping it (in the
    same labelmap layer), "Notes" elsewhere, each with its own colour; Lesion with a terminology."""
    from SSLCommonLib import nodeBridge

    shape = tuple(reversed(volume.GetImageData().GetDimensions()))
    labels = np.zeros(shape, np.uint8)
    z, y, x = (s // 2 for s in shape)
    labels[z - 4:z + 4, y - 6:y + 6, x - 4:x + 4] = 1
    labels[z - 2:z + 6, y - 2:y + 10, x - 2:x + 6] = 2
    labels[:3, :3, :3] = 3
    entries = [{"value": 1, "name": "Anterior", "color": [1, 1, 0]},
               {"value": 2, "name": "Lesion", "color": [0, 1, 0], "terminology": TERMINOLOGY["Posterior"]},
               {"value": 3, "name": "Notes", "color": [0, 0, 1]}]
    return nodeBridge.labelArrayToSegmentationNode(labels, entries, volume, "my segmentation")


def _segmentState(segmentationNode, volume, name):
    segmentation = segmentationNode.GetSegmentation()
    segmentID = segmentation.GetSegmentIdBySegmentName(name)
    segment = segmentation.GetSegment(segmentID)
    return segmentID, segment.GetColor(), _terminologies(segmentationNode)[name], _mask(segmentationNode, name,
                                                                                        volume).tobytes()


def test_write_into_existing_segmentation_keeps_the_users_other_segments(slicer_scene, hippocampus_dir, logic,
                                                                         model):
    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    fresh = logic.segment(model, volume, device="cpu", waitForCompletion=True)  # what the model predicts
    user = _userSegmentation(volume)
    kept = {name: _segmentState(user, volume, name) for name in ("Lesion", "Notes")}
    anteriorID = user.GetSegmentation().GetSegmentIdBySegmentName("Anterior")
    nodesBefore = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}

    result = logic.segment(model, volume, device="cpu", writeInto=user, waitForCompletion=True)
    assert result is user
    for name, state in kept.items():  # byte-identical labelmaps, same ID, colour and terminology
        assert _segmentState(user, volume, name) == state, name
    segmentation = user.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Anterior", "Lesion", "Notes", "Posterior"]
    assert segmentation.GetSegmentIdBySegmentName("Anterior") == anteriorID  # replaced in place
    for name in ("Anterior", "Posterior"):  # the model's segments hold exactly the prediction
        assert np.array_equal(_mask(user, name, volume), _mask(fresh, name, volume)), name
    assert _mask(fresh, "Anterior", volume).any()
    assert _terminologies(user)["Posterior"] == TERMINOLOGY["Posterior"]  # added with the model's terminology
    nodesAfter = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}
    assert nodesAfter == nodesBefore, "writing into a segmentation added or removed nodes"


def test_written_segments_may_cover_the_users_others(slicer_scene):
    """Where the model's new voxels cover voxels of the user's other segments (which share one labelmap layer with
    the replaced one), those segments still keep every voxel; the written ones hold exactly the new labels."""
    import slicer

    from SSLCommonLib import nodeBridge

    volume = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), np.float32), name="grid")
    user = np.zeros((20, 30, 40), np.uint8)
    user[5:10, 5:10, 5:10], user[8:15, 8:20, 8:20], user[:3, :3, :3] = 1, 2, 3
    node = nodeBridge.labelArrayToSegmentationNode(user, [{"value": 1, "name": "Anterior"}, {"value": 2, "name":
                                                          "Lesion"}, {"value": 3, "name": "Notes"}], volume, "mine")
    assert node.GetSegmentation().GetNumberOfLayers() == 1  # one shared layer
    before = {name: _mask(node, name, volume) for name in ("Lesion", "Notes")}
    prediction = np.zeros_like(user)
    prediction[9:14, 9:14, 9:14], prediction[:2, :2, :2] = 1, 2  # over Lesion's and Notes' voxels
    nodeBridge.writeLabelArrayInto(node, prediction, LABELS, volume)
    for name, mask in before.items():
        assert np.array_equal(_mask(node, name, volume), mask), name
    for entry in LABELS:
        assert np.array_equal(_mask(node, entry["name"], volume) > 0, prediction == entry["value"]), entry["name"]


def _linearTransform(scene, matrix, name):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def _worldCentroid(segmentationNode, segmentID):
    """The world position (RAS mm) of a segment's voxels, read from its own labelmap and the segmentation's parent
    transform (independent of the export that segmentationToLabelArray uses)."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentID, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    dims, extent = image.GetDimensions(), image.GetExtent()
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    k, j, i = np.argwhere(voxels > 0).mean(axis=0)
    local = slicer.util.arrayFromVTKMatrix(matrix) @ [i + extent[0], j + extent[2], k + extent[4], 1.0]
    toWorld = vtk.vtkMatrix4x4()
    segmentationNode.GetParentTransformNode().GetMatrixTransformToWorld(toWorld)
    return (slicer.util.arrayFromVTKMatrix(toWorld) @ local)[:3]


def test_write_into_a_segmentation_under_another_transform(slicer_scene):
    """Slicer's labelmap import misplaces the voxels (by the difference of the two transforms) when the segmentation
    and the labelmap have different parent transforms: written segments land where the volume's voxels are in the
    world, whatever transforms the volume and the segmentation are under."""
    import slicer

    from SSLCommonLib import nodeBridge

    ijkToRAS = np.diag([1.5, 1.0, 2.0, 1.0])
    volume = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), np.float32), ijkToRAS=ijkToRAS, name="grid")
    shift, other, turn = np.eye(4), np.eye(4), np.eye(4)
    shift[:3, 3], other[:3, 3] = [10.0, -20.0, 5.0], [-4.0, 7.0, 11.0]
    turn[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    turn[:3, 3] = [3.0, 4.0, -7.0]
    volume.SetAndObserveTransformNodeID(_linearTransform(slicer_scene, shift, "volume moved").GetID())
    prediction = np.zeros((20, 30, 40), np.uint8)
    prediction[5:9, 10:16, 20:30] = 1
    expected = (shift @ ijkToRAS @ [24.5, 12.5, 6.5, 1.0])[:3]  # the box's centre (i, j, k) in the world
    for matrix in (other, turn):  # translated only; rotated too
        node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
        node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(_linearTransform(slicer_scene, matrix, "segmentation moved").GetID())
        (segmentID,) = nodeBridge.writeLabelArrayInto(node, prediction, LABELS[:1], volume)
        assert np.allclose(_worldCentroid(node, segmentID), expected, atol=1e-6)
        if matrix is other:  # no rotation between the two: no resampling, the voxels come back exactly
            back, _ = nodeBridge.segmentationToLabelArray(node, volume, ["Anterior"])
            assert np.array_equal(back, prediction)

    # a warped segmentation is refused before it changes
    warped = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "warped")
    grid = slicer_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    warped.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(UserError, match="non-linear transform"):
        nodeBridge.writeLabelArrayInto(warped, prediction, LABELS[:1], volume)
    assert warped.GetSegmentation().GetNumberOfSegments() == 0


def test_write_into_refuses_a_closed_surface_segmentation(slicer_scene, hippocampus_dir):
    import slicer

    from SSLCommonLib import nodeBridge

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    user = _userSegmentation(volume)
    user.CreateClosedSurfaceRepresentation()
    user.GetSegmentation().SetSourceRepresentationName(
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    before = _segmentState(user, volume, "Anterior")
    labels = np.zeros(tuple(reversed(volume.GetImageData().GetDimensions())), np.uint8)
    with pytest.raises(UserError, match="not as a binary labelmap"):
        nodeBridge.writeLabelArrayInto(user, labels, LABELS, volume)
    assert _segmentState(user, volume, "Anterior") == before


def test_result_is_handed_to_the_segment_editor(slicer_scene, hippocampus_dir, logic, model):
    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    result = logic.segment(model, volume, device="cpu", waitForCompletion=True)
    editor = logic.editInSegmentEditor(result, volume)
    assert editor is slicer_scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode() is result and editor.GetSourceVolumeNode() is volume
    assert editor.GetSelectedSegmentID() == result.GetSegmentation().GetNthSegmentID(0)
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert result.GetSegmentation().ContainsRepresentation(surface)
    other = _userSegmentation(volume)
    assert logic.editInSegmentEditor(other, volume) is editor and editor.GetSegmentationNode() is other


def test_uncertainty_volume_lies_on_the_input_geometry(slicer_scene, hippocampus_dir, logic, model):
    """The input sits under a linear transform: the map must share its voxel grid and its transform."""
    import slicer
    import vtk

    from SSLSegmentationLib import resultNodes

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[1]))
    transform = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 12.5)
    matrix.SetElement(1, 1, 0.0), matrix.SetElement(1, 2, -1.0), matrix.SetElement(2, 1, 1.0)
    matrix.SetElement(2, 2, 0.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    logs = []
    result = logic.segment(model, volume, device="cpu", uncertainty=True, waitForCompletion=True, onLog=logs.append)
    uncertainty, summary = resultNodes.uncertaintyOf(result)
    assert uncertainty is not None and uncertainty.IsA("vtkMRMLScalarVolumeNode")
    expected, actual = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(expected), uncertainty.GetIJKToRASMatrix(actual)
    assert np.allclose(slicer.util.arrayFromVTKMatrix(actual), slicer.util.arrayFromVTKMatrix(expected))
    assert uncertainty.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    assert uncertainty.GetTransformNodeID() == transform.GetID()
    values = slicer.util.arrayFromVolume(uncertainty)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0.0
    display = uncertainty.GetDisplayNode()
    assert display.GetColorNodeID() in resultNodes.UNCERTAINTY_COLORS
    assert not display.GetAutoWindowLevel() and (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0, 1)
    assert set(summary["per_segment"]) == {"Anterior", "Posterior"} and 0.0 <= summary["score"] <= 1.0
    assert any(line.startswith(f"{volume.GetName()}: uncertainty ") and "Anterior" in line for line in logs)


def _noiseVolume(hippocampus_dir, case):
    """Noise with a real scan's intensity statistics on its grid: the deliberately corrupted candidate."""
    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, case), properties={"name": "corrupted"})
    image = slicer.util.arrayFromVolume(volume).astype(np.float32)
    noise = np.random.default_rng(0).normal(image.mean(), image.std(), image.shape).astype(np.float32)
    slicer.util.updateVolumeFromArray(volume, noise)
    return volume


def test_ranking_puts_the_noise_volume_first_and_loads_it_for_correction(slicer_scene, hippocampus_dir, logic,
                                                                         model):
    import slicer

    from SSLSegmentationLib import resultNodes

    real = [slicer.util.loadVolume(_image(hippocampus_dir, case)) for case in TEST_CASES]
    noise = _noiseVolume(hippocampus_dir, TEST_CASES[0])
    before = [slicer.util.arrayFromVolume(node).copy() for node in real + [noise]]
    logs = []
    ranking = logic.rankCandidates(model, volumeNodes=[real[0], noise, real[1]], device="cpu",
                                   waitForCompletion=True, onLog=logs.append)
    assert [c["volumeNode"] for c in ranking][0] is noise
    assert {c["volumeNode"].GetID() for c in ranking} == {node.GetID() for node in real + [noise]}
    scores = [c["score"] for c in ranking]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    assert any(line.startswith("Most uncertain: corrupted") for line in logs)
    for node, array in zip(real + [noise], before):  # candidates are only read
        assert np.array_equal(slicer.util.arrayFromVolume(node), array)
    assert os.path.dirname(ranking[0]["segmentation"]) == logic.rankingFolder

    volume, segmentation = logic.loadCandidate(ranking[0])
    assert volume is noise
    editor = slicer_scene.GetSingletonNode("SegmentEditor", "vtkMRMLSegmentEditorNode")
    assert editor.GetSegmentationNode() is segmentation and editor.GetSourceVolumeNode() is noise
    assert _terminologies(segmentation) == TERMINOLOGY
    uncertainty, summary = resultNodes.uncertaintyOf(segmentation)
    assert uncertainty.GetImageData().GetDimensions() == noise.GetImageData().GetDimensions()
    assert summary["score"] == ranking[0]["score"]
    assert logic.addCorrectedCase(volume, segmentation) == [(volume, segmentation)]


def test_ranking_a_folder_loads_the_chosen_file(slicer_scene, hippocampus_dir, logic, model, tmp_path):
    """Candidates from a folder: the first is the noise file; loading it reads the volume from the file. A second
    ranking replaces the first one's folder; a refused ranking leaves nothing behind."""
    import shutil

    import slicer

    from sslseg.imageio import read_image, write_image

    folder = tmp_path / "candidates"
    folder.mkdir()
    for case in TEST_CASES:
        shutil.copyfile(_image(hippocampus_dir, case), folder / f"{case}.nii.gz")
    image, geometry = read_image(_image(hippocampus_dir, TEST_CASES[1]), np.float32)
    noise = np.random.default_rng(1).normal(image.mean(), image.std(), image.shape).astype(np.float32)
    write_image(noise, geometry, str(folder / "noise.nii.gz"))
    first = logic.rankCandidates(model, folder=str(folder), device="cpu", waitForCompletion=True)
    firstFolder = logic.rankingFolder
    ranking = logic.rankCandidates(model, folder=str(folder), device="cpu", waitForCompletion=True)
    assert [c["name"] for c in ranking] == [c["name"] for c in first] and ranking[0]["name"] == "noise"
    assert ranking[0]["volumeNode"] is None and not os.path.exists(firstFolder)
    volume, segmentation = logic.loadCandidate(ranking[0])
    assert volume.GetScene() is slicer_scene and volume.GetName() == "noise"
    assert np.allclose(slicer.util.arrayFromVolume(volume), noise)

    with pytest.raises(UserError, match="either as scene volumes"):
        logic.rankCandidates(model, volumeNodes=[volume], folder=str(folder))
    with pytest.raises(UserError, match="not a scalar volume"):
        logic.rankCandidates(model, volumeNodes=[segmentation])
    assert logic.rankingFolder == os.path.dirname(ranking[0]["segmentation"])


def _addedNodes(harness):
    """Nodes added since the harness started, but singletons (the Segment Editor's parameter node of an earlier
    test stays through a scene close, as in Slicer)."""
    return [node for node in harness.userNodes() if not node.GetSingletonTag()]


def _engineExited(job, seconds=180):
    """Wait until the engine's process has exited, without reading its result (the panel's timer has not run)."""
    deadline = time.monotonic() + seconds
    while job.runner.process.poll() is None:
        assert time.monotonic() < deadline, "the segmentation did not finish"
        time.sleep(0.05)


def test_a_result_that_arrives_as_the_scene_closes_is_not_added(slicer_harness, slicer_scene, hippocampus_dir,
                                                                  logic, model):
    """The engine has finished but its result is not read yet when the scene closes: nothing of it is added to the
    new scene (no half-made segmentation or uncertainty volume), and its files go."""
    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    job = logic.segment(model, volume, device="cpu", uncertainty=True)
    _engineExited(job)
    slicer_harness.clearScene()
    assert job.status == "cancelled" and job.endReason == "the scene was closed" and job.result is None
    assert _addedNodes(slicer_harness) == []
    assert not os.path.exists(job.workFolder)


def test_leaving_the_module_leaves_the_users_segmentation_as_it_was(slicer_scene, hippocampus_dir, logic, model):
    """Leaving the module (the panel calls endRun) while a segmentation into the user's own node is finishing: the
    node keeps every segment and voxel, and no node is added or removed."""
    import slicer

    volume = slicer.util.loadVolume(_image(hippocampus_dir, TEST_CASES[0]))
    user = _userSegmentation(volume)
    names = ("Anterior", "Lesion", "Notes")
    before = {name: _segmentState(user, volume, name) for name in names}
    nodesBefore = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}
    job = logic.segment(model, volume, device="cpu", writeInto=user)
    _engineExited(job)
    logic.endRun("the module was left")
    assert job.status == "cancelled" and job.endReason == "the module was left"
    assert {name: _segmentState(user, volume, name) for name in names} == before
    assert user.GetSegmentation().GetSegmentIdBySegmentName("Posterior") == ""
    assert {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())} == nodesBefore
