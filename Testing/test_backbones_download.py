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
from test_backbones_support import adaptation_plan, resenc_state, write_nnssl


class _Server:
    """Serves ``files`` (path -> bytes); honours ``Range: bytes=N-``; ``cut[path] = n`` makes the next response
    for that path stop after n bytes (Content-Length still announces the full length)."""

    def __init__(self):
        self.files, self.cut, self.requests = {}, {}, []
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
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = server.cut.pop(self.path, None)
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
    assert not [f for f in os.listdir(folder) if f.startswith(".partial")]


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
