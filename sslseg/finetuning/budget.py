"""The time limit: how many steps fit into ``time_limit`` seconds, measured rather than guessed.

A run with a time limit starts with the preset's schedule, times its first ``CALIBRATION_STEPS`` steps and fixes
the total from the measured seconds per step; whole-network steps cost more than decoder-only ones (measured: ~2x
on CPU), so the speed is measured afresh after the encoder is unfrozen. Validation time is excluded from the
training speed and added back as its own cost per step (guessed from the number of sliding windows before the first
validation, measured after). The estimate is corrected at each validation; ``--steps`` caps it; a run that still
overruns by 10 % is cut short (its PolyLR phase shrunk, so the lr still decays to zero). Rescaling keeps the
warm-up phases already entered and moves the ones still ahead with the preset's fractions, so the schedule stays the
three-phase recipe of Wald et al. ("Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025).

The class holds only numbers: every method takes the measured times (``now`` from ``time.monotonic()``), so it is
tested without training.

Example::

    budget = TimeBudget(limit=900.0, started=t0, fractions=(0.04, 0.04), val_every=150)
    budget.start_window(step=0, now=t0)
    ...
    if budget.estimate_due(step):
        schedule, per_step = budget.rescale(schedule, step, now)
"""

from __future__ import annotations

from sslseg.schedule import Schedule

CALIBRATION_STEPS = 15  # steps timed before a time limit fixes the run's length
OVERRUN = 1.1  # a run past this multiple of its limit is cut short
VALIDATIONS_PER_RUN = 6  # validation cadence after calibration: about this many over the run


def rescale_schedule(schedule: Schedule, new_total: int, step: int, fractions) -> Schedule:
    """The schedule stretched or shrunk to ``new_total`` steps at ``step``: warm-up boundaries that are still ahead
    follow the preset's fractions; phases already entered are kept."""
    decoder, full = schedule.decoder_steps, schedule.full_steps
    if decoder or full:
        if step < decoder:
            decoder = max(step + 1, round(new_total * fractions[0]))
            full = max(1, round(new_total * fractions[1])) if full else 0
        elif step < decoder + full:
            full = max(step - decoder + 1, round(new_total * fractions[1]))
    new_total = max(int(new_total), decoder + full + 1, step)
    return Schedule(new_total, decoder, full, schedule.max_lr, schedule.exponent)


def validation_guess(per_step: float, windows: int, batch_size: int) -> float:
    """Seconds of one validation pass before any was measured: roughly one forward pass per sliding window (about a
    third of a training step's time per sample)."""
    return windows * per_step / max(batch_size, 1) / 3.0


class TimeBudget:
    """Fits a run into ``limit`` seconds (None: no limit, every method is then a no-op) from measured times.

    ``started``: when the run started (the limit covers everything, reading the data included); ``fractions``: the
    preset's warm-up fractions; ``val_every``: the validation cadence (shortened at calibration so that a run sees
    about six validations); ``step_cap``: an explicit ``--steps``, never exceeded; ``validation_windows``: sliding
    windows over all validation cases (0: no validation); ``batch_size``: for the validation guess."""

    def __init__(self, limit, started: float, fractions, val_every: int, step_cap=None, validation_windows: int = 0,
                 batch_size: int = 1, calibration_steps: int = CALIBRATION_STEPS):
        self.limit = float(limit) if limit else None
        self.started = float(started)
        self.fractions = tuple(fractions)
        self.val_every = max(1, int(val_every))
        self.step_cap = None if step_cap is None else int(step_cap)
        self.validation_windows = int(validation_windows)
        self.batch_size = int(batch_size)
        self.calibration_steps = int(calibration_steps)
        self.validation_seconds = 0.0  # all validations so far
        self.window = {"step": 0, "time": self.started, "validation": 0.0}  # where the speed measurement starts

    # --- measurements ------------------------------------------------------------------------------------------
    def start_window(self, step: int, now: float) -> None:
        """Measure the speed from ``step`` on (the start of training; again when the encoder is unfrozen)."""
        self.window = {"step": int(step), "time": float(now), "validation": self.validation_seconds}

    def add_validation(self, seconds: float) -> None:
        self.validation_seconds += float(seconds)

    # --- estimates ---------------------------------------------------------------------------------------------
    def estimate_due(self, step: int) -> bool:
        """After ``step`` steps: at calibration (of the run, or of the window since unfreezing) and at every
        validation step after it."""
        measured = step - self.window["step"]
        calibration = self.calibration_steps
        return bool(self.limit) and measured > 0 and (
            step == calibration or measured == calibration or (step > calibration and step % self.val_every == 0))

    def seconds_per_step(self, step: int, now: float) -> float:
        """Training seconds per step measured in the current window, plus the validation cost spread over the
        steps between validations."""
        measured = step - self.window["step"]
        spent = now - self.window["time"]
        per_step = (spent - (self.validation_seconds - self.window["validation"])) / measured
        if not self.validation_windows:
            return per_step
        validations = step // self.val_every
        one_validation = self.validation_seconds / validations if validations else \
            validation_guess(per_step, self.validation_windows, self.batch_size)
        return per_step + one_validation / self.val_every

    def total_steps(self, step: int, now: float, per_step: float) -> int:
        """The run's length so that it ends at the limit (``--steps`` caps it)."""
        remaining = self.limit - (now - self.started)
        total = step + max(1, int(remaining / max(per_step, 1e-6)))
        return total if self.step_cap is None else min(total, self.step_cap)

    # --- decisions ---------------------------------------------------------------------------------------------
    def rescale(self, schedule: Schedule, step: int, now: float):
        """(the schedule refitted to the time left, seconds per step); at calibration also the validation cadence."""
        per_step = self.seconds_per_step(step, now)
        schedule = rescale_schedule(schedule, self.total_steps(step, now, per_step), step, self.fractions)
        if step == self.calibration_steps:
            self.val_every = max(self.calibration_steps, min(self.val_every, schedule.total // VALIDATIONS_PER_RUN))
        return schedule, per_step

    def overrun(self, schedule: Schedule, step: int, now: float):
        """A schedule ending now (or as soon as the warm-ups allow) when the run is past 1.1x its limit and not
        finished; None otherwise."""
        if not self.limit or now - self.started <= OVERRUN * self.limit or step >= schedule.total:
            return None
        return rescale_schedule(schedule, max(step, schedule.poly_start + 1), step, self.fractions)
