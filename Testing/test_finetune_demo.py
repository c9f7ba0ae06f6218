"""The demo: its sample-data loader (checksum-verified download, served here by a local HTTP server; local copies;
clear offline errors) and the ``sslseg demo`` command end to end on a few real cases."""

import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import pytest

from sslseg.datasets import load_dataset
from sslseg.demo_data import ENV, TASK, download_demo_data, find_demo_data
from sslseg.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_task(root, hippocampus_dir, count):
    """A Task04-like folder with ``count`` real cases and an MSD-style dataset.json."""
    task = root / TASK
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    names = sorted(os.listdir(os.path.join(hippocampus_dir, "imagesTr")))[:count]
    for name in names:
        shutil.copy(os.path.join(hippocampus_dir, "imagesTr", name), task / "imagesTr" / name)
        shutil.copy(os.path.join(hippocampus_dir, "labelsTr", name), task / "labelsTr" / name)
    meta = {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior",
                                                                        "2": "Posterior"},
            "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


@pytest.fixture
def served_archive(tmp_path, hippocampus_dir):
    """A Task04_Hippocampus.tar like the Decathlon's (with a macOS ``._`` file), served on localhost."""
    task = small_task(tmp_path / "src", hippocampus_dir, 2)
    (task / "imagesTr" / "._hippocampus_junk.nii.gz").write_bytes(b"\0\5\26\7")
    archive = tmp_path / "www" / f"{TASK}.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname=TASK)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{TASK}.tar", md5
    server.shutdown()


def test_download_is_verified_and_unpacked_safely(tmp_path, served_archive):
    url, md5 = served_archive
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="corrupt or not the expected"):
        download_demo_data(url, "0" * 32, target=cache, log=lambda *_: None)
    assert not (cache / TASK).exists() and not [n for n in os.listdir(cache) if n.startswith(".download")]

    folder = download_demo_data(url, md5, target=cache, log=lambda *_: None)
    assert folder == str(cache / TASK)
    dataset = load_dataset(folder)
    assert len(dataset.cases) == 2 and dataset.label_names == {1: "Anterior", 2: "Posterior"}
    assert not [n for n in os.listdir(cache / TASK / "imagesTr") if n.startswith("._")]


def test_offline_download_says_how_to_use_a_local_copy(tmp_path):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UserError, match="sslseg demo --data"):
        download_demo_data(f"http://127.0.0.1:{port}/{TASK}.tar", target=tmp_path, log=lambda *_: None, timeout=5)
    assert not (tmp_path / TASK).exists()


def test_local_copies_are_found_in_order(tmp_path, hippocampus_dir, monkeypatch):
    task = small_task(tmp_path, hippocampus_dir, 1)
    monkeypatch.setenv(ENV, str(task))
    assert find_demo_data(download=False) == (str(task), f"${ENV}")
    assert find_demo_data(str(task), download=False)[1] == "--data"
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=ENV):
        find_demo_data(download=False)
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    folder, how = find_demo_data(download=False)  # ../shared/data beside the repository (the test data itself)
    assert os.path.samefile(folder, hippocampus_dir) and "repository" in how


def test_demo_command_end_to_end(tmp_path, hippocampus_dir):
    task = small_task(tmp_path, hippocampus_dir, 6)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "sslseg", "demo", "--data", str(task), "--train-cases", "3",
                          "--test-cases", "1", "--preset", "test", "--time-limit", "15", "--device", "cpu",
                          "--out", str(tmp_path / "demo"), "--progress", "json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert [e["event"] for e in events].count("done") == 1 and events[-1]["event"] == "done"
    result = [e for e in events if e["event"] == "validation"][-1]
    assert set(result["dice"]) == {"Anterior", "Posterior"} and 0.0 <= result["mean_dice"] <= 1.0
    assert any("held-out" in e.get("message", "") for e in events)
    outputs = events[-1]["outputs"]
    assert len(outputs) == 2 and all(os.path.isfile(p) for p in outputs)
    assert os.path.isfile(os.path.join(events[-1]["model"], "model.json"))
