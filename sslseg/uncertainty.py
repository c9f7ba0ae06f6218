"""How sure the model is, per voxel and per case: the normalised entropy of the softmax averaged over mirroring
test-time augmentation, and a per-case summary that ranks unlabelled cases for annotation (uncertainty sampling,
Settles, "Active Learning Literature Survey", 2009; the entropy of the TTA mean as in Wang et al., "Aleatoric
uncertainty estimation with test-time augmentation for medical image segmentation", Neurocomputing 2019).

Example::

    labels, uncertainty = segment_array(model, image, geometry, device, tta=True, uncertainty=True)
    summary = summarize(labels, uncertainty, model.labels)
    summary["score"]  # higher: the model knows less about this case
"""

from __future__ import annotations

import math

import numpy as np

# The eps keeps log(0) out of the entropy; p * log(p) -> 0 for p -> 0, so it changes nothing measurable.
EPS = 1e-12
# Voxels this unsure count towards the score even where the model predicts background: a structure it half sees.
DOUBT = 0.5


def entropy(probabilities):
    """Normalised entropy in [0, 1] of class probabilities ``[k, ...]`` (a numpy array or a torch tensor, returned
    as the same kind without the class axis): ``-sum p log p / log k``; 0 = certain, 1 = all classes equally
    likely."""
    classes = probabilities.shape[0]
    if classes < 2:
        return probabilities[0] * 0
    if isinstance(probabilities, np.ndarray):
        p = np.clip(probabilities.astype(np.float32, copy=False), EPS, 1.0)
        value = -(p * np.log(p)).sum(axis=0) / math.log(classes)
        return np.clip(value, 0.0, 1.0).astype(np.float32)
    p = probabilities.float().clamp(EPS, 1.0)
    return (-(p * p.log()).sum(dim=0) / math.log(classes)).clamp(0.0, 1.0)


def _dilated(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one voxel along each axis (6-connected): the predicted structure and its boundary."""
    grown = mask.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            moved = np.roll(mask, shift, axis=axis)
            edge = [slice(None)] * mask.ndim
            edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            moved[tuple(edge)] = False  # no wrap-around
            grown |= moved
    return grown


def _mean(values: np.ndarray):
    return float(values.mean()) if values.size else None


def summarize(labels: np.ndarray, uncertainty: np.ndarray, labels_meta) -> dict:
    """Per-case summary of an uncertainty map: ``mean`` over all voxels, ``per_segment`` {name: mean over the
    voxels predicted as that segment, None when it is absent}, and ``score`` for ranking: the mean over the
    predicted foreground grown by one voxel (its boundary, where errors live) together with every voxel whose
    uncertainty reaches 0.5 (a structure the model half sees); 0 when the model is sure of background
    everywhere."""
    labels = np.asarray(labels)
    uncertainty = np.asarray(uncertainty, np.float32)
    if labels.shape != uncertainty.shape:
        raise ValueError(f"labels {labels.shape} and uncertainty {uncertainty.shape} differ in shape")
    per_segment = {str(entry["name"]): _mean(uncertainty[labels == int(entry["value"])]) for entry in labels_meta}
    region = _dilated(labels != 0) | (uncertainty >= DOUBT)
    return {"mean": float(uncertainty.mean()) if uncertainty.size else 0.0,
            "per_segment": per_segment,
            "score": _mean(uncertainty[region]) or 0.0}
