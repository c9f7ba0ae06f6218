"""Pretraining building blocks on real tensors and real images: sparse layers, masks, the masked loss, Volume
Fusion samples, the data pre-flight and patch sampling. No training here (see test_pretrain_runs.py)."""

import gzip
import json
import hashlib
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from bad_inputs import assert_user_error, run_cli
from sslseg.errors import UserError
from sslseg.networks import build_network, total_stride, architecture_kwargs
from sslseg.pretraining import volume_fusion
from sslseg.pretraining.data import list_images, preflight, sample_patch
from sslseg.pretraining.s3d import (MASK_RATIO_RANGE, MaskedImageModel, draw_mask_ratio, expand_mask,
                                    masked_l2_loss, random_block_mask)
from sslseg.pretraining.sparse import SparseInstanceNorm3d, sparsify


def _grid(batch=2, shape=(4, 4, 4), ratio=0.7, seed=0):
    return random_block_mask(batch, shape, ratio, torch.Generator().manual_seed(seed))


def test_sparse_instance_norm_uses_visible_voxels_only():
    torch.manual_seed(0)
    norm = torch.nn.Sequential(torch.nn.InstanceNorm3d(3, eps=1e-5, affine=True))
    with torch.no_grad():
        norm[0].weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        norm[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    context = sparsify(norm)
    assert isinstance(norm[0], SparseInstanceNorm3d)
    grid = _grid()
    x = torch.randn(2, 3, 8, 8, 8) * 3 + 1
    visible = expand_mask(grid, x.shape[2:]).expand_as(x)
    with context.masked(grid):
        out = norm(x)
        changed = x.clone()
        changed[~visible] = torch.randn(int((~visible).sum())) * 100 + 50  # only masked voxels change
        out_changed = norm(changed)
    assert torch.equal(out, out_changed)
    assert torch.all(out[~visible] == 0)
    # the reference: statistics of the visible voxels of each sample and channel
    for b in range(2):
        for c in range(3):
            values = x[b, c][visible[b, c]]
            expected = (values - values.mean()) / torch.sqrt(values.var(unbiased=False) + 1e-5)
            expected = expected * norm[0].weight[c] + norm[0].bias[c]
            assert torch.allclose(out[b, c][visible[b, c]], expected, atol=1e-5)


def test_sparse_encoder_keeps_resenc_names_and_ignores_masked_input():
    torch.manual_seed(0)
    reference_keys = list(build_network("ResEncT-test", 1, 1).state_dict())
    model = MaskedImageModel(build_network("ResEncT-test", 1, 1), sparse=True).eval()
    assert list(model.network.state_dict()) == reference_keys
    stem = model.network.encoder.stem.convs[0]
    assert stem.conv is stem.all_modules[0]  # one tensor, not nnssl's stale duplicate
    image = torch.randn(2, 1, 16, 16, 16)
    grid = _grid()
    visible = expand_mask(grid, image.shape[2:])
    with torch.no_grad():
        out = model(image, grid)
        noisy = torch.where(visible, image, torch.randn_like(image) * 10)
        out_noisy = model(noisy, grid)
        with model.context.masked(grid):
            skips = model.network.encoder(image * visible)
    assert torch.equal(out, out_noisy)  # nothing of the masked voxels leaks into the reconstruction
    for skip in skips:  # the sparse encoder's features are exactly zero on masked blocks
        mask = expand_mask(grid, skip.shape[2:])
        assert torch.all(skip.masked_select(~mask.expand_as(skip)) == 0)
    dense = model.dense_network()
    assert type(dense.encoder.stem.convs[0].conv) is torch.nn.Conv3d
    fresh = build_network("ResEncT-test", 1, 1)
    fresh.load_state_dict(dense.state_dict(), strict=True)


def test_dense_mae_variant_runs_the_plain_network_on_masked_input():
    torch.manual_seed(0)
    model = MaskedImageModel(build_network("ResEncT-test", 1, 1), sparse=False).eval()
    assert not hasattr(model, "mask_tokens")
    image, grid = torch.randn(2, 1, 16, 16, 16), _grid()
    with torch.no_grad():
        expected = model.network(image * expand_mask(grid, image.shape[2:]))
        assert torch.equal(model(image, grid), expected)


def test_masked_loss_ignores_visible_voxels():
    grid = _grid()
    target = torch.randn(2, 1, 16, 16, 16)
    prediction = torch.randn(2, 1, 16, 16, 16, requires_grad=True)
    visible = expand_mask(grid, target.shape[2:])
    loss = masked_l2_loss(prediction, target, visible)
    loss.backward()
    with torch.no_grad():
        changed = torch.where(visible, torch.randn_like(prediction) * 100, prediction)
        assert torch.equal(masked_l2_loss(changed, target, visible), loss.detach())
        hidden = ~visible
        expected = ((prediction - target)[hidden] ** 2).mean()
        assert torch.allclose(loss, expected)
    assert torch.all(prediction.grad[visible] == 0)
    assert torch.count_nonzero(prediction.grad[~visible]) == int((~visible).sum())


def test_block_masks_follow_ratio_and_stride():
    generator = torch.Generator().manual_seed(3)
    ratios = [draw_mask_ratio(generator) for _ in range(200)]
    assert MASK_RATIO_RANGE[0] <= min(ratios) and max(ratios) <= MASK_RATIO_RANGE[1]
    assert max(ratios) - min(ratios) > 0.2
    grid = random_block_mask(3, (5, 5, 5), 0.75, generator)
    assert grid.shape == (3, 1, 5, 5, 5) and grid.dtype == torch.bool
    assert all(int((~g).sum()) == round(0.75 * 125) for g in grid)
    stride = total_stride(architecture_kwargs("ResEncL"))
    assert stride == [32, 32, 32]
    voxels = expand_mask(grid, (160, 160, 160))
    block = voxels[0, 0, :32, :32, :32]
    assert bool(block.all()) or not bool(block.any())  # one cell = one block of total-stride voxels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_volume_fusion_pymic_image_is_the_mix_its_labels_describe(hippocampus_dir, tmp_path, seed):
    volumes, _ = preflight(list_images(os.path.join(hippocampus_dir, "imagesTr"))[:1], (1, 1, 1), str(tmp_path))
    array = volumes[0].load()
    image, label, parts = volume_fusion.fuse_pymic(array, (32, 32, 32), np.random.default_rng(seed),
                                                   volumes[0].background, return_parts=True)
    assert image.shape == label.shape == (32, 32, 32)
    assert set(np.unique(label)) <= set(range(volume_fusion.NUM_CLASSES)) and len(np.unique(label)) >= 3
    for part in parts.values():
        assert part.min() >= 0 and part.max() <= 1 and part.std() > 0
    alpha = label / volume_fusion.K
    assert np.allclose(image, alpha * parts["foreground"] + (1 - alpha) * parts["background"], atol=1e-6)
    # where k = 0 the image is the background crop, where k = K the foreground crop
    assert np.array_equal(image[label == 0], parts["background"][label == 0])
    fused = (label > 0).mean()
    assert 0.05 < fused <= 0.7  # 70 % of the grid's blocks; the margin beyond the last whole block stays 0


def test_volume_fusion_paper_variant_takes_the_foreground_from_another_scan(hippocampus_dir, tmp_path):
    volumes, _ = preflight(list_images(os.path.join(hippocampus_dir, "imagesTr"))[:2], (1, 1, 1), str(tmp_path))
    a, b = (v.load() for v in volumes)
    image, label, parts = volume_fusion.fuse_paper(a, b, (32, 32, 32), np.random.default_rng(5),
                                                   return_parts=True)
    alpha = label / volume_fusion.K
    assert np.allclose(image, alpha * parts["foreground"] + (1 - alpha) * parts["background"], atol=1e-6)
    assert (label > 0).any() and (label == 0).any()
    assert not np.allclose(parts["foreground"], parts["background"])


def _write(array, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_preflight_skips_and_reports_unusable_images(hippocampus_dir, tmp_path):
    source = os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    good = folder / "sub" / "good.nii.gz"
    good.write_bytes(open(source, "rb").read())
    raw = gzip.decompress(open(source, "rb").read())
    (folder / "truncated.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _write(np.full((20, 20, 20), 7, np.float32), folder / "empty.nrrd")
    _write(np.random.default_rng(0).normal(size=(4, 30, 30)).astype(np.float32), folder / "tiny.mha")
    _write(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), folder / "thick.nii.gz",
           spacing=(1.0, 1.0, 25.0))
    (folder / "notes.txt").write_text("not an image")
    before = {p: _digest(p) for p in map(str, folder.rglob("*")) if os.path.isfile(p)}

    paths = list_images(folder)
    assert len(paths) == 5 and not any(p.endswith(".txt") for p in paths)
    messages = []
    volumes, skipped = preflight(paths, (1.0, 1.0, 1.0), str(tmp_path / "cache"), log=messages.append, workers=2)
    assert [v.path for v in volumes] == [str(good)]
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert set(reasons) == {"truncated.nii.gz", "empty.nrrd", "tiny.mha", "thick.nii.gz"}
    assert "unreadable" in reasons["truncated.nii.gz"]
    assert "empty" in reasons["empty.nrrd"]
    assert "tiny" in reasons["tiny.mha"]
    assert "spacing" in reasons["thick.nii.gz"]
    assert len(messages) == 4
    cached = volumes[0].load()
    assert abs(float(cached.astype(np.float64).mean())) < 1e-2 and abs(float(cached.astype(np.float64).std()) - 1) < 1e-2
    assert before == {p: _digest(p) for p in before}  # inputs untouched
    # a list file names images relative to itself
    listing = tmp_path / "list.txt"
    listing.write_text("# unlabelled\nimages/sub/good.nii.gz\n")
    assert list_images(listing) == [str(tmp_path / "images" / "sub" / "good.nii.gz")]


def test_preflight_resamples_to_the_target_spacing(hippocampus_dir, tmp_path):
    source = os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")
    shape = sitk.ReadImage(source).GetSize()[::-1]
    volumes, _ = preflight([source], (2.0, 1.0, 0.5), str(tmp_path))
    assert volumes[0].shape == (shape[0] * 2, shape[1], round(shape[2] / 2))


def test_patches_have_the_patch_shape_with_and_without_augmentation(hippocampus_dir, tmp_path):
    volumes, _ = preflight([os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")], (1, 1, 1),
                           str(tmp_path))
    array = volumes[0].load()
    for seed in range(12):  # covers crops larger than the volume (padding), rotation, scaling, mirroring
        patch = sample_patch(array, (48, 64, 48), np.random.default_rng(seed), volumes[0].background)
        assert patch.shape == (48, 64, 48) and patch.dtype == np.float32 and np.isfinite(patch).all()
    plain = sample_patch(array, (16, 16, 16), np.random.default_rng(0), augment=False)
    again = sample_patch(array, (16, 16, 16), np.random.default_rng(0), augment=False)
    assert np.array_equal(plain, again)


def test_patch_must_fit_the_network_stride(tmp_path):
    import sslseg

    with pytest.raises(UserError, match="multiple of the network's total stride"):
        sslseg.pretrain("s3d", images=tmp_path, out=tmp_path / "out", arch="ResEncT-test", patch=(18, 16, 16))
    assert not (tmp_path / "out").exists()


def test_no_usable_image_is_a_clear_error(tmp_path):
    import sslseg

    (tmp_path / "images").mkdir()
    _write(np.zeros((20, 20, 20), np.float32), tmp_path / "images" / "blank.nrrd")
    with pytest.raises(UserError, match="no usable images"):
        sslseg.pretrain("s3d", images=tmp_path / "images", out=tmp_path / "out", arch="ResEncT-test", patch=16,
                        steps=2, device="cpu")
    report = json.loads((tmp_path / "out" / "preflight.json").read_text())
    assert report["usable"] == 0 and "empty" in report["skipped"][0]["reason"]
    assert not (tmp_path / "out" / "checkpoint_final.pth").exists()


def test_command_line_for_a_server():
    from sslseg.pretraining import command_line

    single = command_line("s3d", "/data/my scans", "runs/s3d", steps=1000, patch=160)
    assert single == ("sslseg pretrain --method s3d --images '/data/my scans' --out runs/s3d --arch ResEncL "
                      "--steps 1000 --batch 2 --patch 160 --spacing 1")
    multi = command_line("volf", "/data", "runs/v", processes=8, patch=(64, 128, 128), volf_variant="paper")
    assert multi.startswith("torchrun --standalone --nproc_per_node 8 -m sslseg pretrain --method volf")
    assert "--patch 64 128 128" in multi and multi.endswith("--volf-variant paper")
    from sslseg.cli import build_parser

    parsed = build_parser().parse_args(multi.split(" -m sslseg ")[1].split())
    assert parsed.method == "volf" and parsed.patch == [64, 128, 128] and parsed.volf_variant == "paper"


def test_a_taken_register_name_is_refused_before_training(tmp_path, monkeypatch):
    import sslseg
    from sslseg.backbones import cache

    monkeypatch.setenv("SSLSEG_HOME", str(tmp_path / "home"))
    os.makedirs(cache.entry_dir("taken"))
    open(os.path.join(cache.entry_dir("taken"), "checkpoint_final.pth"), "wb").close()
    cache.write_meta("taken", {"name": "taken", "checkpoint": "checkpoint_final.pth"})
    for name, message in (("taken", "already exists"), ("ResEncL-OpenMind-S3D", "published"), ("../x", "invalid")):
        with pytest.raises(UserError, match=message):
            sslseg.pretrain("s3d", images=tmp_path, out=tmp_path / "out", arch="ResEncT-test", patch=16,
                            register=name)
    assert not (tmp_path / "out").exists()


def test_a_volume_that_resampling_would_blow_up_is_skipped_before_resampling(tmp_path):
    # A 10 mm scan resampled to 1 mm has 1000x its voxels: 64^3 becomes 640^3 = 262,144,000 voxels (over 1 GB as
    # float32), more than MAX_RESAMPLED_VOXELS. The pre-flight must refuse it from the header, in a fresh process
    # whose peak memory shows that nothing was resampled.
    import subprocess
    import sys

    from sslseg.pretraining.data import MAX_RESAMPLED_VOXELS

    coarse = _write(np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32), tmp_path / "coarse.nii.gz",
                    spacing=(10.0, 10.0, 10.0))
    assert 640 ** 3 > MAX_RESAMPLED_VOXELS
    # the peak is read from VmHWM (this process's own memory map): ru_maxrss can carry over the size of the forking
    # parent (pytest) across exec on Linux
    code = ("import json, sys\n"
            "from sslseg.pretraining.data import preflight\n"
            "volumes, skipped = preflight([sys.argv[1]], (1.0, 1.0, 1.0), sys.argv[2])\n"
            "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
            "peak = int(status.split()[0]) / 1024\n"
            "print(json.dumps({'volumes': len(volumes), 'skipped': skipped, 'peak_mb': peak}))\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code, coarse, str(tmp_path / "cache")], capture_output=True,
                          text=True, cwd=repo, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["volumes"] == 0
    reason = report["skipped"][0][1]
    assert "too large" in reason and "262,144,000" in reason and "--spacing" in reason
    assert report["peak_mb"] < 600, report  # resampling alone would have needed over 1000 MB
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_pretrain_reports_an_oversized_volume_in_preflight_json(tmp_path):
    import sslseg

    (tmp_path / "images").mkdir()
    _write(np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32),
           tmp_path / "images" / "coarse.nii.gz", spacing=(10.0, 10.0, 10.0))
    out = tmp_path / "out"
    assert_user_error(lambda: sslseg.pretrain("s3d", images=tmp_path / "images", out=out, arch="ResEncT-test",
                                              patch=16, steps=2, device="cpu"), "no usable images", "preflight.json")
    report = json.loads((out / "preflight.json").read_text())
    assert report["usable"] == 0 and "too large" in report["skipped"][0]["reason"]
    cache = out / "cache"
    assert not (cache.exists() and [name for name in os.listdir(cache) if name.endswith(".npy")])


def test_cpu_runs_get_cpu_sized_defaults_and_gpu_defaults_stay():
    from sslseg.networks import ARCHITECTURES
    from sslseg.pretraining.config import PretrainConfig, with_device_defaults

    bare = PretrainConfig("s3d", images="x", out="y")
    cpu, note = with_device_defaults(bare, "cpu")
    assert (cpu.arch, cpu.patch, cpu.batch) == ("ResEncS-cpu", (64, 64, 64), 2)
    assert "CPU" in note and "--arch ResEncS-cpu" in note and "--patch 64 64 64" in note and "--batch 2" in note
    gpu, note = with_device_defaults(bare, "cuda")
    assert (gpu.arch, gpu.patch, gpu.batch) == ("ResEncL", (160, 160, 160), 2)
    # what the user gave is kept
    given = PretrainConfig("s3d", images="x", out="y", arch="ResEncL", patch=(32, 64, 64), batch=1)
    assert with_device_defaults(given, "cpu") == (given, None)
    # a default patch fits whichever network was asked for
    for arch in ARCHITECTURES:
        chosen, _ = with_device_defaults(PretrainConfig("s3d", images="x", out="y", arch=arch), "cpu")
        stride = total_stride(architecture_kwargs(arch))
        assert chosen.arch == arch and all(p % s == 0 and p >= s for p, s in zip(chosen.patch, stride))


def test_a_cpu_run_trains_with_the_cpu_defaults(tmp_path):
    from sslseg.pretraining.config import PretrainConfig
    from sslseg.pretraining.trainer import PretrainingRun

    run = PretrainingRun(PretrainConfig("s3d", images=str(tmp_path), out=str(tmp_path / "out"), device="cpu"))
    run.check_options()
    run.choose_device()
    assert (run.config.arch, run.config.patch, run.config.batch) == ("ResEncS-cpu", (64, 64, 64), 2)
    assert run.config.signature()["patch"] == [64, 64, 64]  # --resume compares the values actually used
    assert run.task.grid_shape == (8, 8, 8)  # ResEncS-cpu's total stride is 8
    assert run.schedule.lr(0) == pytest.approx(1e-2) and run.schedule.lr(250_000) == 0.0  # PolyLR, no warm-up
    assert not (tmp_path / "out").exists()  # checking wrote nothing


def test_pretrain_command_on_cpu_logs_the_defaults_it_chose(tmp_path):

    (tmp_path / "images").mkdir()
    _write(np.zeros((20, 20, 20), np.float32), tmp_path / "images" / "blank.nrrd")
    result = run_cli("pretrain", "--method", "s3d", "--images", tmp_path / "images", "--out", tmp_path / "out",
                     "--device", "cpu", "--steps", "2", "--progress", "json")
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout holds JSON events only
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any("CPU" in m and "--arch ResEncS-cpu" in m and "--patch 64 64 64" in m and "--batch 2" in m
               for m in logs), logs
    # the failure (every image unusable) is one error event from the shared run_reported, and one line on stderr
    assert events[-1]["event"] == "error" and "no usable images" in events[-1]["message"]
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_resume_refuses_a_tampered_checkpoint_without_unsafe_advice(hippocampus_dir, tmp_path):
    import sslseg

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": Payload()}, out / "checkpoint_latest.pth")
    image = os.path.join(hippocampus_dir, "imagesTr", "hippocampus_006.nii.gz")
    assert_user_error(lambda: sslseg.pretrain("s3d", images=image, out=out, arch="ResEncT-test", patch=16, steps=2,
                                              device="cpu", resume=True), "--resume", "trust")
    assert not (out / "checkpoint_final.pth").exists()


def test_one_list_of_methods_and_each_is_a_pretext_task():
    import sslseg.pretraining
    from sslseg.pretraining.methods import TASKS, PretextTask

    assert tuple(TASKS) == sslseg.pretraining.METHODS == ("s3d", "mae", "volf")
    assert all(issubclass(task, PretextTask) and task.plan_name for task in TASKS.values())
