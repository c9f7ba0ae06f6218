"""Shared pytest fixtures. Tests run from the repository root: ``python -m pytest Testing``."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("SSLSEG_SHARED_DATA", os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"))
HIPPOCAMPUS = os.path.join(SHARED_DATA, "Task04_Hippocampus")
TOTALSEG = os.path.join(SHARED_DATA, "TotalSegmentator_example")

# The Slicer modules' Python packages (SSLSegmentationLib, SSLPretrainLib) import like they do inside Slicer.
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "SSLCommon"), os.path.join(REPO_ROOT, "SSLSegmentation"),
              os.path.join(REPO_ROOT, "SSLPretrain")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def copy_dataset_subset(source, root, count: int) -> list:
    """Copy the first ``count`` training cases of the dataset folder ``source`` into ``root`` with their own
    dataset.json (tests never touch the shared data). Returns all of the source's training entries."""
    import json
    import shutil

    with open(os.path.join(source, "dataset.json"), encoding="utf-8") as stream:
        meta = json.load(stream)
    entries = meta["training"]
    meta["training"], meta["numTraining"] = entries[:count], count
    for entry in meta["training"]:
        for key in ("image", "label"):
            target = os.path.join(root, entry[key])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(source, entry[key]), target)
    with open(os.path.join(root, "dataset.json"), "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=1)
    return entries


@pytest.fixture(scope="session")
def hippocampus_dir():
    """The MSD Task04 Hippocampus subset from ../shared/data; the test is skipped when it is absent."""
    if not os.path.isfile(os.path.join(HIPPOCAMPUS, "dataset.json")):
        pytest.skip(f"needs the real hippocampus data at {HIPPOCAMPUS} (../shared/data beside the repository)")
    return HIPPOCAMPUS


@pytest.fixture(scope="session")
def totalseg_dir():
    if not os.path.isdir(os.path.join(TOTALSEG, "imagesTr")):
        pytest.skip(f"needs the TotalSegmentator example at {TOTALSEG} (../shared/data beside the repository)")
    return TOTALSEG


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # CI has 2 cores; keep torch from oversubscribing when tests spawn subprocesses.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


# ---- Slicer core: the PyPI package slicer-core ------------------------------------------------------------------
# Real MRML scene and module logics from the PyPI package slicer-core (see Testing/slicer_harness.py). Tests that
# use these fixtures skip with a clear reason where slicer-core is not installed; engine tests never need it.
_TESTING = os.path.dirname(os.path.abspath(__file__))
if _TESTING not in sys.path:
    sys.path.insert(0, _TESTING)


@pytest.fixture(scope="session")
def slicer_harness():
    """The headless Slicer core (one per test session): ``.scene``, ``.logics[name]``, ``.app``, ``.clearScene()``,
    ``.userNodes()``; ``slicer.mrmlScene``, ``slicer.modules.<name>.logic()`` and ``slicer.app`` are installed."""
    import slicer_harness as harness_module

    ok, reason = harness_module.available()
    if not ok:
        pytest.skip(reason)
    return harness_module.start()


@pytest.fixture
def slicer_scene(slicer_harness):
    """A clean ``slicer.mrmlScene`` for one test; the scene is closed (cleared) after the test."""
    slicer_harness.clearScene()
    yield slicer_harness.scene
    slicer_harness.clearScene()
