"""Shared pytest fixtures. Tests run from the repository root: ``python -m pytest Testing``."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("SSLSEG_SHARED_DATA", os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"))
HIPPOCAMPUS = os.path.join(SHARED_DATA, "Task04_Hippocampus")
TOTALSEG = os.path.join(SHARED_DATA, "TotalSegmentator_example")

# The Slicer modules' Python packages (SSLSegmentationLib, SSLPretrainLib) import like they do inside Slicer.
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, "SSLSegmentation"), os.path.join(REPO_ROOT, "SSLPretrain")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


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
