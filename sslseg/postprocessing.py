"""Post-processing of predicted labels: keep only the largest connected component of a class, where the training
data says that the class is one piece and the validation cases say that it helps. nnU-Net decides the same
post-processing from its cross-validation (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021: "connected component-based postprocessing");
a model trained for minutes on a few cases makes scattered false positives far from the organ, and this removes
them.

- eligible classes: in every training case that holds the class, its largest component (26-connected: thick slices
  still touch diagonally) holds at least ``SINGLE_PIECE_SHARE`` of its voxels;
- chosen: an eligible class whose mean validation Dice with the largest component only is not below the raw one
  (every eligible class when there are no validation cases);
- stored in model.json as ``postprocessing.largest_component`` (label values) and applied by every prediction.

Example::

    labels = keep_largest_components(labels, [1, 2])     # uint8 label values, any shape
"""

from __future__ import annotations

import numpy as np

SINGLE_PIECE_SHARE = 0.9  # of a class's voxels in its largest component, in every training case


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (an empty mask stays empty)."""
    import SimpleITK as sitk

    if not mask.any():
        return mask
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    ordered = sitk.GetArrayFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))
    return ordered == 1


def keep_largest_components(labels: np.ndarray, values) -> np.ndarray:
    """``labels`` with each class in ``values`` reduced to its largest component (the rest set to background)."""
    if not values:
        return labels
    result = labels.copy()
    for value in values:
        mask = labels == value
        result[mask & ~largest_component(mask)] = 0
    return result


def largest_share(mask: np.ndarray) -> float | None:
    """The share of a mask's voxels in its largest component; None for an empty mask."""
    total = int(mask.sum())
    return None if total == 0 else int(largest_component(mask).sum()) / total


def single_piece_classes(label_arrays, num_classes: int) -> list:
    """Class indices (1..num_classes-1) that are one piece in every training label map (class indices)."""
    eligible = []
    for k in range(1, num_classes):
        shares = [largest_share(labels == k) for labels in label_arrays]
        shares = [s for s in shares if s is not None]
        if shares and min(shares) >= SINGLE_PIECE_SHARE:
            eligible.append(k)
    return eligible


def choose_largest_component(labels: list, eligible: list, raw_dice, component_dice) -> tuple:
    """(label values to post-process, reasons): ``labels`` the model's label entries (class k = labels[k-1]);
    ``raw_dice`` / ``component_dice``: mean validation Dice per foreground class without / with the largest
    component only, or None without validation cases."""
    chosen, reasons = [], []
    for k in range(1, len(labels) + 1):
        name, value = labels[k - 1]["name"], int(labels[k - 1]["value"])
        if k not in eligible:
            reasons.append(f"{name}: more than one piece in a training case; all components kept")
        elif raw_dice is None:
            chosen.append(value)
            reasons.append(f"{name}: one piece in every training case; largest component kept (no validation "
                           f"cases to check it)")
        elif component_dice[k - 1] >= raw_dice[k - 1]:
            chosen.append(value)
            reasons.append(f"{name}: largest component kept (validation Dice {raw_dice[k - 1]:.3f} -> "
                           f"{component_dice[k - 1]:.3f})")
        else:
            reasons.append(f"{name}: all components kept (largest only lowers validation Dice "
                           f"{raw_dice[k - 1]:.3f} -> {component_dice[k - 1]:.3f})")
    return chosen, reasons
