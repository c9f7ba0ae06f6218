"""Importing into the cache ($SSLSEG_HOME), listing, and the `sslseg models` command line (run in-process)."""

import json
import os

import pytest
import torch

from sslseg import cli
from sslseg.backbones import import_checkpoint, list_backbones, load_backbone
from sslseg.backbones import cache
from sslseg.errors import UserError
from test_backbones_support import adaptation_plan, misfm_state, resenc_state, write_nnssl


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSLSEG_BACKBONE_MIRROR", raising=False)


def _pretrain_output(folder, seed=0):
    """What `sslseg pretrain` leaves: OUT/checkpoint_final.pth (plan inside) + OUT/adaptation_plan.json."""
    plan = adaptation_plan("ResEncT-test")
    plan["pretrain_plan"].update({"method": "S3D", "spacing": [0.8, 0.8, 2.0], "normalization": "zscore",
                                  "patch_size": [32, 48, 48], "modality": "CT"})
    state = resenc_state("ResEncT-test", seed=seed)
    return write_nnssl(folder, state, plan, plan_file=True, trainer="sslseg.S3DTrainer"), state


def test_import_user_pretrained_backbone(tmp_path):
    path, state = _pretrain_output(tmp_path / "runs" / "s3d")
    name = import_checkpoint(str(tmp_path / "runs" / "s3d"))          # a pretraining output folder
    assert name == "s3d"                                                 # named after the folder
    folder = os.path.join(str(tmp_path / "home"), "backbones", "s3d")
    assert sorted(os.listdir(folder)) == ["adaptation_plan.json", "backbone.json", "checkpoint_final.pth"]
    entry = [b for b in list_backbones() if b["name"] == "s3d"][0]
    assert entry["source"] == "imported" and entry["cached"] and entry["method"] == "S3D"
    assert entry["architecture"] == "ResEncT-test" and entry["trainer"] == "sslseg.S3DTrainer"
    assert entry["input"]["spacing"] == [0.8, 0.8, 2.0] and entry["input"]["modality"] == "CT"
    os.remove(path)                                                      # the cache holds its own copy
    network, report = load_backbone("s3d", num_classes=3)
    assert torch.equal(network.state_dict()["encoder.stages.1.blocks.0.conv1.conv.weight"],
                       state["encoder.stages.1.blocks.0.conv1.conv.weight"])
    assert report.name == "s3d"
    assert report.plan["patch_size"] == [64, 64, 64]          # nnssl's recommended_downstream_patchsize wins


def test_import_names_conflicts_and_overwrite(tmp_path):
    first, _ = _pretrain_output(tmp_path / "a", seed=0)
    second, _ = _pretrain_output(tmp_path / "b", seed=1)
    assert import_checkpoint(first, name="mine") == "mine"
    assert import_checkpoint(first, name="mine") == "mine"              # same file again: no-op
    with pytest.raises(UserError, match="already exists"):
        import_checkpoint(second, name="mine")
    assert import_checkpoint(second, name="mine", overwrite=True) == "mine"
    assert cache.read_meta("mine")["sha256"] == cache.sha256_of(second)
    with pytest.raises(UserError, match="invalid backbone name"):
        import_checkpoint(first, name="../escape")
    # a file whose encoder does not load is never registered
    broken = write_nnssl(tmp_path / "broken", {k: v for k, v in resenc_state().items() if "stages" not in k},
                         adaptation_plan("ResEncT-test"))
    with pytest.raises(UserError):
        import_checkpoint(broken, name="broken")
    assert cache.read_meta("broken") is None
    assert not os.path.exists(os.path.join(cache.backbones_dir(), "broken", "checkpoint_final.pth"))


def test_import_manual_download_under_catalog_name(tmp_path):
    # MIS-FM comes from Google Drive by hand: import it under its catalog name
    path = tmp_path / "fmunet_abk1k_volf.pt"
    torch.save({"model_state_dict": misfm_state(), "iteration": 1}, path)
    assert import_checkpoint(str(path), name="MISFM-FMUNet-AbdomenCT1K") == "MISFM-FMUNet-AbdomenCT1K"
    entry = [b for b in list_backbones() if b["name"] == "MISFM-FMUNet-AbdomenCT1K"][0]
    assert entry["source"] == "catalog" and entry["cached"]
    _, report = load_backbone("MISFM-FMUNet-AbdomenCT1K", num_classes=2)
    assert report.plan["modality"] == "CT" and report.plan["method"] == "VolF"
    # the MAE entry has a published sha256: another file is refused under that name
    other = write_nnssl(tmp_path / "mae", resenc_state(), adaptation_plan("ResEncT-test"))
    with pytest.raises(UserError, match="not the published ResEncL-OpenMind-MAE"):
        import_checkpoint(other, name="ResEncL-OpenMind-MAE")


