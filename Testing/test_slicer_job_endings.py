"""A background run ends with the Slicer session around it (issue: faults cost nothing): closing the scene, leaving
the module and quitting the application end the run's whole process tree, add nothing to any scene, register
nothing, and leave the scene's data and the input files as they were. Real processes (``python -m sslseg`` on the
CPU) and real slicer-core nodes; the panel's part (Qt) is one call to ``logic.endRun``, tested here on the logic.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from bad_inputs import Untouched
from process_tree import descendants, survivors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ["hippocampus_006", "hippocampus_007", "hippocampus_011"]
LABELS = [{"value": 1, "name": "Anterior", "color": [0.9, 0.2, 0.1]},
          {"value": 2, "name": "Posterior", "color": [0.1, 0.4, 0.9]}]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An isolated engine home; one thread per child process (the runs inherit this environment)."""
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path / "home"


def _images(hippocampus_dir, cases=CASES):
    return [os.path.join(hippocampus_dir, "imagesTr", f"{case}.nii.gz") for case in cases]


def _pairs(hippocampus_dir, cases=CASES):
    import numpy as np
    import slicer

    from sslseg.imageio import read_image
    from SSLCommonLib import nodeBridge

    pairs = []
    for case, image in zip(cases, _images(hippocampus_dir, cases)):
        volume = slicer.util.loadVolume(image)
        labels, _ = read_image(os.path.join(hippocampus_dir, "labelsTr", f"{case}.nii.gz"))
        pairs.append((volume, nodeBridge.labelArrayToSegmentationNode(labels.astype(np.uint8), LABELS, volume,
                                                                      f"{case} reference")))
    return pairs


def _waitForProgress(job, steps=2, seconds=180):
    deadline = time.monotonic() + seconds
    while not any(e.get("event") == "progress" and e.get("step", 0) >= steps for e in job.events):
        assert job.poll(), f"the run ended early: {job.runner.errorMessage}"
        assert time.monotonic() < deadline, f"no training progress within {seconds} s"
        time.sleep(0.05)
    return [job.runner.pid] + descendants(job.runner.pid)


def _addedNodes(harness):
    """Nodes added since the harness started, but singletons (the Segment Editor's parameter node of an earlier
    test stays through a scene close, as in Slicer)."""
    return [node for node in harness.userNodes() if not node.GetSingletonTag()]


def _endCleanly(job):
    if job is not None and job.status == "running":
        job.cancel()


def test_closing_the_scene_ends_a_fine_tuning(slicer_harness, slicer_scene, hippocampus_dir, home, tmp_path):
    from SSLSegmentationLib.segmentationLogic import SSLSegmentationLogic

    logic = SSLSegmentationLogic(modelsFolder=str(tmp_path / "models"))
    logs, finished = [], []
    with Untouched(*_images(hippocampus_dir)):
        job = logic.finetune(None, _pairs(hippocampus_dir), preset="test", device="cpu", steps=100000,
                             validationShare=0.0, onLog=logs.append, onFinished=finished.append)
        try:
            pids = _waitForProgress(job)
            slicer_harness.clearScene()  # File > Close Scene
        finally:
            _endCleanly(job)
    assert job.status == "cancelled" and job.endReason == "the scene was closed" and finished == [job]
    assert "fine-tuning ended because the scene was closed" in logs
    assert not survivors(pids), "processes of the run survived the scene"
    assert logic.modelStore.listModels() == [] and not os.path.exists(job.workFolder)
    assert _addedNodes(slicer_harness) == []  # nothing was added to the new scene
    # the observer went with the run: a later close does not reach it, and the logic runs again
    slicer_harness.clearScene()
    assert job.status == "cancelled"


