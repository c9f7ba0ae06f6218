"""Unlabelled images in fine-tuning (``sslseg finetune --unlabelled U``): self-training with pseudo-labels.

Within the run's total time (``--time-limit``, else the preset's), the flow is:

1. every unlabelled image read and checked before any work (readable, finite, the labelled data's channel count,
   none of the labelled images again, no two cases of one name);
2. round 1: the labelled cases alone, for ``FIRST_SHARE`` of the time (the usual recipe, its own plan);
3. the round-1 model segments the unlabelled images through the product's own prediction path
   (``sslseg.inference.predict`` with uncertainty maps); the ``KEEP_SHARE`` most confident non-empty ones (lowest
   uncertainty score, ``sslseg.uncertainty.summarize``) become pseudo-labelled cases;
4. round 2: continues from the round-1 model (every weight, its plan: ``init_model``) on the labelled and the
   pseudo-labelled cases for the rest of the time; validation, if any, stays on the labelled cases of round 1.

Self-training after Lee, "Pseudo-Label", ICML workshop 2013, and Xie et al., "Self-training with Noisy Student",
CVPR 2020 (the student trains with augmentation on the teacher's confident labels). Chosen over a short
self-supervised pretraining by measurement at equal total time (docs/benchmarks.md). With fewer than
``MIN_UNLABELLED`` usable images the run says so and trains on the labelled cases only.

The model.json of the result records it all under ``"unlabelled"`` (images given, used, method, seconds per phase).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

from sslseg.errors import UserError
from sslseg.progress import Reporter

# Fewer unlabelled images than this: pseudo-labelling is skipped (its prediction and second warm-up cost more than
# a handful of extra cases gives back) and every second goes to the labelled cases.
MIN_UNLABELLED = 5
FIRST_SHARE = 0.5  # share of the total time for round 1 (labelled cases alone)
KEEP_SHARE = 0.8  # the most confident share of the non-empty pseudo-labels kept for round 2
# At most this share of the total time goes to segmenting unlabelled images (measured: 60 hippocampus images took
# 42 % of a 600 s run on a busy CPU, leaving round 2 too few steps); images beyond it are left out.
PSEUDO_SHARE = 0.15
PREDICT_CHUNK = 4  # images per prediction call: the time limit is checked between calls
METHOD = "pseudo-labels (self-training)"


class PhaseReporter(Reporter):
    """The run's reporter for one phase: the same streams and mode, one start event (the first), no ``done`` (the
    run ends once)."""

    def __init__(self, parent: Reporter, phase: str):
        super().__init__(parent.mode, parent.stream, parent.error_stream, prefix=f"{parent.prefix}:{phase}")
        self.started_once = False

    def start(self, total_steps: int, device: str, note: str = "", **fields):
        if not self.started_once:
            super().start(total_steps, device, note, **fields)
        self.started_once = True

    def done(self, **fields):
        pass


# --- checking the unlabelled images ------------------------------------------------------------------------------

def list_unlabelled(source) -> list:
    """The image files of ``--unlabelled``: a folder (recursively) or a list file (one path a line)."""
    from sslseg.pretraining.data import list_images

    if not os.path.exists(os.fspath(source)):
        raise UserError(f"--unlabelled: {source} not found (give a folder of images or a list file)")
    try:
        return list_images(source)
    except UserError as error:
        raise UserError(f"--unlabelled: {str(error).replace('--images: ', '')}") from None


def check_unlabelled(paths, dataset, in_channels: int) -> list:
    """Read every unlabelled image once (readable, finite, ``in_channels`` channels) and refuse one that is also a
    labelled image or shares a case name; returns the case names. One UserError line otherwise."""
    from sslseg.datasets import dataset_from_lists
    from sslseg.inference import case_name
    from sslseg.preprocessing import read_channels

    labelled = {os.path.realpath(p): case.case_id for case in dataset.cases for p in case.images}
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"--unlabelled: {path} not found")
        if os.path.realpath(path) in labelled:
            raise UserError(f"--unlabelled: {path} is the image of the labelled case "
                            f"{labelled[os.path.realpath(path)]}; give each scan once")
    names = [case.case_id for case in dataset_from_lists(paths).cases]  # refuses two cases of one name
    outputs = {}
    for path in paths:  # the pseudo-label files are named as predictions are
        other = outputs.setdefault(case_name(path).casefold(), path)
        if other != path:
            raise UserError(f"--unlabelled: {other} and {path} would share a name; rename one")
    taken = {case.case_id.casefold() for case in dataset.cases}
    for name, path in zip(names, paths):
        if name.casefold() in taken:
            raise UserError(f"--unlabelled: {path} has the name of a labelled case ({name}); rename one")
        try:
            read_channels([path], name, in_channels)
        except UserError as error:
            raise UserError(f"--unlabelled: {error}") from None
    return names


def labelled_channels(dataset, expected) -> int:
    """The labelled data's channel count (read from the first case when the dataset does not say)."""
    from sslseg.preprocessing import read_channels

    if expected:
        return int(expected)
    return read_channels(dataset.cases[0].images, dataset.cases[0].case_id)[0].shape[0]


