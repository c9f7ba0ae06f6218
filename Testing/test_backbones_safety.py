"""Safe loading: checkpoints with pickled code are refused before the code runs; corrupt files give clear errors."""

import os
import pickle

import numpy
import pytest
import torch

from sslseg.backbones import import_checkpoint, list_backbones, load_backbone
from sslseg.backbones.safe_load import load_checkpoint
from sslseg.errors import UserError
from test_backbones_support import adaptation_plan, misfm_state, resenc_state, write_nnssl


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_payload_really_runs_under_plain_pickle(tmp_path):
    # guard for the tests below: the payload is live, so its absence there means the loader stopped it
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("layout", ["nnssl", "misfm", "legacy-pickle"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "pwned"
    state = resenc_state("ResEncT-test")
    if layout == "nnssl":
        path = write_nnssl(tmp_path / "evil", state, adaptation_plan("ResEncT-test"),
                           extra={"init_args": _Payload(marker)})
    elif layout == "misfm":
        path = str(tmp_path / "fmunet_abk1k_volf.pt")
        torch.save({"model_state_dict": misfm_state(), "valid_pred": numpy.float64(0.9),
                    "extra": _Payload(marker)}, path)
    else:
        path = str(tmp_path / "old.pth")
        torch.save({"network_weights": state, "x": _Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="refused to load") as error:
        load_backbone(path, num_classes=2)
    with pytest.raises(UserError, match="refused to load"):
        import_checkpoint(path, name="evil")
    assert not marker.exists()
    # one line that says why, and never torch's advice to switch the weights-only guard off
    message = str(error.value)
    assert "not a file this program can trust" in message and "system" in message and "\n" not in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert [b for b in list_backbones() if b["name"] == "evil"] == []


def test_numpy_scalars_allowed_only_as_data(tmp_path):
    path = str(tmp_path / "fmunet.pt")
    torch.save({"model_state_dict": misfm_state(), "valid_pred": numpy.float64(0.91), "iteration": 4}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)                      # plain weights_only load refuses NumPy globals ...
    checkpoint = load_checkpoint(path, allow_numpy=True)  # ... the MIS-FM allow-list reads them as numbers
    assert float(checkpoint["valid_pred"]) == pytest.approx(0.91)
    _, report = load_backbone(path, num_classes=2)
    assert report.encoder.loaded == report.encoder.total


def test_truncated_empty_and_missing_files(tmp_path):
    path = write_nnssl(tmp_path / "ok", resenc_state("ResEncT-test"), adaptation_plan("ResEncT-test"))
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_backbone(str(truncated), num_classes=2)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match="truncated or corrupt|refused"):
        load_backbone(str(garbage), num_classes=2)
    page = tmp_path / "checkpoint_final.pth"
    page.write_bytes(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    with pytest.raises(UserError, match="not a PyTorch checkpoint") as error:
        load_backbone(str(page), num_classes=2)
    assert "weights_only" not in str(error.value)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        load_backbone(str(empty), num_classes=2)
    with pytest.raises(UserError, match="not found"):
        load_backbone(str(tmp_path / "nope.pth"), num_classes=2)
    with pytest.raises(UserError, match="unknown backbone"):
        load_backbone("no-such-backbone", num_classes=2)
    with pytest.raises(UserError, match="not downloaded yet"):
        load_backbone("ResEncL-OpenMind-MAE", num_classes=2)


def test_unknown_format_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state": {"a": 1}, "epoch": 3}, path)
    with pytest.raises(UserError, match="not a checkpoint format"):
        load_backbone(str(path), num_classes=2)
