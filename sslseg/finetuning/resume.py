"""Resuming an interrupted fine-tuning run (``sslseg finetune --resume``), as nnU-Net's ``--c`` does for training
(Isensee et al., Nature Methods 2021).

While a run trains, its whole state is saved every ``checkpoint_every`` seconds (default ``CHECKPOINT_EVERY``) to
one hidden file beside the output folder, ``<parent>/.<name>.resume.pth``, written atomically
(``sslseg.atomic.torch_save_atomic``: a kill while saving leaves the previous checkpoint whole): the step, the
schedule (a time limit may have refitted it), the weights, the optimiser and grad-scaler state, the RNG states, the
best weights kept so far with the validation history, and the time already spent. Batches are built from the seed
and the step alone (``PatchSampler.batch_for_step``), so a resumed run sees the batches the uninterrupted run would
have seen: with an explicit ``--steps`` it ends with the same step count and schedule, and on the CPU with the same
weights. The checkpoint is removed once the model folder is written; a run without ``--resume`` starts afresh and
replaces it at its first checkpoint.

Only one run writes an output folder at a time: :func:`hold_output` holds ``<parent>/.<name>.lock``
(``sslseg.atomic.exclusive_lock``); a second run is refused with one line naming the first one's process. The same
lock guards ``sslseg predict``'s output folder.

Example::

    checkpointer = Checkpointer("models/hippo", every=300.0)
    saved = checkpointer.load()           # None when there is nothing to resume
    ...
    checkpointer.maybe_save(trainer)      # in the training loop
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from sslseg.atomic import hold_output as atomic_hold_output
from sslseg.atomic import remove_quietly, remove_stale_partials, torch_save_atomic
from sslseg.errors import UserError

CHECKPOINT_EVERY = 300.0  # seconds: about 0.1 % of the run per checkpoint on the cpu preset (docs/benchmarks.md)
MAX_COST = 0.01  # with the default interval, checkpoints take at most this share of the training time
FORMAT = "sslseg-finetune-checkpoint-1"


def checkpoint_path(out) -> str:
    """Where the run writing the model folder ``out`` keeps its checkpoint."""
    directory, base = os.path.split(os.path.abspath(os.fspath(out)).rstrip(os.sep))
    return os.path.join(directory, f".{base}.resume.pth")


@contextlib.contextmanager
def hold_output(out, option: str = "--out"):
    """``sslseg.atomic.hold_output`` for a model folder; a checkpoint that a run killed while saving left half
    written (``.partial-<pid>-...``) is removed too."""
    with atomic_hold_output(out, option):
        directory, base = os.path.split(checkpoint_path(out))
        remove_stale_partials(directory, base)
        yield


def _plain(value):
    """JSON-safe numbers (numpy floats to floats): the checkpoint loads with ``weights_only=True``."""
    return json.loads(json.dumps(value, default=float))


class Checkpointer:
    """Saves a trainer's state every ``every`` seconds (0 or None: never) and loads it back."""

    def __init__(self, out, every=None, reporter=None):
        self.path = checkpoint_path(out)
        self.every = CHECKPOINT_EVERY if every is None else float(every)
        self.bounded = every is None  # the default interval grows to keep checkpoints under MAX_COST of the run
        self.reporter = reporter
        self.last = time.monotonic()
        self.seconds = []  # how long each save took
        self.size = 0  # bytes of the last one

    def load(self):
        """The saved state, or None when there is none."""
        import torch

        if not os.path.isfile(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever is wrong with it, it cannot be trusted
            raise UserError(f"--resume: {self.path} is not a checkpoint this program can read ({error}); remove "
                            "it to start afresh") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"--resume: {self.path} is not a fine-tuning checkpoint of sslseg; remove it to start "
                            "afresh")
        return state

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def maybe_save(self, trainer) -> bool:
        """Save when ``every`` seconds have passed since the last save (never after the last step: the model
        folder comes next)."""
        now = time.monotonic()
        interval = self.every
        if self.bounded and self.seconds:  # a large network on a slow disk: fewer checkpoints, not a slower run
            interval = max(interval, self.seconds[-1] / MAX_COST)
        if not self.every or now - self.last < interval or trainer.step >= trainer.schedule.total:
            return False
        self.save(trainer)
        return True

    def save(self, trainer) -> None:
        began = time.monotonic()
        torch_save_atomic(trainer_state(trainer), self.path)
        self.last = time.monotonic()
        self.seconds.append(self.last - began)
        self.size = os.path.getsize(self.path)

    def remove(self) -> None:
        remove_quietly(self.path)


