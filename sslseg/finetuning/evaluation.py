"""Validation during fine-tuning: sliding-window prediction of the held-out cases (already preprocessed in memory)
and the Dice score per class, as nnU-Net reports it (Isensee et al., Nature Methods 2021), with and without the
largest-component post-processing that the validation decides (sslseg.postprocessing)."""

from __future__ import annotations

import numpy as np

VALIDATION_OVERLAP = 0.25  # less than prediction's 0.5: validation runs often and only ranks weights


def dice_per_class(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> list:
    """Dice per foreground class; a class absent from both counts as 1."""
    scores = []
    for k in range(1, num_classes):
        p, t = prediction == k, target == k
        denominator = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denominator == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denominator)
    return scores


def validate(network, cases, patch, device, num_classes, overlap=VALIDATION_OVERLAP, component_classes=()) -> tuple:
    """(mean Dice per foreground class over ``cases`` (PreparedCase), the same with only the largest component of
    each class in ``component_classes`` kept (the raw Dice for the others): ``sslseg.postprocessing``). The
    network's mode and deep supervision are restored afterwards."""
    from sslseg.inference import CPU_WINDOW_BATCH, window_probabilities
    from sslseg.postprocessing import keep_largest_components

    was_training = network.training
    deep = getattr(network.decoder, "deep_supervision", False)
    network.decoder.deep_supervision = False
    network.eval()
    try:
        raw, components = [], []
        for case in cases:
            # the argmax on the device: only the label map comes back to the host, not every class's probability
            probabilities = window_probabilities(network, case.image, patch, device, overlap=overlap,
                                                 sw_batch_size=CPU_WINDOW_BATCH)
            predicted = probabilities.argmax(0).cpu().numpy()
            raw.append(dice_per_class(predicted, case.label, num_classes))
            reduced = keep_largest_components(predicted, list(component_classes))
            components.append(dice_per_class(reduced, case.label, num_classes) if component_classes else raw[-1])
    finally:
        network.decoder.deep_supervision = deep
        network.train(was_training)
    return np.mean(np.asarray(raw), axis=0).tolist(), np.mean(np.asarray(components), axis=0).tolist()
