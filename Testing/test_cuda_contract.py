"""The CUDA contract, tested without a GPU: every CUDA-only branch that needs no kernel runs here under a simulated
device (``Testing/cuda_sim.py``: torch.cuda's queries patched, every ``torch.cuda.*`` call recorded and its
arguments checked as PyTorch checks them). These tests would have caught the two crashes of the first GPU run: a
bare ``torch.device("cuda")`` handed to ``torch.cuda.set_device`` (pretraining's start) and to
``torch.cuda.set_per_process_memory_fraction`` (fine-tuning under ``--max-memory-gb``)."""

import time
import types

import numpy as np
import pytest
import torch

from cuda_sim import GB, simulated_cuda
from sslseg.device import mixed_precision, resolve_device
from sslseg.errors import UserError


# --- device resolution ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("asked, rank, current, expected", [
    ("auto", None, 0, "cuda:0"), ("cuda", None, 0, "cuda:0"), ("cuda", None, 1, "cuda:1"), ("auto", None, 1, "cuda:1"),
    ("cuda:1", None, 0, "cuda:1"), ("cuda", 1, 0, "cuda:1"), ("auto", 0, 1, "cuda:0"), ("CUDA:0", None, 1, "cuda:0"),
])
def test_every_form_resolves_to_an_indexed_device_that_set_device_accepts(monkeypatch, asked, rank, current,
                                                                           expected):
    with simulated_cuda(monkeypatch, devices=2) as gpu:
        gpu.current = current
        device, note = resolve_device(asked, local_rank=rank)
        assert device == torch.device(expected) and device.index is not None
        torch.cuda.set_device(device)  # the simulator checks the argument as PyTorch does
        assert gpu.current == device.index
        assert "H100" in note and "bfloat16 mixed precision" in note


def test_a_bare_cuda_device_is_what_set_device_rejects(monkeypatch):
    """The simulator is strict where PyTorch is: the shape of the crash the first GPU run would have hit."""
    with simulated_cuda(monkeypatch):
        with pytest.raises(ValueError, match="specified index"):
            torch.cuda.set_device(torch.device("cuda"))
        with pytest.raises(ValueError, match="specified index"):
            torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda"))
        assert torch.cuda.memory_reserved(torch.device("cuda")) == 0  # queries take the current device


