"""Bad inputs and bad luck in the Slicer modules' logic, on real slicer-core nodes and real files: a finished model
is never thrown away, a model folder brings only its own files, crashed runs do not leave patient volumes behind
forever (while a folder in use is never touched), and temporary nodes go without taking other modules' nodes along.

The fine-tuning runs are real background processes with the tiny ``test`` preset (a few seconds each).
"""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from bad_inputs import Untouched, assert_user_error, tree_digest

CASES = ["hippocampus_006", "hippocampus_007"]
LABELS = [{"value": 1, "name": "Anterior", "color": [0.9, 0.2, 0.1]},
          {"value": 2, "name": "Posterior", "color": [0.1, 0.4, 0.9]}]


def _pairs(hippocampus_dir, cases=CASES):
    import slicer

    from sslseg.imageio import read_image
    from SSLCommonLib import nodeBridge

    pairs = []
    for case in cases:
        volume = slicer.util.loadVolume(os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz"))
        labels, _ = read_image(os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"))
        pairs.append((volume, nodeBridge.labelArrayToSegmentationNode(labels.astype(np.uint8), LABELS, volume)))
    return pairs


def _tinyModel(folder):
    """A real (untrained) model folder written by the engine: the tiny ResEncT-test network."""
    from sslseg.model_folder import save_model
    from sslseg.networks import build_from_spec, spec_for

    spec = spec_for("ResEncT-test")
    meta = {"network": spec, "in_channels": 1, "labels": LABELS, "patch_size": [16, 24, 16],
            "preprocessing": {"spacing": [1.0, 1.0, 1.0], "normalization": "zscore"}}
    return save_model(folder, meta, build_from_spec(spec, 1, 3).state_dict())


def _unwritableFolder(path):
    """A models folder that cannot be written to: read-only, or (for root, whom permissions do not stop) a path
    under a regular file, which no folder can be created in."""
    os.makedirs(path)
    os.chmod(path, 0o555)
    try:
        open(os.path.join(path, "probe"), "w").close()
    except OSError:
        return str(path)
    os.remove(os.path.join(path, "probe"))
    os.chmod(path, 0o755)
    blocker = os.path.join(path, "a-file")
    open(blocker, "w").close()
    return os.path.join(blocker, "models")


def _deadPid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- a finished model is never thrown away ---------------------------------------------------------------------


def test_unwritable_models_folder_keeps_the_finished_model(slicer_scene, hippocampus_dir, tmp_path):
    from sslseg.model_folder import load_model
    from SSLCommonLib.jobs import removeStaleWorkFolders
    from SSLCommonLib.processRunner import ProcessFailed
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    logic = SSLSegmentationLogic(modelsFolder=_unwritableFolder(tmp_path / "models"))
    logs = []
    with pytest.raises(ProcessFailed) as info:
        logic.finetune(None, _pairs(hippocampus_dir), preset="test", device="cpu", steps=2, validationShare=0.0,
                       waitForCompletion=True, onLog=logs.append)
    message = str(info.value)
    job = logic.currentJob
    kept = job.keptPath
    # the message (one line) and the log say where the model is; the model is complete and loads
    assert "\n" not in message and "could not be added to the models folder" in message and kept in message
    assert any(kept in line for line in logs)
    assert kept == os.path.join(job.workFolder, "model") and load_model(kept).labels[1]["name"] == "Posterior"
    # the work folder stays, without the exported patient volumes
    assert os.path.isdir(job.workFolder) and not os.path.exists(os.path.join(job.workFolder, "dataset"))
    assert logic.modelStore.listModels() == []
    # the start-up clean-up keeps it even when it looks stale (its Slicer gone, older than a day)
    removed = removeStaleWorkFolders("SSLSegmentation", os.path.dirname(job.workFolder), maxAge=0,
                                     now=time.time() + 3 * 86400)
    assert job.workFolder not in removed and os.path.isfile(os.path.join(kept, "model.pt"))
    # once a models folder is usable, the kept model is added as the message says
    store = SSLSegmentationLogic(modelsFolder=str(tmp_path / "usable")).modelStore
    added = store.importModel(kept, "recovered")
    assert store.modelNames() == ["recovered"] and load_model(added).labels == load_model(kept).labels
    shutil.rmtree(job.workFolder)


def test_add_model_failure_leaves_the_source_folder_whole(tmp_path):
    from SSLSegmentationLib.modelStore import ModelStore

    source = _tinyModel(tmp_path / "finished")
    store = ModelStore(_unwritableFolder(tmp_path / "models"))
    with Untouched(source):
        with pytest.raises(OSError):
            store.addModel(source, "hippocampus")
    assert store.modelNames() == []


# --- a model folder brings only its own files ------------------------------------------------------------------


@pytest.mark.parametrize("member", ["model.pt", "model.json"])
def test_import_refuses_a_symbolic_link_and_copies_nothing(tmp_path, member):
    from SSLSegmentationLib.modelStore import ModelStore

    real = _tinyModel(tmp_path / "real")
    secret = tmp_path / "outside" / member
    secret.parent.mkdir()
    secret.write_bytes(open(os.path.join(real, member), "rb").read())  # a valid file, but not the folder's own
    model = _tinyModel(tmp_path / "hostile")
    os.remove(os.path.join(model, member))
    os.symlink(secret, os.path.join(model, member))

    store = ModelStore(tmp_path / "models")
    with Untouched(tmp_path / "hostile", tmp_path / "outside"):
        assert_user_error(lambda: store.importModel(model, "imported"), member, "symbolic link")
    assert not os.path.exists(store.folder) or os.listdir(store.folder) == []  # nothing, not even a staging folder
    assert store.modelNames() == []


def test_import_copies_only_the_model_files_and_checks_the_copy(tmp_path):
    from SSLSegmentationLib.modelStore import ModelStore

    model = _tinyModel(tmp_path / "model")
    (tmp_path / "private.txt").write_text("patient list")
    os.symlink(tmp_path / "private.txt", os.path.join(model, "notes.txt"))  # not a model file: never copied
    store = ModelStore(tmp_path / "models")
    added = store.importModel(model, "hippocampus")
    assert sorted(os.listdir(added)) == ["model.json", "model.pt"]
    assert not any(os.path.islink(os.path.join(added, name)) for name in os.listdir(added))

    # a damaged copy is refused and nothing is added
    broken = _tinyModel(tmp_path / "broken")
    with open(os.path.join(broken, "model.pt"), "r+b") as stream:
        stream.truncate(100)
    with Untouched(store.folder):
        assert_user_error(lambda: store.importModel(broken, "broken"), "broken")
    assert store.modelNames() == ["hippocampus"]


# --- work folders of crashed runs ------------------------------------------------------------------------------


def _workFolder(parent, name, age=0.0):
    folder = os.path.join(parent, name)
    os.makedirs(os.path.join(folder, "dataset", "imagesTr"))
    with open(os.path.join(folder, "dataset", "imagesTr", "case_000_0000.nii.gz"), "wb") as stream:
        stream.write(b"patient volume")
    if age:
        then = time.time() - age
        os.utime(folder, (then, then))
    return folder


def test_stale_work_folders_are_removed_at_start_up_and_live_ones_kept(slicer_scene, hippocampus_dir, tmp_path):
    import slicer

    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    parent = slicer.app.temporaryPath
    day = 24 * 3600
    dead, me = _deadPid(), os.getpid()
    stale = [_workFolder(parent, f"SSLSegmentation-finetune-{dead}-crashed"),
             _workFolder(parent, f"SSLPretrain-{dead}-crashed"),
             _workFolder(parent, f"SSLSegmentation-segment-{me}-forgotten", age=2 * day),
             _workFolder(parent, "SSLSegmentation-finetune-oldnaming", age=2 * day)]
    kept = [_workFolder(parent, f"SSLSegmentation-segment-{me}-recent"),
            _workFolder(parent, "SSLSegmentation-finetune-oldnaming-recent"),
            _workFolder(parent, "SomethingElse-1-x", age=2 * day)]
    withModel = _workFolder(parent, f"SSLSegmentation-finetune-{dead}-finished")
    _tinyModel(os.path.join(withModel, "model"))
    outside = tmp_path / "not ours"
    outside.mkdir()
    (outside / "file").write_text("keep")
    os.symlink(outside, os.path.join(parent, f"SSLSegmentation-segment-{dead}-link"))

    # a run in progress whose folder looks old: in use, never removed
    logic = SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))
    job = logic.finetune(None, _pairs(hippocampus_dir, CASES[:1]), preset="test", device="cpu", steps=100000,
                         validationShare=0.0)
    try:
        then = time.time() - 3 * day
        os.utime(job.workFolder, (then, then))
        with Untouched(job.workFolder, outside):
            SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))  # logic creation cleans up
            SSLPretrainLogic()
        assert job.status == "running" and job.poll()
    finally:
        logic.cancel()
        while job.poll():
            time.sleep(0.05)
    assert [folder for folder in stale if os.path.exists(folder)] == []
    assert all(os.path.isdir(folder) for folder in kept)
    assert os.path.isfile(os.path.join(withModel, "model", "model.pt"))
    assert os.path.islink(os.path.join(parent, f"SSLSegmentation-segment-{dead}-link"))
    assert not os.path.exists(job.workFolder)  # the cancelled run removed its own folder
    for folder in kept + [withModel, os.path.join(parent, f"SSLSegmentation-segment-{dead}-link")]:
        os.remove(folder) if os.path.islink(folder) else shutil.rmtree(folder)