def test_leaving_the_module_ends_a_pretraining(slicer_scene, hippocampus_dir, home, caplog):
    """The panel calls ``logic.endRun("the module was left")`` from ``exit()`` (and "the module was closed" from
    ``cleanup()``): the process tree ends, nothing is registered, the scene's volumes are as they were."""
    import numpy as np
    import slicer

    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic

    logic = SSLPretrainLogic()
    volumes = [slicer.util.loadVolume(path) for path in _images(hippocampus_dir, CASES[:2])]
    before = [(v.GetID(), np.array(slicer.util.arrayFromVolume(v), copy=True), v.GetMTime()) for v in volumes]
    nodesBefore = slicer_scene.GetNumberOfNodes()
    job = logic.pretrain("s3d", volumeNodes=volumes, arch="ResEncT-test", steps=100000, batch=2, patch=16,
                         device="cpu", backboneName="left-behind", extraArgs=["--report-every", "1"])
    try:
        pids = _waitForProgress(job)
        logic.endRun("the module was left")
    finally:
        _endCleanly(job)
    assert job.status == "cancelled" and job.endReason == "the module was left"
    # the shared job code logs as the module that owns the run
    assert "SSLPretrain: pretraining ended because the module was left" in caplog.messages
    assert os.path.basename(job.workFolder).startswith(f"SSLPretrain-{os.getpid()}-")
    assert not survivors(pids), "processes of the run survived leaving the module"
    assert "left-behind" not in [entry["name"] for entry in logic.listBackbones()]
    assert not os.path.exists(os.path.join(home, "backbones", "left-behind"))
    assert not os.path.exists(job.workFolder)
    assert slicer_scene.GetNumberOfNodes() == nodesBefore
    after = [(v.GetID(), slicer.util.arrayFromVolume(v), v.GetMTime()) for v in volumes]
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(after, before))
    logic.endRun("the module was left")  # nothing running: nothing to do


_QUIT_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path[:0] = {paths!r}
    import slicer_harness
    slicer_harness.start()
    import slicer
    from SSLPretrainLib.pretrainLogic import SSLPretrainLogic

    volumes = [slicer.util.loadVolume(path) for path in {images!r}]
    logic = SSLPretrainLogic()
    # progress every 5000 steps: the run writes nothing for minutes, so a closed output pipe would not stop it
    job = logic.pretrain("s3d", volumeNodes=volumes, arch="ResEncT-test", steps=100000, batch=2, patch=16,
                         device="cpu", backboneName="never-registered", extraArgs=["--report-every", "5000"])
    deadline = time.monotonic() + 180
    while not any(e.get("event") == "start" for e in job.events):
        assert job.poll() and time.monotonic() < deadline, job.runner.errorMessage
        time.sleep(0.05)
    time.sleep(2)  # training steps under way
    print(json.dumps({{"runner": job.runner.pid, "work": job.workFolder}}), flush=True)
    sys.exit(0)  # the application quits with the run in progress
""")


def test_quitting_the_application_ends_the_run(hippocampus_dir, home, tmp_path):
    """Slicer quits while a pretraining runs (no panel, no Cancel): the run, started in a session of its own so
    that Cancel reaches its workers, must not outlive the application. The quitting process is a real one."""
    from process_tree import alive

    script = _QUIT_SCRIPT.format(paths=[REPO_ROOT, os.path.join(REPO_ROOT, "SSLCommon"),
                                        os.path.join(REPO_ROOT, "SSLPretrain"), os.path.dirname(__file__)],
                                 images=_images(hippocampus_dir, CASES[:2]))
    quitter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    line = quitter.stdout.readline()
    assert line, quitter.stderr.read()[-3000:]
    started = json.loads(line)
    pids = [started["runner"]] + descendants(started["runner"])
    assert alive(started["runner"])
    quitter.wait(timeout=120)
    assert quitter.returncode == 0, quitter.stderr.read()[-3000:]
    assert not survivors(pids), "processes of the run survived the application"
    assert not os.path.exists(started["work"])  # the exported volumes went with the run
    assert not os.path.exists(os.path.join(home, "backbones", "never-registered"))
