"""Validation during fine-tuning: sliding-window prediction of the held-out cases (already preprocessed in memory)
and the Dice score per class, as nnU-Net reports it (Isensee et al., Nature Methods 2021)."""

from __future__ import annotations

import math

import numpy as np


def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> list:
    """Dice per foreground class; a class absent from both counts as 1."""
    scores = []
    for k in range(1, num_classes):
        p, t = prediction == k, target == k
        denominator = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denominator)
    return scores


def validate(network, cases, patch, device, num_classes, overlap=0.25) -> list:
    """Mean Dice per foreground class over ``cases`` (PreparedCase); the network's mode and deep supervision are
    restored afterwards."""
    from sslseg.inference import sliding_window_probabilities

    was_training = network.training
    deep = getattr(network.decoder, "deep_supervision", False)
    network.decoder.deep_supervision = False
    network.eval()
    try:
        scores = []
        for case in cases:
            probabilities = sliding_window_probabilities(network, case.image, patch, device, overlap=overlap)
            scores.append(dice_per_class(np.argmax(probabilities, axis=0), case.label, num_classes))
    finally:
        network.decoder.deep_supervision = deep
        network.train(was_training)
    return np.mean(np.asarray(scores), axis=0).tolist()


def sliding_windows(shape, patch, overlap=0.25) -> int:
    """About how many windows a sliding-window pass over ``shape`` takes (for time estimates)."""
    return max(1, int(np.prod([math.ceil(s / (p * (1.0 - overlap))) for s, p in zip(shape, patch)])))

