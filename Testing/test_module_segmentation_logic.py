"""SSLSegmentationLogic on real Slicer-core nodes, through the REAL background process (python -m sslseg) on CPU:
fine-tune on hippocampus cases from the scene, segment a held-out case into a new segmentation node, cancel a run.

Budget: the tiny ``test`` preset (ResEncT-test) and few steps; the whole file takes about a minute on 2 cores.
"""

import hashlib
import json
import os
import time

import numpy as np
import pytest

from process_tree import alive, descendants, survivors
from sslseg.errors import UserError

TRAIN_CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_011", "hippocampus_014", "hippocampus_036"]
TEST_CASE = "hippocampus_039"
LABELS = [{"value": 1, "name": "Anterior", "color": [0.9, 0.2, 0.1]},
          {"value": 2, "name": "Posterior", "color": [0.1, 0.4, 0.9]}]
STEPS = 60
PATCH = [32, 48, 32]  # about the whole hippocampus crop: learns far faster per step than the preset's tiny patch


def _loadPair(hippocampus_dir, case, labels=LABELS):
    import slicer

    from sslseg.imageio import read_image
    from SSLCommonLib import nodeBridge

    volume = slicer.util.loadVolume(os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz"))
    labelArray, _ = read_image(os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"))
    segmentation = nodeBridge.labelArrayToSegmentationNode(labelArray.astype(np.uint8), labels, volume,
                                                           f"{case} reference")
    return volume, segmentation, labelArray


def _sceneState(scene):
    """Node IDs, names and the content of every volume and segmentation (what 'the scene is unchanged' means)."""
    import slicer

    state = {}
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLSubjectHierarchyNode"):
            continue  # created lazily by the first subject-hierarchy query
        digest = hashlib.sha1()
        if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
            digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(node)).tobytes())
            matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
            node.GetIJKToRASMatrix(matrix)
            digest.update(slicer.util.arrayFromVTKMatrix(matrix).tobytes())
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                segmentID = segmentation.GetNthSegmentID(i)
                segment = segmentation.GetSegment(segmentID)
                digest.update(f"{segmentID}|{segment.GetName()}|{segment.GetColor()}".encode())
                # the internal labelmap: arrayFromSegmentBinaryLabelmap would leave a display node in the scene
                digest.update(np.ascontiguousarray(
                    slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, segmentID)).tobytes())
        state[node.GetID()] = (node.GetClassName(), node.GetName(), digest.hexdigest())
    return state


def _dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def logic(tmp_path):
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    return SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))


