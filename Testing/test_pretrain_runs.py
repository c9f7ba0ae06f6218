"""Real pretraining runs on CPU with the tiny ResEncT-test preset and real hippocampus MRI: S3D and Volume Fusion
learn, write nnssl-format backbones that the backbone loader reads completely and fine-tuning starts from; a
stopped run resumes exactly; a 2-process gloo run under torchrun writes the same format."""

import json
import os
import subprocess
import sys

import pytest
import torch

import sslseg
from sslseg.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NNSSL_KEYS = {"network_weights", "nnssl_adaptation_plan", "trainer_name", "init_args"}
PLAN_KEYS = {"architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
             "key_to_encoder", "key_to_stem", "keys_to_in_proj"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # These tiny networks gain little from a second thread, and on a busy 2-core machine two OpenMP threads stall
    # each other (10x slower measured); restored afterwards for the rest of the suite.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _one_torch_thread_per_test(_one_torch_thread):
    previous = torch.get_num_threads()  # fine-tuning picks its own thread count: set it again for every test
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _image_list(hippocampus_dir, tmp_path, count=8):
    folder = os.path.join(hippocampus_dir, "imagesTr")
    names = sorted(os.listdir(folder))[:count]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(os.path.join(folder, name) + "\n" for name in names))
    return str(listing)