def run_identity(trainer) -> dict:
    """What must not change between an interrupted run and its resumption."""
    r = trainer.request
    return _plain({
        "backbone": str(r.backbone), "init_model": r.init_model, "arch": str(r.arch) if r.arch else None,
        "preset": trainer.preset.name, "steps": r.steps, "time_limit": trainer.time_limit, "seed": r.seed,
        "max_lr": trainer.lr_max, "optimizer": trainer.optimizer_name, "train_cases": list(trainer.train_ids),
        "val_cases": list(trainer.val_ids), "labels": [label["name"] for label in trainer.labels],
        "patch": list(trainer.patch), "batch": trainer.batch, "keep_best": r.keep_best,
    })


def trainer_state(trainer) -> dict:
    """Everything a resumed run needs to continue where ``trainer`` is now."""
    import torch

    best = dict(trainer.best)
    return {
        "format": FORMAT,
        "identity": run_identity(trainer),
        "step": trainer.step,
        "schedule": trainer.schedule.to_dict(),
        "network": trainer.network.state_dict(),  # aliased tensors (ResEnc's all_modules) stored once
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "best": {**_plain({k: v for k, v in best.items() if k != "state"}),
                 "state": best["state"]},  # trainer.cpu_state: shared tensors already stored once
        "history": _plain(trainer.history),
        "losses": [float(loss) for loss in trainer.losses],
        "nonfinite": int(trainer.nonfinite),
        "budget": {"validation_seconds": trainer.budget.validation_seconds, "val_every": trainer.budget.val_every},
        "elapsed": time.monotonic() - trainer.started,
        "train_seconds": time.monotonic() - trainer.train_started,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def check_identity(saved: dict, trainer, path: str) -> None:
    now = run_identity(trainer)
    changed = [key for key in sorted(set(now) | set(saved)) if now.get(key) != saved.get(key)]
    if changed:
        key = changed[0]
        raise UserError(f"--resume: the interrupted run ({path}) differs in {key} (saved {saved.get(key)!r:.80}, "
                        f"now {now.get(key)!r:.80}); give the same options, or run without --resume to start "
                        "afresh")


def restore(trainer, state: dict, path: str) -> None:
    """Put ``trainer`` (prepared up to its training loop) where the saved run stopped."""
    import torch

    from sslseg.schedule import Schedule

    check_identity(state["identity"], trainer, path)
    s = state["schedule"]
    trainer.schedule = Schedule(s["total_steps"], s["decoder_warmup_steps"], s["full_warmup_steps"], s["max_lr"],
                                s["poly_exponent"])
    trainer.network.load_state_dict(state["network"])
    trainer.step = int(state["step"])
    trainer.maybe_unfreeze()  # the encoder joins the optimiser as it had, so that the groups match
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.best = {**state["best"]}
    trainer.history = list(state["history"])
    device = trainer.device
    trainer.losses.extend(torch.tensor(loss, dtype=torch.float32, device=device) for loss in state["losses"])
    trainer.nonfinite += int(state["nonfinite"])
    now = time.monotonic()
    trainer.started = now - float(state["elapsed"])  # the time limit counts the interrupted run's time too
    trainer.train_started = now - float(state["train_seconds"])
    budget = trainer.budget
    budget.started, budget.val_every = trainer.started, int(state["budget"]["val_every"])
    budget.validation_seconds = float(state["budget"]["validation_seconds"])
    budget.start_window(trainer.step, now)  # the speed is measured afresh (another machine, another load)
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
