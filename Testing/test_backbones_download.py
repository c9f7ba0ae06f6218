"""Downloads against a local HTTP server on 127.0.0.1 (Range support, an interrupted transfer, a corrupt one).
Never touches the real network: catalog downloads go through SSLSEG_BACKBONE_MIRROR pointing at the local server."""

import hashlib
import http.server
import json
import os
import threading

import pytest

from sslseg.backbones import download_backbone, list_backbones, load_backbone
from sslseg.backbones import cache
from sslseg.backbones.download import DownloadInterrupted, download_file
from sslseg.errors import UserError
from bad_inputs import partial_files, run_cli
from test_backbones_support import adaptation_plan, resenc_state, write_nnssl


class _Server:
    """Serves ``files`` (path -> bytes); honours ``Range: bytes=N-``; ``cut[path] = n`` makes the next response
    for that path stop after n bytes (Content-Length still announces the full length); ``hold[path] = (n, event)``
    makes the next response pause after n bytes until ``event`` is set."""

    def __init__(self):
        self.files, self.cut, self.hold, self.requests = {}, {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start = int(ranged[len("bytes="):].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)      # Range Not Satisfiable, as real servers answer
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = server.cut.pop(self.path, None)
                held = server.hold.pop(self.path, None)
                if held is not None:
                    self.wfile.write(body[:held[0]])
                    self.wfile.flush()
                    held[1].wait(60)
                    body = body[held[0]:]
                self.wfile.write(body if limit is None else body[:limit])
                self.wfile.flush()
                if limit is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSLSEG_BACKBONE_MIRROR", raising=False)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 123)
    server.files["/f.bin"] = data
    server.cut["/f.bin"] = 1024 * 1024 + 7
    target = tmp_path / "out" / "f.bin"
    seen = []
    with pytest.raises(DownloadInterrupted):
        download_file(server.url + "/f.bin", str(target), hashlib.sha256(data).hexdigest(),
                      progress=lambda done, total: seen.append((done, total)))
    assert not target.exists()                                   # nothing half-done in place
    partial = tmp_path / "out" / ".partial-f.bin"
    assert partial.stat().st_size == 1024 * 1024 + 7
    digest = download_file(server.url + "/f.bin", str(target), hashlib.sha256(data).hexdigest(),
                           progress=lambda done, total: seen.append((done, total)))
    assert target.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert not partial.exists()
    assert server.requests[-1] == ("/f.bin", f"bytes={1024 * 1024 + 7}-")   # resumed, not restarted
    assert seen[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in seen)


def test_stale_partial_longer_than_the_file_starts_over(server, tmp_path):
    data = os.urandom(200_000)
    server.files["/f.bin"] = data
    target = tmp_path / "f.bin"
    (tmp_path / ".partial-f.bin").write_bytes(os.urandom(300_000))     # left by an older, larger file
    assert download_file(server.url + "/f.bin", str(target), hashlib.sha256(data).hexdigest()) == \
        hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data and not (tmp_path / ".partial-f.bin").exists()
    assert server.requests == [("/f.bin", "bytes=300000-"), ("/f.bin", None)]


def test_checksum_mismatch_is_discarded(server, tmp_path):
    server.files["/f.bin"] = b"x" * 5000
    target = tmp_path / "f.bin"
    with pytest.raises(UserError, match="corrupt: sha256"):
        download_file(server.url + "/f.bin", str(target), "0" * 64)
    assert not target.exists() and not (tmp_path / ".partial-f.bin").exists()


def _publish(server, name, tmp_path, arch="ResEncT-test"):
    """Put an nnssl checkpoint + plan on the local server under the mirror layout <name>/<file>."""
    path = write_nnssl(tmp_path / "published", resenc_state(arch), adaptation_plan(arch), plan_in_dict=False,
                       plan_file=True)
    checkpoint = open(path, "rb").read()
    server.files[f"/mirror/{name}/checkpoint_final.pth"] = checkpoint
    server.files[f"/mirror/{name}/adaptation_plan.json"] = open(
        os.path.join(os.path.dirname(path), "adaptation_plan.json"), "rb").read()
    return checkpoint


def test_catalog_download_records_hash_and_loads(server, tmp_path, monkeypatch):
    name = "ResEncL-OpenMind-S3D"     # no published sha256 in the catalog: recorded on first download
    checkpoint = _publish(server, name, tmp_path)
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    server.cut[f"/mirror/{name}/checkpoint_final.pth"] = len(checkpoint) // 3
    with pytest.raises(UserError, match="resume"):
        download_backbone(name)
    assert not [b for b in list_backbones() if b["name"] == name and b["cached"]]
    path = download_backbone(name)
    assert open(path, "rb").read() == checkpoint
    meta = cache.read_meta(name)
    assert meta["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert meta["sha256_source"] == "recorded on first download"
    entry = [b for b in list_backbones() if b["name"] == name][0]
    assert entry["cached"] and entry["source"] == "catalog" and entry["path"] == path
    network, report = load_backbone(name, num_classes=2)
    assert report.encoder.loaded == report.encoder.total and report.sha256 == meta["sha256"]
    requests = len(server.requests)
    assert download_backbone(name) == path and len(server.requests) == requests   # cached: no new request
    # trust on first use: a forced re-download must match the recorded hash
    server.files[f"/mirror/{name}/checkpoint_final.pth"] = checkpoint[:-10] + b"0123456789"
    with pytest.raises(UserError, match="corrupt"):
        download_backbone(name, force=True)
    assert cache.read_meta(name)["sha256"] == meta["sha256"] and open(path, "rb").read() == checkpoint  # still cached


def test_catalog_checksum_mismatch_never_lands_in_cache(server, tmp_path, monkeypatch):
    name = "ResEncL-OpenMind-MAE"     # the catalog has the published sha256; our test file differs
    _publish(server, name, tmp_path)
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    with pytest.raises(UserError, match="corrupt"):
        download_backbone(name)
    assert cache.read_meta(name) is None
    folder = cache.entry_dir(name)
    assert not os.path.exists(os.path.join(folder, "checkpoint_final.pth"))
    assert not partial_files(cache.sslseg_home())


def test_offline_message_explains_import(server, monkeypatch):
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/nothing-here")
    with pytest.raises(UserError) as error:
        download_backbone("ResEncL-OpenMind-VF")
    message = str(error.value)
    assert "sslseg models import checkpoint_final.pth --name ResEncL-OpenMind-VF" in message
    assert "huggingface.co/AnonRes/ResEncL-OpenMind-VF" in message
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", "http://127.0.0.1:9")   # nothing listens on port 9
    with pytest.raises(UserError, match="offline"):
        download_backbone("ResEncL-OpenMind-VF")
    monkeypatch.delenv("SSLSEG_BACKBONE_MIRROR")
    with pytest.raises(UserError, match="Google Drive.*sslseg models import fmunet_abk1k_volf.pt"):
        download_backbone("MISFM-FMUNet-AbdomenCT1K")


def test_catalog_is_complete_and_consistent():
    catalog = json.load(open(os.path.join(os.path.dirname(cache.__file__), "catalog.json")))["backbones"]
    assert set(catalog) == {"ResEncL-OpenMind-MAE", "ResEncL-OpenMind-S3D", "ResEncL-OpenMind-VF",
                            "MISFM-FMUNet-AbdomenCT1K", "MISFM-PCTNet-CT10k"}
    for name, entry in catalog.items():
        for field in ("method", "architecture", "pretraining_data", "modality", "input", "files", "license",
                      "citation"):
            assert entry.get(field), (name, field)
        assert entry["method"] in ("MAE", "S3D", "VolF")
        assert set(entry["input"]) >= {"spacing", "normalization", "patch_size", "in_channels"}
    for name in ("ResEncL-OpenMind-MAE", "ResEncL-OpenMind-S3D", "ResEncL-OpenMind-VF"):
        files = catalog[name]["files"]
        assert files["checkpoint"]["url"] == f"https://huggingface.co/AnonRes/{name}/resolve/main/checkpoint_final.pth"
        assert files["plan"]["url"].endswith(f"AnonRes/{name}/resolve/main/adaptation_plan.json")
        assert catalog[name]["license"] == "CC-BY-4.0"


ERROR_PAGE = b"<!DOCTYPE html><html><head><title>Proxy error</title></head><body>Access denied</body></html>"


def test_error_page_from_mirror_is_never_registered(server, tmp_path, monkeypatch):
    """A catalog entry without a published sha256, a mirror answering 200 with an HTML page: nothing is cached, and
    the page's hash never becomes the trusted one (the real file is accepted afterwards)."""
    name = "ResEncL-OpenMind-S3D"
    checkpoint = _publish(server, name, tmp_path)
    plan = server.files[f"/mirror/{name}/adaptation_plan.json"]
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    server.files[f"/mirror/{name}/adaptation_plan.json"] = ERROR_PAGE
    server.files[f"/mirror/{name}/checkpoint_final.pth"] = ERROR_PAGE
    with pytest.raises(UserError, match="is not valid JSON.*nothing was registered"):
        download_backbone(name)
    server.files[f"/mirror/{name}/adaptation_plan.json"] = plan
    with pytest.raises(UserError, match=r"is not a checkpoint \(an error page\?\).*nothing was registered"):
        download_backbone(name)
    assert cache.read_meta(name) is None and not [b for b in list_backbones() if b["name"] == name and b["cached"]]
    assert not partial_files(cache.sslseg_home()) and not os.path.exists(cache.entry_dir(name))
    server.files[f"/mirror/{name}/checkpoint_final.pth"] = checkpoint
    download_backbone(name)
    assert cache.read_meta(name)["sha256"] == hashlib.sha256(checkpoint).hexdigest()


def test_a_checkpoint_that_does_not_load_is_never_registered(server, tmp_path, monkeypatch):
    """A real checkpoint of the wrong kind (its encoder does not match the plan) is load-checked and refused."""
    name = "ResEncL-OpenMind-VF"
    _publish(server, name, tmp_path)
    broken = write_nnssl(tmp_path / "broken", {k: v for k, v in resenc_state().items() if "stages" not in k})
    server.files[f"/mirror/{name}/checkpoint_final.pth"] = open(broken, "rb").read()
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    with pytest.raises(UserError, match=f"not a usable {name} checkpoint"):
        download_backbone(name)
    assert cache.read_meta(name) is None and not partial_files(cache.sslseg_home())


def test_concurrent_downloads_of_one_backbone(server, tmp_path, monkeypatch):
    """While one process downloads a backbone, a second download of it is refused with one line (it never touches
    the first one's partial file); the first completes and registers it, with the Slicer module's JSON events."""
    import subprocess
    import sys

    name = "ResEncL-OpenMind-S3D"
    checkpoint = _publish(server, name, tmp_path)
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    release = threading.Event()
    server.hold[f"/mirror/{name}/checkpoint_final.pth"] = (len(checkpoint) // 2, release)
    first = subprocess.Popen([sys.executable, "-m", "sslseg", "models", "download", name, "--progress", "json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        partial = os.path.join(cache.entry_dir(name), ".partial-checkpoint_final.pth")
        for _ in range(600):
            if os.path.exists(partial) and os.path.getsize(partial) >= len(checkpoint) // 2:
                break
            threading.Event().wait(0.1)
        size = os.path.getsize(partial)
        with pytest.raises(UserError, match=f"another download or import of {name} is in progress"):
            download_backbone(name)
        second = run_cli("models", "download", name, "--progress", "none")
        assert second.returncode == 2 and "in progress" in second.stderr
        assert os.path.getsize(partial) == size                 # the running download's file was left alone
    finally:
        release.set()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1] == {"event": "done", "model": os.path.join(cache.entry_dir(name), "checkpoint_final.pth")}
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(e["phase"] == "download" for e in progress)
    assert progress[-1]["step"] == progress[-1]["total"] == len(checkpoint)
    assert cache.read_meta(name)["sha256"] == hashlib.sha256(checkpoint).hexdigest()
    assert not partial_files(cache.sslseg_home()) and not os.path.exists(os.path.join(cache.backbones_dir(),
                                                                                         f".{name}.lock"))


def test_download_resumes_after_an_interruption_under_the_lock(server, tmp_path, monkeypatch):
    """The lock does not get in the way of resuming: the next run (CLI) continues the partial file."""
    name = "ResEncL-OpenMind-VF"
    checkpoint = _publish(server, name, tmp_path)
    monkeypatch.setenv("SSLSEG_BACKBONE_MIRROR", server.url + "/mirror")
    server.cut[f"/mirror/{name}/checkpoint_final.pth"] = len(checkpoint) // 2
    first = run_cli("models", "download", name, "--progress", "none")
    assert first.returncode == 2 and "resume" in first.stderr
    result = run_cli("models", "download", name, "--progress", "bar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == os.path.join(cache.entry_dir(name), "checkpoint_final.pth")
    assert ("/mirror/" + name + "/checkpoint_final.pth", f"bytes={len(checkpoint) // 2}-") in server.requests
    assert open(cache.cached_checkpoint(name), "rb").read() == checkpoint