@pytest.fixture(scope="module")
def s3d_run(hippocampus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3d")
    out = tmp / "run"
    # The paper's SGD recipe (momentum 0.99) is slow to start: 100 steps on 16^3 patches show a clear fall of the
    # fixed-batch validation loss where a few dozen steps are still noise.
    result = sslseg.pretrain("s3d", images=_image_list(hippocampus_dir, tmp), out=out, arch="ResEncT-test",
                             steps=100, batch=2, patch=16, device="cpu", seed=1, val_every=25, save_every=50)
    return result, out


@pytest.fixture(scope="module")
def volf_run(hippocampus_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("volf")
    out = tmp / "run"
    result = sslseg.pretrain("volf", images=_image_list(hippocampus_dir, tmp), out=out, arch="ResEncT-test",
                             steps=40, batch=2, patch=32, device="cpu", seed=0, val_every=10)
    return result, out


def _check_nnssl_checkpoint(out, method, outputs):
    checkpoint = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert NNSSL_KEYS <= set(checkpoint)
    plan = checkpoint["nnssl_adaptation_plan"]
    assert PLAN_KEYS <= set(plan)
    assert json.loads((out / "adaptation_plan.json").read_text()) == plan
    assert plan["architecture_plans"]["arch_class_name"] == "ResEncT-test"
    assert plan["pretrain_plan"]["method"] == method
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stem"
    weights = checkpoint["network_weights"]
    assert weights["decoder.seg_layers.1.weight"].shape[0] == outputs
    # the same names as a plain ResidualEncoderUNet, and conv/all_modules hold one tensor (not SparK's stale copy)
    from sslseg.networks import build_from_spec

    spec = {"family": "ResEnc", "name": "ResEncT-test", "config": plan["architecture_plans"]["arch_kwargs"]}
    network = build_from_spec(spec, 1, outputs)
    assert set(weights) == set(network.state_dict())
    network.load_state_dict(weights, strict=True)
    assert torch.equal(weights["encoder.stem.convs.0.conv.weight"], weights["encoder.stem.convs.0.all_modules.0.weight"])
    return checkpoint


def test_s3d_learns_and_writes_an_nnssl_backbone(s3d_run):
    result, out = s3d_run
    validation = [loss for _, loss in result["validation"]]
    assert [step for step, _ in result["validation"]] == [0, 25, 50, 75, 100]
    assert validation[-1] < 0.9 * validation[0], validation
    _check_nnssl_checkpoint(out, "S3D", outputs=1)
    assert json.loads((out / "preflight.json").read_text())["usable"] == 8
    assert not [name for name in os.listdir(out) if name.startswith(".partial")]


def test_volf_learns_and_writes_an_nnssl_backbone(volf_run):
    result, out = volf_run
    validation = [loss for _, loss in result["validation"]]
    assert validation[-1] < 0.85 * validation[0], validation
    checkpoint = _check_nnssl_checkpoint(out, "VolF", outputs=5)
    assert checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["volf_variant"] == "pymic"


@pytest.mark.parametrize("which", ["s3d", "volf"])
def test_backbone_loader_reads_every_encoder_tensor(which, s3d_run, volf_run):
    out = (s3d_run if which == "s3d" else volf_run)[1]
    network, report = sslseg.load_backbone(str(out / "checkpoint_final.pth"), num_classes=3)
    for part in ("stem", "encoder"):
        counts = report.to_dict()["parts"][part]
        assert counts["total"] > 0 and counts["loaded"] == counts["total"], report.summary()
    assert report.plan["method"] == {"s3d": "S3D", "volf": "VolF"}[which]
    weights = torch.load(out / "checkpoint_final.pth", weights_only=True)["network_weights"]
    state = network.state_dict()
    encoder_keys = [k for k in weights if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(state[k], weights[k]) for k in encoder_keys)


def test_finetuning_starts_from_the_pretrained_backbone(s3d_run, hippocampus_dir, tmp_path):
    out = s3d_run[1]
    cases = ["hippocampus_006", "hippocampus_007", "hippocampus_011"]
    images = [os.path.join(hippocampus_dir, "imagesTr", f"{c}.nii.gz") for c in cases]
    labels = [os.path.join(hippocampus_dir, "labelsTr", f"{c}.nii.gz") for c in cases]
    model = sslseg.finetune(backbone=str(out / "checkpoint_final.pth"), images=images, labels=labels,
                            out=str(tmp_path / "model"), preset="test", steps=4, val_cases=0, device="cpu",
                            progress="none", label_names={1: "Anterior", 2: "Posterior"})
    meta = json.loads(open(os.path.join(model, "model.json")).read())
    backbone = meta["backbone"]
    assert backbone["plan"]["method"] == "S3D" and backbone["encoder_fraction"] == 1.0


def test_stopped_run_resumes_exactly(hippocampus_dir, tmp_path):
    images = _image_list(hippocampus_dir, tmp_path, count=4)
    options = dict(images=images, arch="ResEncT-test", steps=10, batch=2, patch=16, device="cpu", val_every=5)
    straight = sslseg.pretrain("s3d", out=tmp_path / "straight", **options)
    stopped = sslseg.pretrain("s3d", out=tmp_path / "resumed", stop_at=4, **options)
    assert stopped["stopped"] and stopped["checkpoint"] is None
    assert not (tmp_path / "resumed" / "checkpoint_final.pth").exists()  # never a partial final backbone
    latest = torch.load(tmp_path / "resumed" / "checkpoint_latest.pth", weights_only=True)
    assert latest["step"] == 4
    with pytest.raises(UserError, match="--resume"):
        sslseg.pretrain("s3d", out=tmp_path / "resumed", **options)
    with pytest.raises(UserError, match="differs"):
        sslseg.pretrain("s3d", out=tmp_path / "resumed", resume=True, **{**options, "patch": 32})
    resumed = sslseg.pretrain("s3d", out=tmp_path / "resumed", resume=True, **options)
    assert resumed["steps"] == 10
    assert resumed["losses"] == straight["losses"] and resumed["validation"] == straight["validation"]
    a = torch.load(tmp_path / "straight" / "checkpoint_final.pth", weights_only=True)["network_weights"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_final.pth", weights_only=True)["network_weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_process_gloo_run_under_torchrun(hippocampus_dir, tmp_path):
    images = _image_list(hippocampus_dir, tmp_path, count=4)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sslseg", "pretrain", "--method", "s3d", "--images", images, "--out", str(out),
               "--arch", "ResEncT-test", "--steps", "6", "--batch", "1", "--patch", "16", "--device", "cpu",
               "--progress", "json", "--report-every", "2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines()]  # stdout holds JSON lines only
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1  # rank 0 alone reports
    assert events[0]["processes"] == 2 and events[0]["usable"] == 4
    assert [e["step"] for e in events if e["event"] == "progress"] == [2, 4, 6]
    checkpoint = _check_nnssl_checkpoint(out, "S3D", outputs=1)
    assert checkpoint["init_args"]["processes"] == 2
    assert not any(k.startswith("module.") for k in checkpoint["network_weights"])
    assert sorted(os.listdir(out / "cache")) and len([n for n in os.listdir(out / "cache") if n.endswith(".npy")]) == 4


def test_mae_run_with_loader_workers_registers_its_backbone(hippocampus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    images = _image_list(hippocampus_dir, tmp_path, count=2)
    result = sslseg.pretrain("mae", images=images, out=tmp_path / "mae", arch="ResEncT-test", steps=3, batch=1,
                             patch=16, device="cpu", workers=1, register="site-mae")
    assert result["registered"] == "site-mae"
    _check_nnssl_checkpoint(tmp_path / "mae", "MAE", outputs=1)
    from sslseg.backbones import list_backbones

    entry = next(b for b in list_backbones() if b["name"] == "site-mae")
    assert entry["source"] == "imported" and entry["method"] == "MAE" and entry["cached"]


def test_cancel_saves_a_resumable_checkpoint_and_no_final_backbone(hippocampus_dir, tmp_path):
    import signal

    images = _image_list(hippocampus_dir, tmp_path, count=2)
    out = tmp_path / "cancelled"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "sslseg", "pretrain", "--method", "s3d", "--images", images, "--out", str(out),
         "--arch", "ResEncT-test", "--steps", "100000", "--batch", "1", "--patch", "16", "--device", "cpu",
         "--progress", "json", "--report-every", "1", "--register", "never-registered"],
        cwd=REPO, env={**env, "SSLSEG_HOME": str(tmp_path / "home")}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    events = []
    for line in process.stdout:  # cancel as the GUI does, once training runs
        events.append(json.loads(line))
        if events[-1]["event"] == "progress":
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=120)
    events += [json.loads(line) for line in rest.splitlines()]
    assert process.returncode == 130
    assert events[-1]["event"] == "error" and "cancelled" in events[-1]["message"]
    assert not (out / "checkpoint_final.pth").exists() and not (out / "adaptation_plan.json").exists()
    assert not (tmp_path / "home" / "backbones" / "never-registered").exists()
    saved = torch.load(out / "checkpoint_latest.pth", weights_only=True)
    assert saved["step"] >= 1
