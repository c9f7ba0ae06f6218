"""Progress output of a pretraining run: the shared :class:`sslseg.progress.Reporter` (CONTRACTS event format, one
JSON object per stdout line with ``--progress json``) with pretraining's own calls.

Events of ``sslseg pretrain --progress json``:

- ``start`` {total_steps, device, note, method, arch, images, usable, skipped, processes, first_step}
- ``log`` {message} (e.g. one per skipped image, resume notes)
- ``progress`` {phase "pretrain", step, total, loss (mean over the interval and all processes), lr, val_dice,
  elapsed, eta}
- ``validation`` {step, loss, dice, mean_dice}: the loss on a fixed batch with fixed masks (a smooth curve for the
  chart); for Volume Fusion also the mean Dice of the fusion classes (``dice`` {"fusion": x}), else ``{}``/null
- ``done`` {model (the output folder), checkpoint, registered, final_loss}
- ``error`` {message}

Only rank 0 of a distributed run reports.
"""

from __future__ import annotations

from sslseg.progress import Reporter as _SharedReporter
from sslseg.progress import _number


class Reporter(_SharedReporter):
    def __init__(self, mode: str = "bar", stream=None, error_stream=None):
        super().__init__(mode, stream=stream, error_stream=error_stream, prefix="pretrain")

    def progress(self, step: int, total: int, loss=None, lr=None, val_dice=None, phase: str = "pretrain"):
        super().progress(phase, step, total, loss=loss, lr=lr, val_dice=val_dice)

    def validation(self, step: int, loss: float, mean_dice: float = None):
        if mean_dice is not None:
            self.last_val_dice = mean_dice
        if self.mode == "json":
            self._json({"event": "validation", "step": int(step), "loss": _number(loss),
                        "dice": {"fusion": _number(mean_dice)} if mean_dice is not None else {},
                        "mean_dice": _number(mean_dice)})
        elif self.mode == "bar":
            self._end_bar_line()
            extra = f", mean Dice of the fusion classes {mean_dice:.3f}" if mean_dice is not None else ""
            self._text(f"[{self.prefix}] validation at step {step}: loss {loss:.4f}{extra}")
