"""Patches and their augmentation (sslseg.finetuning.data.PatchSampler): rotated patches without empty corners,
nnU-Net's foreground oversampling count, batches that depend on the seed and the step only (across samplers and a
pickle round-trip), and in-plane rotation for thick-slice data. Real numpy/MONAI/torch on small synthetic cases."""

import pickle

import numpy as np
import pytest
import torch

from sslseg.finetuning.data import PreparedCase, PatchSampler

ROTATE_ONLY = {"rotate_deg": 45.0, "rotate_p": 1.0, "scale": [1.0, 1.0], "scale_p": 0.0, "mirror_p": 0.0,
               "intensity_p": 0.0}
EVERYTHING = {"rotate_deg": 30.0, "rotate_p": 0.5, "scale": [0.7, 1.4], "scale_p": 0.5, "mirror_p": 0.5,
              "intensity_p": 0.5}


def case_with(image, label, spacing=(1.0, 1.0, 1.0), foreground=None):
    """A PreparedCase; ``foreground``: the voxels foreground-centred patches may be centred on (default: every
    labelled voxel)."""
    where = np.flatnonzero(label.ravel() == 1) if foreground is None else foreground
    return PreparedCase("case", image[None].astype(np.float32), label.astype(np.uint8), [where], tuple(spacing))


def central_voxels(shape, margin):
    """Flat indices of the voxels at least ``margin`` voxels from every face."""
    mask = np.zeros(shape, bool)
    mask[tuple(slice(m, s - m) for s, m in zip(shape, margin))] = True
    return np.flatnonzero(mask.ravel())


def test_rotated_patches_have_no_empty_corners():
    shape, patch = (64, 96, 96), [16, 32, 32]
    ramp = np.broadcast_to(np.linspace(10.0, 20.0, shape[1])[None, :, None], shape)  # never 0 inside the case
    label = np.ones(shape, np.uint8)  # foreground everywhere
    # patches centred well inside the case: a turned patch needs a larger region, which the case holds
    case = case_with(ramp, label, foreground=central_voxels(shape, (24, 36, 36)))
    sampler = PatchSampler([case], patch, batch_size=4, oversampling=1.0, augment=ROTATE_ONLY, seed=3)
    turned = 0
    for step in range(6):
        images, labels = sampler.batch_for_step(step)
        assert labels.min() == 1, "a rotated patch has background corners"
        assert images.min() >= 10.0 - 1e-4 and images.max() <= 20.0 + 1e-4, "a rotated patch has padded corners"
        # the patches are turned: the ramp along y no longer runs along y alone
        turned += int(sum(float(image[0].std(dim=(0, 1)).max()) > 0.05 for image in images))
    assert turned >= 20


def test_the_last_third_of_each_batch_is_foreground():
    shape, patch = (48, 64, 64), [16, 16, 16]
    label = np.zeros(shape, np.uint8)
    label[30:32, 50:52, 50:52] = 1  # a tiny structure in a corner: random patches rarely see it
    case = case_with(np.zeros(shape), label)
    for batch, forced in ((2, 1), (3, 1), (6, 2)):
        sampler = PatchSampler([case], patch, batch, oversampling=0.33, augment={}, seed=0)
        seen = np.zeros(batch)
        for step in range(40):
            _, labels = sampler.batch_for_step(step)
            seen += (labels.flatten(1).max(dim=1).values == 1).numpy()
        assert (seen[batch - forced:] == 40).all(), "a forced sample missed the foreground"
        assert (seen[:batch - forced] < 0.3 * 40).all(), "more samples than nnU-Net's rule are forced"
    # no oversampling: none forced
    sampler = PatchSampler([case], patch, 2, oversampling=0.0, augment={}, seed=0)
    assert sum(int(sampler.batch_for_step(s)[1].max()) for s in range(20)) < 8


def test_batches_depend_on_seed_and_step_only():
    rng = np.random.default_rng(0)
    shape = (40, 48, 40)
    label = (rng.random(shape) < 0.2).astype(np.uint8)
    cases = [case_with(rng.normal(size=shape), label), case_with(rng.normal(size=shape), 1 - label)]

    def make(seed=7):
        return PatchSampler(cases, [16, 24, 16], 2, 0.33, EVERYTHING, seed)

    first, second = make(), make()
    second.batch_for_step(11)  # another order of use changes nothing
    copy = pickle.loads(pickle.dumps(first))
    for step in (0, 5, 11):
        a, b, c = first.batch_for_step(step), second.batch_for_step(step), copy.batch_for_step(step)
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    assert not torch.equal(first.batch_for_step(0)[0], first.batch_for_step(1)[0])
    assert not torch.equal(first.batch_for_step(0)[0], make(seed=8).batch_for_step(0)[0])
    # next_batch walks the steps
    walker = make()
    assert torch.equal(walker.next_batch()[0], first.batch_for_step(0)[0])
    assert torch.equal(walker.next_batch()[0], first.batch_for_step(1)[0])
    # plain tensors (a MetaTensor slows every training step), in the training step's layout
    images, labels = first.batch_for_step(0)
    assert type(images) is torch.Tensor and type(labels) is torch.Tensor
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert tuple(images.shape) == (2, 1, 16, 24, 16) and tuple(labels.shape) == (2, 1, 16, 24, 16)


@pytest.mark.parametrize("spacing, in_plane", [((5.0, 1.0, 1.0), True), ((1.0, 1.0, 1.0), False)])
def test_thick_slice_data_turn_in_plane_only(spacing, in_plane):
    shape, patch = (12, 96, 96), [4, 32, 32]
    slices = np.broadcast_to(np.arange(shape[0], dtype=float)[:, None, None], shape)  # each slice its own value
    label = np.ones(shape, np.uint8)
    case = case_with(slices + 1.0, label, spacing, foreground=central_voxels(shape, (4, 40, 40)))
    augment = dict(ROTATE_ONLY, scale=[0.7, 1.4], scale_p=1.0)
    sampler = PatchSampler([case], patch, 4, 1.0, augment, seed=1)
    assert sampler.rotation_axis == (0 if in_plane else None)
    mixed = 0
    for step in range(5):
        images, _ = sampler.batch_for_step(step)
        # in-plane: every output slice is one input slice (whole numbers); in 3D slices mix
        per_slice = images[:, 0].flatten(2).std(dim=2)
        mixed += int((per_slice > 1e-3).sum())
    assert (mixed == 0) == in_plane