def test_finetune_then_segment_through_the_background_process(slicer_scene, hippocampus_dir, logic, tmp_path):
    import slicer

    from SSLCommonLib import nodeBridge

    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in TRAIN_CASES]
    testVolume, _, reference = _loadPair(hippocampus_dir, TEST_CASE)
    slicer_scene.RemoveNode(slicer_scene.GetFirstNodeByName(f"{TEST_CASE} reference"))
    before = _sceneState(slicer_scene)

    events = []
    model = logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=STEPS,
                           patchSize=PATCH, validationShare=0.2, waitForCompletion=True, onEvent=events.append)
    # the model is in the models folder under a generated name, with the scene's segment names and colours
    assert os.path.dirname(model) == logic.modelStore.folder
    assert [m["path"] for m in logic.modelStore.listModels()] == [model]
    labels = logic.modelLabels(model)
    assert [(l["value"], l["name"]) for l in labels] == [(1, "Anterior"), (2, "Posterior")]
    assert np.allclose([l["color"] for l in labels], [l["color"] for l in LABELS], atol=1e-3)
    kinds = [e["event"] for e in events]
    assert "start" in kinds and kinds[-1] == "done" and "validation" in kinds
    steps = [e["step"] for e in events if e["event"] == "progress"]  # the engine reports at most every 0.5 s
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == STEPS
    assert _sceneState(slicer_scene) == before, "fine-tuning changed the scene"
    assert not [f for f in os.listdir(slicer.app.temporaryPath) if f.startswith("SSLSegmentation-")]

    result = logic.segment(model, testVolume, device="cpu", waitForCompletion=True)
    # a new node; the inputs are untouched
    assert result.IsA("vtkMRMLSegmentationNode") and result.GetID() not in before
    after = _sceneState(slicer_scene)
    assert {k: v for k, v in after.items() if k in before} == before
    segmentation = result.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Anterior", "Posterior"]
    assert np.allclose(segmentation.GetNthSegment(0).GetColor(), LABELS[0]["color"], atol=1e-3)
    # on the input's geometry
    geometry = nodeBridge.volumeGeometry(testVolume)
    predicted, predictedLabels = nodeBridge.segmentationToLabelArray(result, testVolume, ["Anterior", "Posterior"])
    assert predicted.shape == tuple(geometry.shape) == reference.shape
    parameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    probe = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    probe.SetReferenceImageGeometryParameterFromVolumeNode(testVolume)
    expected = probe.GetSegmentation().GetConversionParameter(parameter)
    slicer_scene.RemoveNode(probe)
    assert expected and result.GetSegmentation().GetConversionParameter(parameter) == expected
    assert predictedLabels == [{"value": 1, "name": "Anterior", "color": predictedLabels[0]["color"]},
                               {"value": 2, "name": "Posterior", "color": predictedLabels[1]["color"]}]
    # the module's result is exactly what the engine gives for the original file: the scene -> file -> process ->
    # node round trip loses nothing and flips nothing (a geometry bug would move or mirror the labels)
    from sslseg.imageio import read_image
    from sslseg.inference import predict

    (direct,) = predict(model, [os.path.join(hippocampus_dir, "imagesTr", f"{TEST_CASE}.nii.gz")],
                        str(tmp_path / "direct"), device="cpu", tta=False)
    directLabels, _ = read_image(direct)
    agreement = float(np.mean(directLabels == predicted))
    # sensible Dice on the held-out case after a short CPU run: far above chance; an empty result scores 0
    foreground = _dice(predicted > 0, reference > 0)
    perLabel = [_dice(predicted == v, reference == v) for v in (1, 2)]
    chance = _dice(np.random.default_rng(0).random(reference.shape) < (reference > 0).mean(), reference > 0)
    print(f"held-out Dice: foreground {foreground:.3f}, per label {perLabel}, chance {chance:.3f}, "
          f"agreement with the engine {agreement:.5f}")
    assert agreement > 0.999
    assert foreground > 0.4 and max(perLabel) > 0.5 and chance < 0.1

    # human in the loop: the (corrected) result joins the training pairs and training continues from the model
    assert logic.addCorrectedCase(testVolume, result) == [(testVolume, result)]
    events.clear()
    model2 = logic.finetune(backbone=None, trainingPairs=pairs[:1] + logic.trainingPairs, initialModel=model,
                            preset="test", device="cpu", steps=6, patchSize=PATCH, validationShare=0.0,
                            modelName="hippocampus round 2", waitForCompletion=True, onEvent=events.append)
    assert os.path.basename(model2) == "hippocampus round 2" and len(logic.modelStore.listModels()) == 2
    with open(os.path.join(model2, "model.json")) as stream:
        meta = json.load(stream)
    # started from the first model's weights (sslseg finetune --init-model), not from scratch
    assert meta["initial_model"]["path"] == model and meta["initial_model"]["head"] == "kept"
    assert meta["recipe"]["from_scratch"] is False
    assert any("every weight loaded" in e.get("message", "") for e in events)


def test_cancel_kills_the_process_tree_and_changes_nothing(slicer_scene, hippocampus_dir, logic):
    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in TRAIN_CASES[:3]]
    before = _sceneState(slicer_scene)
    finished = []
    job = logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=100000,
                         validationShare=0.0, onFinished=finished.append)
    assert job.status == "running" and os.path.isdir(job.workFolder)
    deadline = time.monotonic() + 180
    while not any(e.get("event") == "progress" and e.get("step", 0) >= 2 for e in job.events):
        assert job.poll(), f"the run ended early: {job.runner.errorMessage}"
        assert time.monotonic() < deadline, "no training progress within 180 s"
        time.sleep(0.1)
    pids = [job.runner.pid] + descendants(job.runner.pid)
    assert all(alive(pid) for pid in pids[:1])

    logic.cancel()
    while job.poll():
        time.sleep(0.05)
    assert job.status == "cancelled" and finished == [job]
    assert not survivors(pids), "processes of the cancelled run survived"
    assert logic.modelStore.listModels() == []
    assert not os.path.exists(logic.modelStore.folder) or not os.listdir(logic.modelStore.folder)
    assert not os.path.exists(job.workFolder)
    assert _sceneState(slicer_scene) == before
    with pytest.raises(Exception, match="cancelled"):
        job.waitForCompletion()