def test_absent_or_missing_gpus_are_one_line_errors(monkeypatch):
    with simulated_cuda(monkeypatch, devices=2):
        with pytest.raises(UserError, match="only 2 CUDA GPU"):
            resolve_device("cuda:2")
        with pytest.raises(UserError, match="only 2 CUDA GPU"):
            resolve_device("cuda", local_rank=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto")[0] == torch.device("cpu")


# --- precision and the grad scaler ------------------------------------------------------------------------------

@pytest.mark.parametrize("bf16, dtype, scaler", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_precision_and_scaler_follow_the_card(monkeypatch, bf16, dtype, scaler):
    with simulated_cuda(monkeypatch, bf16=bf16):
        device, note = resolve_device("auto")
        precision = mixed_precision(device)
        assert (precision.enabled, precision.dtype, precision.use_scaler) == (True, dtype, scaler)
        assert f"{precision.name} mixed precision" in note
        grad_scaler = torch.amp.GradScaler("cuda", enabled=precision.use_scaler)
        assert grad_scaler.is_enabled() is scaler


# --- memory: the limit and the fitting --------------------------------------------------------------------------

def test_the_memory_limit_binds_and_is_released_on_the_resolved_device(monkeypatch):
    from sslseg.finetuning.memory import hold_to_limit, release_limit

    with simulated_cuda(monkeypatch, devices=2, total_gb=80) as gpu:
        gpu.current = 1
        device, _ = resolve_device("cuda")
        hold_to_limit(device, 8 * GB)
        assert gpu.fraction == {1: pytest.approx(0.1)}
        release_limit(device)
        assert gpu.fraction == {1: 1.0}
        assert [args[1] for args in gpu.calls_to("set_per_process_memory_fraction")] == [device, device]


class _Probe:
    """A training step's measured peak as a GPU would report it: proportional to batch x patch voxels, halved by
    gradient checkpointing (the numbers of a small ResEnc, rounded)."""

    def __init__(self, per_voxel=4000):
        self.per_voxel, self.checkpointing, self.calls = per_voxel, False, []

    def __call__(self, network, in_channels, patch, batch_size, device, precision=None):
        self.calls.append((list(patch), batch_size, self.checkpointing))
        assert device.index is not None
        return float(self.per_voxel * batch_size * np.prod(patch) / (2 if self.checkpointing else 1))


def _fit(monkeypatch, gpu, limit_gb, patch=(64, 64, 64), batch=4):
    from sslseg import networks
    from sslseg.finetuning import memory

    probe = _Probe()
    monkeypatch.setattr(memory, "peak_training_memory", probe)
    real_enable = memory.enable_gradient_checkpointing

    def enable(network):
        probe.checkpointing = True
        return real_enable(network)

    monkeypatch.setattr(memory, "enable_gradient_checkpointing", enable)
    network = networks.build_resenc(networks.architecture_kwargs("ResEncT-test"), in_channels=1, num_classes=3)
    log = []
    device, _ = resolve_device("cuda")
    fit = memory.fit_to_memory(network, 1, list(patch), batch, [8, 8, 8], device, limit_gb,
                               types.SimpleNamespace(log=log.append))
    return fit, probe, log


def test_fitting_gives_up_checkpointing_first_then_batch_then_patch(monkeypatch):
    with simulated_cuda(monkeypatch, total_gb=80) as gpu:
        roomy, probe, log = _fit(monkeypatch, gpu, limit_gb=None)  # 90 % of 80 GB: fits as asked
        assert (roomy.patch, roomy.batch_size, roomy.checkpointing) == ([64, 64, 64], 4, False)
        assert roomy.limit == pytest.approx(0.9 * 80 * GB) and not log
        tight, probe, log = _fit(monkeypatch, gpu, limit_gb=2)
        assert tight.checkpointing and tight.estimate <= 0.9 * 2 * GB
        assert log[0] == "GPU memory: enabling gradient checkpointing"
        assert [c[1] for c in probe.calls] == sorted([c[1] for c in probe.calls], reverse=True)  # batch only drops
        with pytest.raises(UserError, match="does not fit in 0.0 GB"):
            _fit(monkeypatch, gpu, limit_gb=0.001)


# --- the loader's CUDA settings and the data-wait clock ---------------------------------------------------------

def test_the_loader_pins_memory_and_starts_workers_on_cuda_only(monkeypatch):
    from sslseg.finetuning.loader import MAX_WORKERS, WORKERS_ENV, BatchFeed, loader_workers

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    sampler = types.SimpleNamespace(batch_for_step=lambda step: None)
    with simulated_cuda(monkeypatch):
        device, _ = resolve_device("auto")
        assert loader_workers(device, cores=16) == min(14, MAX_WORKERS) > 0
        feed = BatchFeed(sampler, device, workers=0)
        assert feed.pin_memory and "training process" in feed.describe()
    cpu_feed = BatchFeed(sampler, torch.device("cpu"))
    assert not cpu_feed.pin_memory and cpu_feed.workers == 0


def test_data_wait_on_cuda_counts_only_the_gaps_the_host_spent_fetching(monkeypatch):
    """Two kinds of GPU idle gap between steps: the host blocked on the next batch (data), and the host busy with
    something else (progress, logging). Only the first is a wait for data."""
    from sslseg.finetuning.loader import DataWait

    with simulated_cuda(monkeypatch):
        clock = DataWait(resolve_device("auto")[0])
        for fetch, other in [(0.0, 0.0), (0.04, 0.0), (0.0, 0.04), (0.0, 0.04)]:
            time.sleep(other)  # host work between steps that is not data
            clock.batch_requested()
            time.sleep(fetch)  # the host blocked on the batch
            clock.step_started()
            time.sleep(0.02)  # the step
            clock.step_ended()
        share = clock.share()
    assert 0.035 < clock.waited < 0.07  # the one fetch, not the 0.08 s of other host work
    assert 0.06 < clock.worked < 0.2 and share == pytest.approx(clock.waited / (clock.waited + clock.worked))


# --- prediction's window batch and where the output is gathered -------------------------------------------------

def test_window_batch_follows_free_memory_and_gather_stays_on_a_large_card(monkeypatch):
    from sslseg import inference, networks

    network = networks.build_resenc(networks.architecture_kwargs("ResEncT-test"), in_channels=1, num_classes=3)
    network._sslseg_window_bytes = {(1, (64, 64, 64)): 100 * 2 ** 20}  # one window's forward pass: 100 MiB
    with simulated_cuda(monkeypatch, total_gb=80) as gpu:
        device, _ = resolve_device("auto")
        gpu.free = 1 * GB
        assert inference.window_batch_size(network, 1, (64, 64, 64), device) == 5  # half of 1 GiB / 100 MiB
        gpu.free = 70 * GB
        assert inference.window_batch_size(network, 1, (64, 64, 64), device) == 15  # WINDOW_MEMORY, 1.5 GiB
        big = 512 ** 3 * 3  # a 512^3 volume's 3-class output: 1.5 GiB in float32
        assert inference.gather_device(device, big) == device
        gpu.free = 4 * GB
        assert inference.gather_device(device, big) == torch.device("cpu")
        assert inference.gather_device(device, 256 ** 3 * 3) == device  # 200 MiB: always on the GPU
        assert all(args[0] == device for args in gpu.calls_to("mem_get_info"))
    assert inference.window_batch_size(network, 1, (64, 64, 64), torch.device("cpu")) == inference.CPU_WINDOW_BATCH


# --- pretraining's start ----------------------------------------------------------------------------------------

def test_pretraining_starts_on_the_resolved_gpu(monkeypatch, tmp_path):
    import SimpleITK as sitk

    from sslseg.pretraining.config import PretrainConfig
    from sslseg.pretraining.trainer import PretrainingRun

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(i).random((20, 20, 20), np.float32)),
                        str(images / f"case{i}.nii.gz"))
    config = PretrainConfig("s3d", images=str(images), out=str(tmp_path / "run"), arch="ResEncT-test",
                            patch=(32, 32, 32), steps=4)
    with simulated_cuda(monkeypatch, devices=2) as gpu:
        gpu.current = 1
        run = PretrainingRun(config)
        run.check_options()
        run.find_images()
        run.choose_device()
        torch.backends.cudnn.benchmark = False
        run.start_processes()
        assert run.device == torch.device("cuda:1")
        assert gpu.calls_to("set_device") == [(torch.device("cuda:1"),)] and gpu.current == 1
        assert torch.backends.cudnn.benchmark
        assert run.precision.enabled and run.precision.dtype == torch.bfloat16 and run.workers == 4