# --- the flow ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Budget:
    """How much each round gets: seconds (``total`` set) or steps (``steps`` set, no time limit)."""
    total: float | None
    steps: int | None

    def first(self) -> dict:
        if self.total:
            return {"time_limit": FIRST_SHARE * self.total}
        return {"steps": max(1, int(round(FIRST_SHARE * self.steps)))}

    def second(self, started: float, first_steps: int) -> dict:
        if self.total:  # whatever round 1 and the pseudo-labels left (at least a tenth, so round 2 can run)
            return {"time_limit": max(0.1 * self.total, self.total - (time.monotonic() - started))}
        return {"steps": max(1, self.steps - first_steps)}


def run_budget(request, preset) -> Budget:
    """The total the two rounds share: the time limit (option, else the preset's), else the step count."""
    if request.time_limit is not None and float(request.time_limit) > 0:
        return Budget(float(request.time_limit), None)
    if request.time_limit is None and request.steps is None and preset.time_limit:
        return Budget(float(preset.time_limit), None)
    return Budget(None, int(request.steps or preset.steps))


def finetune_with_unlabelled(request, train) -> str:
    """``sslseg.finetune(..., unlabelled=U)``: see the module's docstring; ``train(request)`` runs one fine-tuning
    (the trainer's, passed in so that this module does not import it back). Returns the model folder."""
    from sslseg.device import resolve_device
    from sslseg.finetuning import data as training_data
    from sslseg.finetuning.options import FinetuneOptions, check_finetune_options
    from sslseg.presets import default_preset, get_preset

    started = time.monotonic()
    reporter = request.progress if isinstance(request.progress, Reporter) else Reporter(request.progress)
    if request.init_model is not None:
        raise UserError("--unlabelled cannot be combined with --init-model yet")
    checked = [field.name for field in dataclasses.fields(FinetuneOptions) if field.name != "pack"]
    options = check_finetune_options(**{name: getattr(request, name) for name in checked}, pack=None)
    dataset, expected = training_data.load_training_data(request.data, request.images, request.labels,
                                                         request.label_names, request.train_case_ids,
                                                         request.val_case_ids)
    paths = list_unlabelled(request.unlabelled)
    reporter.log(f"checking {len(paths)} unlabelled image(s)")
    names = check_unlabelled(paths, dataset, labelled_channels(dataset, expected))
    plain = dataclasses.replace(request, unlabelled=None, progress=PhaseReporter(reporter, "labelled"))
    if len(paths) < MIN_UNLABELLED:
        reporter.log(f"only {len(paths)} unlabelled image(s), fewer than {MIN_UNLABELLED}: too few to pay for "
                     f"pseudo-labelling; training on the labelled cases only")
        path = record(train(plain), {"images": len(paths), "used": 0, "method": None, "seconds": {
            "total": round(time.monotonic() - started, 1)}, "reason": f"fewer than {MIN_UNLABELLED} images"})
    else:
        preset = get_preset(options.preset or default_preset(resolve_device(options.device)[0].type))
        os.makedirs(os.path.dirname(options.out), exist_ok=True)
        work = tempfile.mkdtemp(prefix=".sslseg-unlabelled-", dir=os.path.dirname(options.out))
        try:
            path = self_train(plain, dataset, list(zip(names, paths)), run_budget(plain, preset), work, reporter,
                              started, train)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    reporter.done(model=path)
    return path