def test_missing_segment_is_refused_before_any_work(slicer_scene, hippocampus_dir, logic):
    good = _loadPair(hippocampus_dir, TRAIN_CASES[0])[:2]
    partial = _loadPair(hippocampus_dir, TRAIN_CASES[1], labels=[{"value": 1, "name": "Anterior"},
                                                                  {"value": 2, "name": "Tail"}])[:2]
    before = _sceneState(slicer_scene)
    with pytest.raises(UserError, match=r"training pair 2 .*'Posterior'"):
        logic.finetune(backbone=None, trainingPairs=[good, partial], preset="test", device="cpu")
    # choosing only the common segment works up to the checks (no process started: bad preset stops it)
    with pytest.raises(UserError, match="unknown preset"):
        logic.finetune(backbone=None, trainingPairs=[good, partial], segmentNames=["Anterior"], preset="fast")
    with pytest.raises(UserError, match="no training data"):
        logic.finetune(backbone=None, trainingPairs=[], preset="test")
    assert logic.currentJob is None
    assert _sceneState(slicer_scene) == before


def test_add_corrected_case(slicer_scene, hippocampus_dir, logic):
    volume, segmentation, _ = _loadPair(hippocampus_dir, TRAIN_CASES[0])
    assert logic.addCorrectedCase(volume, segmentation) == [(volume, segmentation)]
    assert logic.addCorrectedCase(volume, segmentation) == [(volume, segmentation)]  # once
    with pytest.raises(UserError, match="not a segmentation"):
        logic.addCorrectedCase(volume, volume)


def test_failed_runs_change_nothing(slicer_scene, hippocampus_dir, logic, tmp_path):
    """The engine refuses the job after the scene data went out: the error comes back, nothing is added."""
    from SSLCommonLib.processRunner import ProcessFailed

    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in TRAIN_CASES[:2]]
    before = _sceneState(slicer_scene)
    with pytest.raises(ProcessFailed, match="multiple of the network's total stride"):
        logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=2,
                       patchSize=[30, 48, 32], waitForCompletion=True)
    assert logic.currentJob.status == "failed" and not os.path.exists(logic.currentJob.workFolder)
    assert logic.modelStore.listModels() == []

    # a damaged model: predict fails, no segmentation node appears
    from sslseg.networks import spec_for

    broken = tmp_path / "broken-model"
    broken.mkdir()
    meta = {"format": "sslseg-model/1", "labels": LABELS, "network": spec_for("ResEncT-test"), "in_channels": 1,
            "preprocessing": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore"}, "patch_size": [16, 24, 16]}
    (broken / "model.json").write_text(json.dumps(meta))
    (broken / "model.pt").write_bytes(b"not a checkpoint")  # found by the engine, in the background process
    with pytest.raises(ProcessFailed):
        logic.segment(str(broken), pairs[0][0], device="cpu", waitForCompletion=True)
    # a garbled model.json is refused at once, before the volume goes out
    (broken / "model.json").write_text(json.dumps({"format": "sslseg-model/1", "labels": LABELS}))
    with pytest.raises(UserError, match="lacks 'network'"):
        logic.segment(str(broken), pairs[0][0], device="cpu")
    assert logic.currentJob.kind == "segmentation" and logic.currentJob.status == "failed"
    assert _sceneState(slicer_scene) == before


def _tinyBackboneCheckpoint(folder):
    """A pretrained-backbone checkpoint in the nnssl format (``checkpoint_final.pth`` + ``adaptation_plan.json``),
    written by the engine's own exporter for a freshly initialised tiny network."""
    from sslseg.networks import architecture_kwargs, build_from_spec, spec_for
    from sslseg.pretraining.export import adaptation_plan, write_final

    network = build_from_spec(spec_for("ResEncT-test"), 1, 2)
    plan = adaptation_plan("S3D", "ResEncT-test", architecture_kwargs("ResEncT-test"), [16, 16, 16],
                           [1.0, 1.0, 1.0])
    os.makedirs(folder)
    return write_final(str(folder), network, "sslseg.S3DTrainer", plan, {})


def test_import_backbone_in_the_background(logic, tmp_path, monkeypatch):
    """'Import file...': a checkpoint is checked and registered by the engine in a background process; it then
    appears in the backbone list (here: a tiny network in the nnssl checkpoint format)."""
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))  # the child process inherits it
    checkpoint = _tinyBackboneCheckpoint(tmp_path / "tiny")
    assert "tiny-test" not in [b["name"] for b in logic.listBackbones()]
    logs = []
    logic.importBackbone(checkpoint, name="tiny-test", waitForCompletion=True, onLog=logs.append)
    (entry,) = [b for b in logic.listBackbones() if b["name"] == "tiny-test"]
    assert entry["cached"] and entry["source"] == "imported"
    assert any("imported backbone tiny-test" in line for line in logs)
    other = _tinyBackboneCheckpoint(tmp_path / "other")  # other weights (another random initialisation)
    with pytest.raises(Exception, match="already exists"):  # a different file under the same name is refused
        logic.importBackbone(other, name="tiny-test", waitForCompletion=True)


