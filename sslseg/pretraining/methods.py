"""The pretext tasks, one class each: what the network is wrapped in, how a batch becomes a loss, how the fixed
validation batch is scored and which network is exported. The trainer knows none of them by name: a new method is a
subclass of :class:`PretextTask` in :data:`TASKS` (and its name in ``sslseg.pretraining.config.METHODS``).

- ``s3d``: sparse masked image modelling on the ResEnc U-Net (Wald et al., CVPR 2025, arXiv:2410.23132, after SparK,
  Tian et al., arXiv:2301.03580);
- ``mae``: the same with a dense encoder, i.e. a plain masked autoencoder on a CNN (He et al., arXiv:2111.06377);
- ``volf``: Volume Fusion (Wang et al., arXiv:2306.16925), segmenting the fusion level of every voxel with Dice +
  cross-entropy (0.5 / 0.5).

The forward pass runs under autocast when the device's precision says so (:func:`sslseg.device.mixed_precision`);
losses are computed in float32.

Example::

    task = TASKS["s3d"](config, grid_shape=(2, 2, 2), device=torch.device("cpu"), precision=precision, rank=0)
    model = task.build(network)
    loss = task.training_loss(model, batch)
"""

from __future__ import annotations

import numpy as np
import torch

from sslseg.pretraining.s3d import MaskedImageModel, draw_mask_ratio, expand_mask, masked_l2_loss, random_block_mask
from sslseg.pretraining.volume_fusion import NUM_CLASSES

VALIDATION_SEED_OFFSET = 7919  # the fixed validation batch and masks draw from seed + this (a prime, far from seed)
VALIDATION_MASK_RATIO = 0.75


class PretextTask:
    """Base class: ``plan_name`` goes into the adaptation plan, ``trainer_name`` into the checkpoint."""

    plan_name = ""
    trainer_name = ""
    num_outputs = 1

    def __init__(self, config, grid_shape, device, precision, rank: int):
        self.config = config
        self.grid_shape = tuple(grid_shape)
        self.device = device
        self.precision = precision
        self.rank = rank

    def forward(self, net, *inputs) -> torch.Tensor:
        """The forward pass in mixed precision where enabled; the output as float32 for the loss."""
        with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.enabled):
            output = net(*inputs)
        return output.float()

    def build(self, network):
        raise NotImplementedError

    def training_loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def validation_score(self, model, batch):
        """``(loss, dice)`` on the fixed validation batch; ``dice`` maps class names to Dice ({} when none)."""
        raise NotImplementedError

    def export_network(self, model):
        """The plain ResidualEncoderUNet to save as the backbone."""
        return model

    def plan_extra(self) -> dict:
        return {"volf_variant": None}


class MaskedImageModelling(PretextTask):
    """S3D (``sparse``) and MAE: reconstruct masked blocks; the loss counts masked voxels only."""

    sparse = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        generator = torch.Generator().manual_seed(self.config.seed + VALIDATION_SEED_OFFSET + self.rank)
        self.validation_grid = random_block_mask(self.config.val_batch, self.grid_shape, VALIDATION_MASK_RATIO,
                                                 generator)

    def build(self, network):
        return MaskedImageModel(network, sparse=self.sparse)

    def _loss(self, model, image, grid):
        grid = grid.to(self.device)
        return masked_l2_loss(self.forward(model, image, grid), image, expand_mask(grid, image.shape[2:]))

    def training_loss(self, model, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        # the mask of a step depends on (seed, rank, step) only, so a resumed run draws the same masks
        generator = torch.Generator().manual_seed(step_seed(self.config.seed, self.rank, batch["step"]))
        grid = random_block_mask(image.shape[0], self.grid_shape, draw_mask_ratio(generator), generator)
        return self._loss(model, image, grid)

    def validation_score(self, model, batch):
        return float(self._loss(model, batch["image"].to(self.device), self.validation_grid)), {}

    def export_network(self, model):
        return model.dense_network()


class S3D(MaskedImageModelling):
    plan_name = "S3D"
    trainer_name = "sslseg.S3DTrainer"
    sparse = True


class MAE(MaskedImageModelling):
    plan_name = "MAE"
    trainer_name = "sslseg.MAETrainer"
    sparse = False


class VolumeFusion(PretextTask):
    """Segment the fusion level k of every voxel (K + 1 classes)."""

    plan_name = "VolF"
    trainer_name = "sslseg.VolumeFusionTrainer"
    num_outputs = NUM_CLASSES

    def build(self, network):
        from monai.losses import DiceCELoss

        for layer in network.decoder.seg_layers[:-1]:
            layer.requires_grad_(False)  # unused without deep supervision; DDP needs every trained param used
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)
        return network

    def training_loss(self, model, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True).long()
        return self.loss(self.forward(model, image), label)

    def validation_score(self, model, batch):
        label = batch["label"].to(self.device).long()
        logits = self.forward(model, batch["image"].to(self.device))
        dice = mean_dice(logits.argmax(1, keepdim=True), label, NUM_CLASSES)
        return float(self.loss(logits, label)), {"fusion": dice}

    def plan_extra(self) -> dict:
        return {"volf_variant": self.config.volf_variant}


TASKS = {"s3d": S3D, "mae": MAE, "volf": VolumeFusion}


def step_seed(seed: int, rank: int, step: int) -> int:
    """The mask generator's seed of one step (independent of everything else, so resume is exact)."""
    return int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1, np.uint64)[0] >> 1)


def mean_dice(prediction, label, num_classes: int) -> float:
    """Mean Dice over the fusion classes present in the label or the prediction (a readable VolF score)."""
    scores = []
    for k in range(num_classes):
        p, t = prediction == k, label == k
        total = int(p.sum()) + int(t.sum())
        if total:
            scores.append(2.0 * int((p & t).sum()) / total)
    return sum(scores) / max(len(scores), 1)