def self_train(request, dataset, unlabelled, budget, work, reporter, started, train) -> str:
    """Round 1 on the labelled cases, pseudo-labels, round 2 on both (module docstring)."""
    from sslseg.model_folder import read_model_meta

    seconds = {}
    reporter.log(f"{len(unlabelled)} unlabelled image(s): round 1 on the labelled cases "
                 f"({_share_text(budget)}), then pseudo-labels, then round 2 on both")
    first = dataclasses.replace(request, out=os.path.join(work, "round1"), progress=PhaseReporter(reporter, "round1"),
                                **budget.first())
    began = time.monotonic()
    first_path = train(first)
    seconds["round1"] = round(time.monotonic() - began, 1)
    first_meta = read_model_meta(first_path)
    began = time.monotonic()
    kept, scores = pseudo_label(first_path, unlabelled, os.path.join(work, "pseudo"), request.device, reporter,
                                budget.total and PSEUDO_SHARE * budget.total, request.seed)
    seconds["pseudo_labels"] = round(time.monotonic() - began, 1)
    second = second_request(request, dataset, first_path, first_meta, kept, reporter,
                            **budget.second(started, first_meta["recipe"]["steps_run"]))
    began = time.monotonic()
    path = train(second)
    seconds["round2"] = round(time.monotonic() - began, 1)
    seconds["total"] = round(time.monotonic() - started, 1)
    reporter.log(f"unlabelled images: {len(kept)} of {len(unlabelled)} pseudo-labelled cases used; seconds: "
                 + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    summary = {"images": len(unlabelled), "segmented": len(scores), "used": len(kept), "method": METHOD,
               "first_share": FIRST_SHARE, "keep_share": KEEP_SHARE, "pseudo_share": PSEUDO_SHARE,
               "used_cases": [name for name, _, _ in kept], "seconds": seconds,
               "round1": {"steps": first_meta["recipe"]["steps_run"], "validation_mean_dice":
                          first_meta["validation"]["mean_dice"]}, "uncertainty_scores": scores}
    return record(path, summary, {"channel_names": first_meta["channel_names"]}, dataset)


def _share_text(budget) -> str:
    if budget.total:
        return f"{FIRST_SHARE * budget.total:.0f} of {budget.total:.0f} s"
    return f"{FIRST_SHARE:.0%} of {budget.steps} steps"


def pseudo_label(model_path, unlabelled, folder, device, reporter, seconds=None, seed=0):
    """Segment the unlabelled images (in a seeded order, a few at a time, until ``seconds`` would be passed) with the
    round-1 model; returns ([(name, image, label file)] of the kept ones, {name: uncertainty score}). Kept: the
    ``KEEP_SHARE`` most confident of those with any foreground."""
    import numpy as np

    from sslseg.device import resolve_device
    from sslseg.inference import case_name, predict
    from sslseg.model_folder import load_model

    started = time.monotonic()
    model = load_model(model_path)
    cuda = resolve_device(device)[0].type == "cuda"
    order = [unlabelled[i] for i in np.random.default_rng(seed).permutation(len(unlabelled))]
    summaries, phase = {}, PhaseReporter(reporter, "pseudo-labels")
    for index in range(0, len(order), PREDICT_CHUNK):
        chunk = order[index:index + PREDICT_CHUNK]
        # mirroring costs 8x on a CPU: the plain softmax's entropy ranks the cases there
        written = predict(model, [path for _, path in chunk], folder, device=device, tta=cuda, uncertainty=True,
                          progress=phase)
        summaries.update({name: written.uncertainty[case_name(path)] for name, path in chunk})
        per_image = (time.monotonic() - started) / len(summaries)
        if seconds is not None and time.monotonic() - started + per_image * PREDICT_CHUNK > seconds:
            break
    scores = {name: round(float(s["score"]), 4) for name, s in summaries.items()}
    found = [(name, path) for name, path in order[:len(summaries)]
             if any(v is not None for v in summaries[name]["per_segment"].values())]
    found.sort(key=lambda item: scores[item[0]])
    keep = found[:max(1, int(round(KEEP_SHARE * len(found))))] if found else []
    limit = f" (all the {seconds:.0f} s allowed)" if len(summaries) < len(unlabelled) else ""
    reporter.log(f"pseudo-labels: {len(summaries)} of {len(unlabelled)} image(s) segmented{limit}, {len(found)} with "
                 f"foreground, the {len(keep)} most confident kept (uncertainty score <= "
                 f"{scores[keep[-1][0]] if keep else 0:.3f})")
    return [(name, path, os.path.join(folder, f"{case_name(path)}.nii.gz")) for name, path in keep], scores


def second_request(request, dataset, first_path, first_meta, kept, reporter, **budget):
    """Round 2: from the round-1 model, on the labelled and the kept pseudo-labelled cases; validation (if any) on
    round 1's labelled validation cases."""
    images = [list(case.images) for case in dataset.cases] + [[image] for _, image, _ in kept]
    labels = [case.label for case in dataset.cases] + [label for _, _, label in kept]
    val_ids = list(first_meta["training"]["val_cases"])
    return dataclasses.replace(
        request, backbone="none", init_model=first_path, data=None, images=images, labels=labels, label_names=None,
        label_info=[{k: v for k, v in label.items()} for label in first_meta["labels"]], val_case_ids=val_ids,
        val_cases=None, train_case_ids=None, arch=None, patch_size=None, progress=PhaseReporter(reporter, "round2"),
        steps=budget.get("steps", request.steps), time_limit=budget.get("time_limit", request.time_limit))


def record(path, summary, overrides=None, dataset=None) -> str:
    """``summary`` into the model's model.json as ``"unlabelled"``; round 2's stand-ins for the user's data
    (channel names, the data folder) replaced by the originals and the deleted round-1 model no longer named."""
    from sslseg.atomic import write_json_atomic
    from sslseg.model_folder import MODEL_JSON, read_model_meta

    meta = read_model_meta(path)
    meta.update(overrides or {})
    meta["unlabelled"] = summary
    if dataset is not None:
        meta.pop("initial_model", None)
        meta["training"]["data"] = dataset.root
    write_json_atomic(meta, os.path.join(path, MODEL_JSON), indent=1)
    return path