# --- the same code on the CPU: per-window mirroring, and pretraining's loss read only when reported --------------

def test_mirroring_inside_the_window_batch_averages_the_logits_of_all_eight_flips():
    """On a volume of one window, per-window mirroring is the mean of the network's logits over the 8 mirror
    images, flipped back; without TTA the plain network's softmax."""
    from sslseg import inference, networks

    torch.manual_seed(0)
    network = networks.build_resenc(networks.architecture_kwargs("ResEncT-test"), in_channels=1, num_classes=3)
    network.decoder.deep_supervision = False
    network.eval()
    image = np.random.default_rng(0).random((1, 16, 16, 16), np.float32)
    x = torch.from_numpy(image)[None]
    flips = inference.mirror_axes_sets(True)
    with torch.no_grad():
        logits = sum(torch.flip(network(torch.flip(x, f) if f else x), f) if f else network(x) for f in flips)
        expected = torch.softmax(logits / len(flips), 1)[0]
        plain = torch.softmax(network(x), 1)[0]
    device = torch.device("cpu")
    mirrored = inference.window_probabilities(network, image, (16, 16, 16), device, tta=True)
    assert len(flips) == 8 and torch.allclose(mirrored, expected, atol=1e-5)
    assert torch.allclose(inference.window_probabilities(network, image, (16, 16, 16), device), plain, atol=1e-6)
    assert not torch.allclose(mirrored, plain, atol=1e-3)


def test_a_non_finite_pretraining_loss_stops_the_run_before_anything_is_saved(monkeypatch, tmp_path,
                                                                                hippocampus_dir):
    import os

    import sslseg
    from sslseg.pretraining.methods import S3D

    real_loss = S3D.training_loss

    def diverging(self, model, batch):
        loss = real_loss(self, model, batch)
        return loss * float("nan") if batch["step"] >= 3 else loss

    monkeypatch.setattr(S3D, "training_loss", diverging)
    folder = os.path.join(hippocampus_dir, "imagesTr")
    listing = tmp_path / "images.txt"
    listing.write_text("".join(os.path.join(folder, n) + "\n" for n in sorted(os.listdir(folder))[:2]))
    with pytest.raises(RuntimeError, match="the loss became nan by step 4"):
        sslseg.pretrain("s3d", images=str(listing), out=str(tmp_path / "run"), arch="ResEncT-test", steps=8,
                        batch=1, patch=16, device="cpu", save_every=4, report_every=4, val_every=8)
    assert not (tmp_path / "run" / "checkpoint_latest.pth").exists()


def test_a_saved_model_keeps_resencs_shared_weights_shared():
    """model.pt stores each of ResEnc's aliased weights once: on a GPU, ``.cpu()`` per name would copy each."""
    from sslseg import networks
    from sslseg.model_folder import cpu_state_dict

    network = networks.build_resenc(networks.architecture_kwargs("ResEncT-test"), in_channels=1, num_classes=3)
    state = network.state_dict()
    saved = cpu_state_dict(state)
    storages = {t.untyped_storage().data_ptr() for t in saved.values()}
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in state)
    assert len(storages) == len({t.untyped_storage().data_ptr() for t in state.values()}) < len(state)
    fake_gpu = {k: v.clone() if i % 2 else v for i, (k, v) in enumerate(state.items())}  # unshared copies stay apart
    assert len({t.untyped_storage().data_ptr() for t in cpu_state_dict(fake_gpu).values()}) > len(storages)