def _run(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_cli(tmp_path, capsys):
    path, _ = _pretrain_output(tmp_path / "run")
    code, out, _ = _run(capsys, "models", "list")
    assert code == 0 and "ResEncL-OpenMind-S3D" in out and "MISFM-FMUNet-AbdomenCT1K" in out
    code, out, _ = _run(capsys, "models", "import", path, "--name", "site-s3d")
    assert code == 0 and "imported backbone site-s3d" in out and "loaded: 100.0 %" in out
    code, out, _ = _run(capsys, "models", "list", "--json")
    listed = {b["name"]: b for b in json.loads(out)}
    assert listed["site-s3d"]["source"] == "imported" and listed["ResEncL-OpenMind-MAE"]["cached"] is False
    code, out, _ = _run(capsys, "models", "inspect", "site-s3d", "--json")
    result = json.loads(out)
    assert code == 0 and result["report"]["format"] == "nnssl" and result["report"]["plan"]["method"] == "S3D"
    assert result["report"]["parts"]["encoder"]["loaded"] == result["report"]["parts"]["encoder"]["total"]
    assert result["report"]["parameters"] > 0
    code, out, _ = _run(capsys, "models", "inspect", path)
    assert code == 0 and "encoder (with stem) loaded: 100.0 %" in out
    code, out, _ = _run(capsys, "models", "inspect", "ResEncL-OpenMind-VF")
    assert code == 0 and "not downloaded yet" in out and "CC-BY-4.0" in out
    code, _, err = _run(capsys, "models", "download", "MISFM-FMUNet-AbdomenCT1K")
    assert code == 2 and "sslseg models import" in err
    code, _, err = _run(capsys, "models", "inspect", str(tmp_path / "missing.pth"))
    assert code == 2 and "not found" in err


def test_overwrite_replaces_the_whole_backbone(tmp_path):
    """A new file under an existing name replaces the folder: no checkpoint or plan of the old one is left to be
    mixed with the new one."""
    first, _ = _pretrain_output(tmp_path / "a", seed=0)                    # with adaptation_plan.json beside it
    state = resenc_state("ResEncT-test", seed=5)
    second = write_nnssl(tmp_path / "b", state, adaptation_plan("ResEncT-test"))   # plan inside, none beside
    os.rename(second, tmp_path / "b" / "other-name.pth")
    import_checkpoint(first, name="mine")
    import_checkpoint(str(tmp_path / "b" / "other-name.pth"), name="mine", overwrite=True)
    folder = cache.entry_dir("mine")
    assert sorted(os.listdir(folder)) == ["backbone.json", "other-name.pth"]
    assert not [n for n in os.listdir(cache.backbones_dir()) if n.startswith(".")]   # no staging, no lock left
    network, _ = load_backbone("mine", num_classes=2)
    assert torch.equal(network.state_dict()["encoder.stages.0.blocks.0.conv1.conv.weight"],
                       state["encoder.stages.0.blocks.0.conv1.conv.weight"])


def test_a_refused_import_names_the_users_file(tmp_path):
    """The staged copy in the cache is what gets checked, but the message names the file the user gave."""
    broken = write_nnssl(tmp_path / "broken", {k: v for k, v in resenc_state().items() if "stages" not in k},
                         adaptation_plan("ResEncT-test"))
    with pytest.raises(UserError) as error:
        import_checkpoint(broken, name="broken")
    assert broken in str(error.value) and ".partial" not in str(error.value) and "\n" not in str(error.value)


def test_import_follows_a_symlinked_checkpoint(tmp_path):
    """A Hugging Face cache snapshot links its files to blobs: the cache gets real copies of the bytes."""
    path, state = _pretrain_output(tmp_path / "run")
    blobs = tmp_path / "hub" / "blobs"
    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in ("checkpoint_final.pth", "adaptation_plan.json"):
        os.rename(tmp_path / "run" / name, blobs / name)
        os.symlink(blobs / name, snapshot / name)
    assert import_checkpoint(str(snapshot), name="from-hub") == "from-hub"
    folder = cache.entry_dir("from-hub")
    assert not any(os.path.islink(os.path.join(folder, n)) for n in os.listdir(folder))
    assert cache.read_meta("from-hub")["sha256"] == cache.sha256_of(str(blobs / "checkpoint_final.pth"))


def test_models_download_progress_events(tmp_path, capsys):
    """`sslseg models download --progress json` of a cached backbone: only JSON events on stdout, ending with the
    `done` event carrying the checkpoint path (what the Slicer module reads)."""
    path = tmp_path / "fmunet_abk1k_volf.pt"
    torch.save({"model_state_dict": misfm_state(), "iteration": 1}, path)
    import_checkpoint(str(path), name="MISFM-FMUNet-AbdomenCT1K")
    code, out, _ = _run(capsys, "models", "download", "MISFM-FMUNet-AbdomenCT1K", "--progress", "json")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == [
        {"event": "done", "model": cache.cached_checkpoint("MISFM-FMUNet-AbdomenCT1K")}]
    code, out, err = _run(capsys, "models", "download", "MISFM-FMUNet-AbdomenCT1K", "--force", "--progress", "json")
    assert code == 2 and "sslseg models import" in err                    # manual-only: refused, also as an event
    assert json.loads(out.splitlines()[-1])["event"] == "error"
