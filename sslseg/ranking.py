"""Which case should be annotated next: segment every candidate volume with its voxel-wise uncertainty and order the
candidates by the model's uncertainty, most uncertain first.

This is uncertainty sampling, the classic active-learning query strategy (Settles, "Active Learning Literature
Survey", 2009, section 3.1; MONAI Label's "next sample" strategies do the same for interactive annotation): correcting
the case the model knows least about teaches it most per annotated case. Each candidate's score is the summary that
``sslseg.inference.predict(..., uncertainty=True)`` computes from the entropy of the softmax averaged over the
mirrorings (``sslseg.uncertainty``).

Outputs in the folder ``output``: per case ``<case>.nii.gz`` (the segmentation), ``<case>_uncertainty.nii.gz`` (the
uncertainty map on the input's grid) and, with ``seg_nrrd``, ``<case>.seg.nrrd``; and ``ranking.json``, a list of
``{case, input, segmentation, uncertainty_map, score, per_segment}`` (plus ``seg_nrrd`` when written), most
uncertain first.

Example::

    from sslseg.ranking import rank_cases
    ranking = rank_cases("models/hippocampus", "unlabelled/", "ranked/")
    ranking[0]["case"], ranking[0]["score"]     # the case to correct next
"""

from __future__ import annotations

import math
import os

from sslseg.errors import UserError
from sslseg.progress import MODES, Reporter
from sslseg.validation import one_of

RANKING_FILE = "ranking.json"


class _HeldDone(Reporter):
    """Passes every event of a prediction run through to ``reporter`` except ``done``: the ranking's own ``done``
    event, carrying the ranking, is the run's last (and only) one."""

    def __init__(self, reporter: Reporter):
        super().__init__(reporter.mode, reporter.stream, reporter.error_stream, reporter.prefix)

    def done(self, **fields):
        pass


def _check_ranking_target(output) -> str:
    """The path of ranking.json in ``output``, refused before any work when it cannot be written there."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output).strip():
        raise UserError(f"give the output folder (--output) as a path (got {output!r:.60})")
    target = os.path.join(os.fspath(output), RANKING_FILE)
    if os.path.isdir(target):
        raise UserError(f"the output {target} is an existing folder; move it or choose another output folder "
                        "(--output)")
    return target


def _score(summary) -> float | None:
    """A case's score as a finite float, or None (ranked last) when the summary has none."""
    score = (summary or {}).get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        return None
    return float(score)


def order_by_uncertainty(entries: list) -> list:
    """Most uncertain first; cases without a score last; ties in case-name order, so that the order is stable."""
    return sorted(entries, key=lambda e: (e["score"] is None, -(e["score"] or 0.0), e["case"]))


def _entry(plan, summary: dict) -> dict:
    """One ranking entry from a case's output plan and its uncertainty summary (``sslseg.uncertainty.summarize``)."""
    entry = {"case": plan.name, "input": os.path.abspath(plan.source),
             "segmentation": os.path.abspath(plan.targets[0]),
             "uncertainty_map": os.path.abspath(summary.get("file") or plan.uncertainty_target),
             "score": _score(summary), "per_segment": summary.get("per_segment") or {}}
    if plan.seg_target:
        entry["seg_nrrd"] = os.path.abspath(plan.seg_target)
    return entry


def rank_cases(model, inputs, output, device: str = "auto", tta: bool | None = None, overlap: float = 0.5,
               sw_batch_size: int | None = None, seg_nrrd: bool = False, output_format: str = "nii.gz",
               progress="none") -> list:
    """Segment every candidate in ``inputs`` (files, folders, or a list) with ``model`` and its uncertainty, and
    return them ordered most uncertain first (the list also written to ``output/ranking.json``). ``tta`` defaults
    to on: the uncertainty is measured over the mirrorings. Bad input is refused before any work, by the same checks
    as ``sslseg.inference.predict``, which does the segmenting."""
    from sslseg.atomic import write_json_atomic
    from sslseg.inference import collect_inputs, plan_outputs, predict

    if not isinstance(progress, Reporter):
        one_of("progress (--progress)", progress, MODES)
    reporter = progress if isinstance(progress, Reporter) else Reporter(progress, prefix="rank")
    target = _check_ranking_target(output)
    held = _HeldDone(reporter)
    written = predict(model, inputs, output, device=device, overlap=overlap, tta=tta, seg_nrrd=seg_nrrd,
                      output_format=output_format, progress=held, sw_batch_size=sw_batch_size, uncertainty=True)
    # the same plan predict followed (its naming rules), to pair each input with its files and summary
    plans = plan_outputs(collect_inputs(inputs), output, output_format, seg_nrrd, uncertainty=True)
    ranking = order_by_uncertainty([_entry(plan, written.uncertainty.get(plan.name) or {}) for plan in plans])
    write_json_atomic(ranking, target)
    reporter.done(ranking=ranking, ranking_file=os.path.abspath(target),
                  outputs=[os.path.abspath(p) for p in [*written, target]])
    return ranking


def ranking_table(ranking: list) -> str:
    """The ranking as a text table: rank, score, the per-segment scores, the case."""
    names = list(dict.fromkeys(name for entry in ranking for name in entry.get("per_segment") or {}))
    header = ["rank", "score", *names, "case"]
    rows = [[str(index), _number(entry["score"]),
             *(_number((entry.get("per_segment") or {}).get(name)) for name in names), entry["case"]]
            for index, entry in enumerate(ranking, start=1)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _number(value) -> str:
    """4 decimals, or "-" where there is no number (a segment the model did not predict in that case)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
