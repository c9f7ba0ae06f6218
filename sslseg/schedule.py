"""The learning-rate schedule of every training in sslseg, as a pure function of the step: the fine-tuning schedule
of Wald et al. ("Revisiting MAE pre-training for 3D medical image segmentation", CVPR 2025, arXiv:2410.23132,
Table 3: decoder warm-up, whole-network warm-up, PolyLR) and, without warm-ups, nnU-Net's PolyLR (Isensee et al.,
Nature Methods 2021), which pretraining uses too.

Three phases over ``total`` steps (steps count from 0):

1. ``decoder_warmup`` (``decoder_steps``): only the decoder trains (encoder and stem frozen); the lr ramps linearly
   from ``max_lr / decoder_steps`` to ``max_lr``;
2. ``full_warmup`` (``full_steps``): the whole network trains; the lr ramps linearly again from
   ``max_lr / full_steps`` to ``max_lr`` (the freshly unfrozen encoder starts gently);
3. ``poly``: PolyLR ``max_lr * (1 - t / T) ** 0.9`` over the remaining ``T`` steps.

Without warm-ups (training from scratch, nnU-Net's default; pretraining) the single phase is called ``train``.

Example::

    schedule = Schedule(total=1000, decoder_steps=100, full_steps=100, max_lr=1e-3)
    schedule.phase(150), schedule.lr(150)     # ("full_warmup", 5.1e-4)
    Schedule(total=250_000, max_lr=1e-2).lr(0)  # 1e-2: plain PolyLR (pretraining)
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("decoder_warmup", "full_warmup", "poly", "train")


@dataclass(frozen=True)
class Schedule:
    total: int
    decoder_steps: int = 0
    full_steps: int = 0
    max_lr: float = 1e-3
    exponent: float = 0.9

    def __post_init__(self):
        if self.total < 1:
            raise ValueError("a schedule needs at least one step")
        if self.decoder_steps < 0 or self.full_steps < 0 or self.decoder_steps + self.full_steps >= self.total:
            raise ValueError(f"warm-ups ({self.decoder_steps} + {self.full_steps} steps) must be shorter than the "
                             f"run ({self.total} steps)")

    @classmethod
    def from_fractions(cls, total: int, decoder_fraction: float, full_fraction: float, max_lr: float,
                       exponent: float = 0.9) -> "Schedule":
        """Warm-up lengths as fractions of the run (the paper's 12.5k + 12.5k of 150k is 1/12 each); a warm-up that
        is asked for gets at least one step, and at least one poly step is left."""
        decoder = max(1, round(total * decoder_fraction)) if decoder_fraction > 0 else 0
        full = max(1, round(total * full_fraction)) if full_fraction > 0 else 0
        while decoder + full >= total and (decoder or full):
            if full >= decoder and full:
                full -= 1
            else:
                decoder -= 1
        return cls(int(total), int(decoder), int(full), float(max_lr), float(exponent))

    @property
    def poly_start(self) -> int:
        return self.decoder_steps + self.full_steps

    def phase(self, step: int) -> str:
        if step < self.decoder_steps:
            return "decoder_warmup"
        if step < self.poly_start:
            return "full_warmup"
        return "poly" if self.poly_start > 0 else "train"

    def encoder_frozen(self, step: int) -> bool:
        return step < self.decoder_steps

    def lr(self, step: int) -> float:
        if step < self.decoder_steps:
            return self.max_lr * (step + 1) / self.decoder_steps
        if step < self.poly_start:
            return self.max_lr * (step - self.decoder_steps + 1) / self.full_steps
        length = self.total - self.poly_start
        progress = min(max(step - self.poly_start, 0), length) / length
        return self.max_lr * (1.0 - progress) ** self.exponent

    def with_total(self, total: int, decoder_fraction: float, full_fraction: float) -> "Schedule":
        """The same schedule stretched to ``total`` steps (used when a time limit fixes the run's length)."""
        return Schedule.from_fractions(total, decoder_fraction, full_fraction, self.max_lr, self.exponent)

    def to_dict(self) -> dict:
        return {"total_steps": self.total, "decoder_warmup_steps": self.decoder_steps,
                "full_warmup_steps": self.full_steps, "max_lr": self.max_lr, "poly_exponent": self.exponent}