def test_running_job_keeps_its_work_folder_fresh(slicer_scene, hippocampus_dir, tmp_path, monkeypatch):
    """A long run (days, with the paper preset) touches its work folder, so the day-old rule never removes it."""
    from SSLCommonLib import jobs
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    monkeypatch.setattr(jobs, "HEARTBEAT_SECONDS", 0.0)
    logic = SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))
    job = logic.finetune(None, _pairs(hippocampus_dir, CASES[:1]), preset="test", device="cpu", steps=100000,
                         validationShare=0.0)
    try:
        then = time.time() - 3 * 24 * 3600
        os.utime(job.workFolder, (then, then))
        job.poll()
        assert time.time() - os.stat(job.workFolder).st_mtime < 60
    finally:
        logic.cancel()
        while job.poll():
            time.sleep(0.05)


# --- temporary nodes -------------------------------------------------------------------------------------------


def test_other_modules_nodes_added_meanwhile_survive(slicer_scene, hippocampus_dir):
    """Another module reacts to the nodes our calls add by adding nodes of its own: those stay; only the temporary
    nodes of the call (and the display and colour nodes made for them) go."""
    import slicer
    import vtk

    from SSLCommonLib import nodeBridge

    ((volume, segmentation),) = _pairs(hippocampus_dir, CASES[:1])
    theirs = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def otherModule(caller, event, node):
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLSegmentationNode"):
            theirs.append(slicer_scene.AddNewNodeByClass("vtkMRMLTableNode", f"other module's {node.GetName()}"))

    before = {slicer_scene.GetNthNode(i).GetID() for i in range(slicer_scene.GetNumberOfNodes())}
    tag = slicer_scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, otherModule)
    try:
        labels, _ = nodeBridge.segmentationToLabelArray(segmentation, volume)
        result = nodeBridge.labelArrayToSegmentationNode(labels, LABELS, volume, "result")
    finally:
        slicer_scene.RemoveObserver(tag)
    assert len(theirs) >= 2
    after = {slicer_scene.GetNthNode(i).GetID(): slicer_scene.GetNthNode(i) for i in
             range(slicer_scene.GetNumberOfNodes())}
    added = {nodeID: node for nodeID, node in after.items() if nodeID not in before}
    expected = {node.GetID() for node in theirs} | {result.GetID(), result.GetDisplayNode().GetID()}
    assert set(added) == expected, sorted(node.GetName() for node in added.values())
    assert not [n for n in after.values() if (n.GetName() or "").startswith("__sslseg_temp")]


def test_refused_model_import_and_removal_leave_the_models_folder_as_it_was(tmp_path):
    """A second import under a taken name, and a bad name, are refused before anything is written."""
    from SSLSegmentationLib.modelStore import ModelStore

    store = ModelStore(tmp_path / "models")
    store.importModel(_tinyModel(tmp_path / "model"), "hippocampus")
    digest = tree_digest(store.folder)
    assert_user_error(lambda: store.importModel(tmp_path / "model", "hippocampus"), "already exists")
    assert_user_error(lambda: store.importModel(tmp_path / "model", "../escape"), "invalid model name")
    assert_user_error(lambda: store.importModel(tmp_path / "missing", "other"), "missing")
    assert tree_digest(store.folder) == digest