def test_preset_follows_the_device(slicer_scene, hippocampus_dir, logic):
    """No preset: the engine's default for the device (``cpu`` on the CPU, ``quick`` on a GPU), said in the log."""
    from SSLSegmentationLib.segmentationLogic import presetForDevice

    assert presetForDevice("cpu")[0] == "cpu" and presetForDevice("cuda:0")[0] == "quick"
    import torch

    assert presetForDevice("auto")[0] == ("quick" if torch.cuda.is_available() else "cpu")
    logs = []
    job = logic.finetune(backbone=None, trainingPairs=[_loadPair(hippocampus_dir, TRAIN_CASES[0])[:2]],
                         device="cpu", validationShare=0.0, onLog=logs.append)
    try:
        args = job.runner.args
        assert args[args.index("--preset") + 1] == "cpu"
        assert any("Preset 'cpu' chosen for the CPU" in line for line in logs[:1]), logs[:3]
    finally:
        logic.cancel()
        while job.poll():
            time.sleep(0.05)
    assert job.status == "cancelled" and logic.modelStore.listModels() == []


def test_a_killed_finetune_is_kept_and_resumed_to_the_same_model(slicer_scene, hippocampus_dir, logic):
    """The panel's equivalent of ``sslseg finetune --resume``: the engine process dies (kill -9, as in a crash)
    after a checkpoint; the job fails but keeps its work folder; resumeFinetune finishes it with the step count the
    uninterrupted run would have, adds the model under the name chosen at the start, and removes the folder."""
    import signal

    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in TRAIN_CASES[:3]]
    before = _sceneState(slicer_scene)
    job = logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=300,
                         validationShare=0.0, checkpointEvery=0.5, modelName="resumed")
    checkpoint = os.path.join(job.workFolder, ".model.resume.pth")
    deadline = time.monotonic() + 180
    while not os.path.isfile(checkpoint):
        assert job.poll(), f"the run ended before a checkpoint: {job.runner.errorMessage}"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    os.kill(job.runner.pid, signal.SIGKILL)
    while job.poll():
        time.sleep(0.05)
    assert job.status == "failed" and os.path.isfile(checkpoint) and job.keptPath == job.workFolder
    assert logic.modelStore.listModels() == []
    assert [r["folder"] for r in logic.resumableFinetunes()] == [job.workFolder]
    assert logic.removeStaleWorkFolders() == []  # an interrupted run is not stale work

    path = logic.resumeFinetune(job.workFolder, waitForCompletion=True)
    with open(os.path.join(path, "model.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    assert meta["recipe"]["steps_run"] == 300 and os.path.basename(path) == "resumed"
    assert [m["name"] for m in logic.modelStore.listModels()] == ["resumed"]
    assert not os.path.exists(job.workFolder) and logic.resumableFinetunes() == []
    assert _sceneState(slicer_scene) == before
    with pytest.raises(UserError, match="no interrupted fine-tune"):
        logic.resumeFinetune(job.workFolder)


def test_a_cancelled_finetune_is_not_kept_for_resuming(slicer_scene, hippocampus_dir, logic):
    pairs = [_loadPair(hippocampus_dir, case)[:2] for case in TRAIN_CASES[:3]]
    job = logic.finetune(backbone=None, trainingPairs=pairs, preset="test", device="cpu", steps=100000,
                         validationShare=0.0, checkpointEvery=0.5)
    checkpoint = os.path.join(job.workFolder, ".model.resume.pth")
    deadline = time.monotonic() + 180
    while not os.path.isfile(checkpoint):
        assert job.poll() and time.monotonic() < deadline
        time.sleep(0.05)
    logic.cancel()
    while job.poll():
        time.sleep(0.05)
    assert job.status == "cancelled" and not os.path.exists(job.workFolder) and logic.resumableFinetunes() == []
