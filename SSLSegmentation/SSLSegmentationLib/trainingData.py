"""Training pairs from the scene -> an nnU-Net dataset folder for the engine (``imagesTr/``, ``labelsTr/``,
``dataset.json``; see the nnU-Net v2 dataset format documentation). Checks come first, so that bad pairs are refused
before anything is written; the nodes are only read.

Example (Slicer's Python console)::

    from SSLSegmentationLib import trainingData
    pairs = trainingData.checkPairs([(getNode("case1"), getNode("case1 seg"))])
    names = trainingData.segmentNamesFor(pairs, None)          # all segments of the first pair
    labels = trainingData.exportDataset(pairs, names, "/tmp/dataset", modality="auto")
"""

from __future__ import annotations

import os

from sslseg.atomic import write_json_atomic
from sslseg.errors import UserError

MODALITIES = ("CT", "MR")


def checkPairs(trainingPairs):
    """``[(volumeNode, segmentationNode), ...]`` as tuples; UserError naming the first pair that is not a scalar
    volume with a segmentation."""
    pairs = [tuple(pair) for pair in (trainingPairs or [])]
    if not pairs:
        raise UserError("no training data: give at least one (volume, segmentation) pair")
    for index, pair in enumerate(pairs, start=1):
        if len(pair) != 2 or pair[0] is None or pair[1] is None:
            raise UserError(f"training pair {index} needs a volume and a segmentation")
        volume, segmentation = pair
        if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise UserError(f"training pair {index}: '{volume.GetName()}' is not a scalar volume")
        if not segmentation.IsA("vtkMRMLSegmentationNode"):
            raise UserError(f"training pair {index}: '{segmentation.GetName()}' is not a segmentation")
    return pairs


def segmentNamesFor(pairs, segmentNames):
    """The segments to learn (default: all segments of the first pair); UserError naming a pair that lacks one."""
    from SSLCommonLib.nodeBridge import segmentIDsByName

    if segmentNames is None:
        segmentation = pairs[0][1].GetSegmentation()
        segmentNames = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    segmentNames = [str(name) for name in segmentNames]
    if not segmentNames:
        raise UserError(f"segmentation '{pairs[0][1].GetName()}' has no segments to learn")
    for index, (volume, segmentation) in enumerate(pairs, start=1):
        try:
            segmentIDsByName(segmentation, segmentNames)
        except UserError as error:
            raise UserError(f"training pair {index} ({volume.GetName()} / {segmentation.GetName()}): "
                            f"{error} Rename the segment in Segment Editor or choose fewer segments.") from None
    return segmentNames


def checkModality(modality, volumeNode):
    """"CT" or "MR"; "auto" guesses from ``volumeNode`` (``nodeBridge.guessModality``)."""
    from SSLCommonLib.nodeBridge import guessModality

    if modality == "auto":
        return guessModality(volumeNode)
    if modality not in MODALITIES:
        raise UserError(f"unknown modality {modality!r}: CT, MR or auto")
    return modality


def exportDataset(pairs, segmentNames, folder, modality="auto"):
    """Write the pairs as an nnU-Net dataset folder; returns the label list ``[{value, name, color, terminology}]``
    for ``sslseg finetune --label-info``: colours from the first pair, terminology (Slicer's coded meaning of a
    segment) from the first pair whose segment has one chosen."""
    from SSLCommonLib import nodeBridge

    modality = checkModality(modality, pairs[0][0])
    os.makedirs(os.path.join(folder, "imagesTr"))
    os.makedirs(os.path.join(folder, "labelsTr"))
    labels = None
    for index, (volume, segmentation) in enumerate(pairs):
        case = f"case_{index:03d}"
        nodeBridge.writeVolume(volume, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        caseLabels = nodeBridge.writeLabels(segmentation, volume, os.path.join(folder, "labelsTr", f"{case}.nii.gz"),
                                            segmentNames)
        labels = labels or caseLabels
        for entry, terminology in zip(labels, nodeBridge.segmentTerminologies(segmentation, segmentNames).values()):
            if terminology and not entry.get("terminology"):
                entry["terminology"] = terminology
    write_json_atomic({
        "name": "Slicer scene export",
        "channel_names": {"0": modality},
        "labels": {"background": 0, **{entry["name"]: entry["value"] for entry in labels}},
        "numTraining": len(pairs),
        "file_ending": ".nii.gz",
    }, os.path.join(folder, "dataset.json"))
    return labels
