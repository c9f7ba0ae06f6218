"""Progress reporting shared by the long-running commands (fine-tuning, prediction, pretraining).

Three modes:

- ``bar``: human-readable lines and a progress bar on stderr (a redrawn bar in a terminal, a line every ~5 %
  otherwise, so that logs stay readable);
- ``json``: one JSON object per stdout line (JSON Lines, https://jsonlines.org), read by the Slicer modules'
  background-process runner: ``start``, ``progress``, ``validation``, ``log``, ``done``, ``error``. Nothing else is
  written to stdout in this mode;
- ``none``: silent.

Example::

    reporter = Reporter("json")
    reporter.start(total_steps=100, device="cpu", note="CPU: slow")
    reporter.progress(phase="poly", step=1, total=100, loss=0.9, lr=1e-3)
    reporter.done(model="/path/to/model")
"""

from __future__ import annotations

import json
import math
import sys
import time

MODES = ("bar", "json", "none")


def _number(value):
    """JSON has no NaN/inf: report them as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Reporter:
    """Emits progress events. ``stream`` receives JSON lines; ``error_stream`` the human-readable output."""

    def __init__(self, mode: str = "bar", stream=None, error_stream=None, prefix: str = "sslseg"):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r} (choose {', '.join(MODES)})")
        self.mode = mode
        self.stream = stream or sys.stdout
        self.error_stream = error_stream or sys.stderr
        self.prefix = prefix
        self.started = time.monotonic()
        self._rate_origin = None  # (step, time) of the first progress call: ETA excludes start-up time
        self._last_bar_fraction = -1.0
        self.last_val_dice = None

    # --- low level ---------------------------------------------------------------------------------------------
    def _json(self, event: dict):
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def _text(self, text: str, end: str = "\n"):
        self.error_stream.write(text + end)
        self.error_stream.flush()

    def _is_terminal(self) -> bool:
        return bool(getattr(self.error_stream, "isatty", lambda: False)())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- events ------------------------------------------------------------------------------------------------
    def start(self, total_steps: int, device: str, note: str = "", **fields):
        self.started = time.monotonic()
        self._rate_origin = None
        if self.mode == "json":
            self._json({"event": "start", "total_steps": int(total_steps), "device": device, "note": note, **fields})
        elif self.mode == "bar":
            self._text(f"[{self.prefix}] {total_steps} steps on {device}" + (f" ({note})" if note else ""))

    def log(self, message: str):
        if self.mode == "json":
            self._json({"event": "log", "message": message})
        elif self.mode == "bar":
            self._end_bar_line()
            self._text(f"[{self.prefix}] {message}")

    def progress(self, phase: str, step: int, total: int | None, loss=None, lr=None, val_dice=None):
        """``total`` None (or 0): unknown length (e.g. a download without a size); no ETA then."""
        total = int(total or 0)
        now = time.monotonic()
        if self._rate_origin is None:  # the first report starts the clock: ETA excludes start-up work
            self._rate_origin = (step, now)
        done = step - self._rate_origin[0]
        spent = now - self._rate_origin[1]
        eta = (total - step) * spent / done if total and done > 0 and spent > 0 else None
        if val_dice is not None:
            self.last_val_dice = val_dice
        elapsed = now - self.started
        if self.mode == "json":
            self._json({"event": "progress", "phase": phase, "step": int(step), "total": int(total),
                        "loss": _number(loss), "lr": _number(lr), "val_dice": _number(self.last_val_dice),
                        "elapsed": round(elapsed, 3), "eta": None if eta is None else round(eta, 3)})
        elif self.mode == "bar":
            self._bar(phase, step, total, loss, lr, eta)

    def validation(self, step: int, dice: dict, mean_dice, loss=None):
        """Validation Dice (fine-tuning) and/or a validation ``loss`` (pretraining has no Dice)."""
        self.last_val_dice = mean_dice if mean_dice is not None else self.last_val_dice
        if self.mode == "json":
            event = {"event": "validation", "step": int(step),
                     "dice": {name: _number(value) for name, value in (dice or {}).items()},
                     "mean_dice": _number(mean_dice)}
            if loss is not None:
                event["loss"] = _number(loss)
            self._json(event)
        elif self.mode == "bar":
            self._end_bar_line()
            parts = [f"mean Dice {mean_dice:.3f}"] if mean_dice is not None else []
            parts += [f"{name} {value:.3f}" for name, value in (dice or {}).items()]
            parts += [f"loss {loss:.4f}"] if loss is not None else []
            self._text(f"[{self.prefix}] validation at step {step}: {', '.join(parts)}")

    def done(self, **fields):
        if self.mode == "json":
            self._json({"event": "done", **fields})
        elif self.mode == "bar":
            self._end_bar_line()
            self._text(f"[{self.prefix}] done in {self.elapsed():.0f} s")

    def error(self, message: str):
        if self.mode == "json":
            self._json({"event": "error", "message": message})
        # bar mode: the CLI prints the error itself

    # --- the bar -----------------------------------------------------------------------------------------------
    def _bar(self, phase, step, total, loss, lr, eta):
        fraction = step / max(total, 1)
        terminal = self._is_terminal()
        if not terminal and step < total and fraction - self._last_bar_fraction < 0.05:
            return
        self._last_bar_fraction = fraction
        width = 24
        filled = int(width * min(fraction, 1.0))
        text = f"{phase:>14} [{'#' * filled}{'.' * (width - filled)}] {step}/{total}"
        if loss is not None and math.isfinite(loss):
            text += f" loss {loss:.4f}"
        if lr is not None:
            text += f" lr {lr:.2e}"
        if self.last_val_dice is not None:
            text += f" val Dice {self.last_val_dice:.3f}"
        text += f" eta {_duration(eta)}"
        if terminal:
            self._text("\r" + text.ljust(100), end="")
            self._bar_open = step < total
            if not self._bar_open:
                self._text("")
        else:
            self._text(text)

    def _end_bar_line(self):
        if getattr(self, "_bar_open", False):
            self._text("")
            self._bar_open = False


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
