"""Which case to correct next: rank unlabelled candidate volumes by the model's uncertainty (the engine's
``sslseg rank``, in a background process) and load the chosen one with its segmentation and uncertainty map.

Ranking by uncertainty is uncertainty sampling, the classic active-learning query (Settles, "Active Learning
Literature Survey", 2009, section 3.1): correcting the case the model knows least about teaches it most per
annotated case. Candidates are scene volumes (written to a work folder, removed when the run ends) or the images of
a folder; the segmentations and uncertainty maps stay in the ranking's output folder until the session ends, so the
chosen candidate loads from there.

Console (through the logic)::

    logic = slicer.util.getModuleLogic("SSLSegmentation")
    ranking = logic.rankCandidates(model, folder="/data/unlabelled", waitForCompletion=True)
    [(c["name"], round(c["score"], 3)) for c in ranking]      # most uncertain first
    volume, segmentation = logic.loadCandidate(ranking[0])    # ready in the Segment Editor
"""

from __future__ import annotations

import os
import re
import shutil

from sslseg import validation
from sslseg.device import parse_device
from sslseg.errors import UserError

RANKING_FILE = "ranking.json"


def _safeName(name):
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-.")[:40] or "volume"


class RankingRun:
    """One ``sslseg rank`` run for the logic: the candidates are checked when it is made, before anything is
    written."""

    def __init__(self, logic, model, volumeNodes, folder, device, tta, outputFolder):
        if (volumeNodes is None) == (folder is None):
            raise UserError("give the candidates either as scene volumes (volumeNodes) or as a folder, not both")
        self.volumeNodes = self._checkVolumes(volumeNodes) if volumeNodes is not None else None
        if folder is not None and not os.path.isdir(os.fspath(folder)):
            raise UserError(f"the candidate folder {folder} does not exist")
        self.folder = os.path.abspath(os.fspath(folder)) if folder is not None else None
        self.logic = logic
        self.modelPath = logic.resolveModel(model)
        logic.modelLabels(self.modelPath)  # a damaged model.json is refused before the volumes go out
        self.device = parse_device(device)
        self.tta = bool(tta)
        self.outputFolder = os.path.abspath(os.fspath(outputFolder)) if outputFolder else None

    @staticmethod
    def _checkVolumes(volumeNodes):
        nodes = list(volumeNodes)
        if not nodes:
            raise UserError("no candidate volumes: choose at least one")
        for index, node in enumerate(nodes, start=1):
            if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
                raise UserError(f"candidate {index} is not a scalar volume")
        if len({node.GetID() for node in nodes}) != len(nodes):
            raise UserError("a candidate volume is given more than once")
        return nodes

    def job(self, onEvent=None, onLog=None, onFinished=None):
        """The background job; its result is the ranking (see ``SSLSegmentationLogic.rankCandidates``)."""
        from SSLCommonLib import nodeBridge

        work = self.logic.makeWorkFolder("rank")
        output = self.outputFolder or self.logic.makeWorkFolder("ranking")
        try:
            self.nodesByInput = {}
            inputs = [self.folder] if self.folder else []
            for index, node in enumerate(self.volumeNodes or []):
                path = os.path.join(work, "input", f"{index:03d}-{_safeName(node.GetName())}_0000.nii.gz")
                self.nodesByInput[os.path.realpath(nodeBridge.writeVolume(node, path))] = node
                inputs.append(path)
            args = ["rank", "--model", self.modelPath, "--input", *inputs, "--output", output,
                    "--device", self.device, "--tta" if self.tta else "--no-tta", "--progress", "json"]
            return self.logic.newJob("ranking", args, workFolder=work, onEvent=onEvent, onLog=onLog,
                                     complete=lambda done: self._ranking(done, output, onLog),
                                     onFinished=lambda job: self._finished(job, output, onFinished))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            if not self.outputFolder:
                shutil.rmtree(output, ignore_errors=True)
            raise

    def _ranking(self, done, output, onLog):
        ranking = done.get("ranking")
        if not isinstance(ranking, list):
            ranking = validation.read_json_file(os.path.join(output, RANKING_FILE), "the ranking", expect=list)
        candidates = []
        for entry in ranking:
            node = self.nodesByInput.get(os.path.realpath(entry.get("input", "")))
            candidates.append({**entry, "volumeNode": node, "model": self.modelPath,
                               "name": node.GetName() if node is not None else entry.get("case")})
        if candidates and onLog:
            first = candidates[0]
            onLog(f"Most uncertain: {first['name']} (uncertainty {first.get('score')})")
        return candidates

    def _finished(self, job, output, onFinished):
        """A failed or cancelled run leaves no ranking folder of ours; a new ranking replaces the last one."""
        if job.status != "succeeded":
            if not self.outputFolder:
                shutil.rmtree(output, ignore_errors=True)
        elif not self.outputFolder:
            previous, self.logic.rankingFolder = getattr(self.logic, "rankingFolder", None), output
            if previous and previous != output:
                shutil.rmtree(previous, ignore_errors=True)
        if onFinished:
            onFinished(job)


def loadCandidate(candidate, labels):
    """``(volumeNode, segmentationNode)`` of a ranked candidate, with its uncertainty map linked (see
    ``resultNodes.uncertaintyOf``); a volume read from a file is removed again when anything fails."""
    import slicer

    from SSLCommonLib import nodeBridge
    from . import resultNodes

    for key in ("segmentation", "uncertainty_map"):
        if not os.path.isfile(candidate.get(key) or ""):
            raise UserError(f"the ranking's {key.replace('_', ' ')} of {candidate.get('name')} is gone; rank again")
    volume, created = candidate.get("volumeNode"), []
    if volume is not None and volume.GetScene() is None:
        raise UserError(f"the candidate volume {candidate.get('name')} was removed from the scene")
    scene = volume.GetScene() if volume is not None else slicer.mrmlScene
    try:
        if volume is None:
            volume = slicer.util.loadVolume(candidate["input"])
            created.append(volume)
        labelArray = resultNodes.readOnGrid(candidate["segmentation"], volume, "segmentation")
        uncertainty = resultNodes.readOnGrid(candidate["uncertainty_map"], volume, "uncertainty map")
        name = f"{volume.GetName()} {os.path.basename(candidate['model'].rstrip('/'))}"
        segmentation = nodeBridge.labelArrayToSegmentationNode(labelArray, labels, volume, name)
        created.append(segmentation)
        summary = {"score": candidate.get("score"), "per_segment": candidate.get("per_segment") or {}}
        resultNodes.linkUncertainty(segmentation, resultNodes.addUncertaintyVolume(
            uncertainty, volume, f"{name} uncertainty", summary))
    except Exception:
        for node in created:  # a failed load leaves the scene as it was
            scene.RemoveNode(node)
        raise
    return volume, segmentation
