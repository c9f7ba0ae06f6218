"""The training loss: Dice + cross-entropy (MONAI ``DiceCELoss``) with nnU-Net's deep supervision (Isensee et al.,
Nature Methods 2021): every decoder resolution is supervised against the nearest-neighbour downsampled label, with
weights 1, 1/2, 1/4, ... and the lowest resolution ignored."""

from __future__ import annotations


def make_loss_function():
    """Dice + cross-entropy over the foreground classes, Dice computed over the whole batch (nnU-Net's batch Dice)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)


def deep_supervision_weights(count: int) -> list:
    """nnU-Net's weights: 1, 1/2, 1/4, ... with the lowest resolution ignored, normalised to sum 1."""
    weights = [1.0 / (2 ** i) for i in range(count)]
    if count > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def supervised_loss(outputs, target, loss_function, weights):
    """The weighted loss over the decoder's outputs (highest resolution first), or the plain loss of one output."""
    import torch.nn.functional as F

    if not isinstance(outputs, (list, tuple)):
        return loss_function(outputs, target)
    total = 0.0
    for output, weight in zip(outputs, weights):
        if weight == 0:
            continue
        scaled = target if output.shape[2:] == target.shape[2:] else \
            F.interpolate(target.float(), size=output.shape[2:], mode="nearest").long()
        total = total + weight * loss_function(output, scaled)
    return total
