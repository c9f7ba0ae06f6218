"""Progress output of a pretraining run, in the team's event format (CONTRACTS: ``--progress json`` prints one JSON
object per stdout line; anything else goes to stderr).

Events: ``start`` {total_steps, device, note, method, arch, images, skipped}, ``log`` {message},
``progress`` {phase "pretrain", step, total, loss, lr, val_dice null, elapsed, eta}, ``validation`` {step,
loss (fixed batch and masks), mean_dice (Volume Fusion, else null)},
``done`` {model, checkpoint, registered}, ``error`` {message}. Only rank 0 of a distributed run reports.
"""

from __future__ import annotations

import json
import math
import sys
import time


class Reporter:
    def __init__(self, mode: str = "bar", enabled: bool = True, stream=None, error_stream=None):
        if mode not in ("bar", "json", "none"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode if enabled else "none"
        self.stream = stream or sys.stdout
        self.error_stream = error_stream or sys.stderr
        self.started = time.monotonic()
        self.first_step = None
        self.first_time = None
        self.history = []  # (step, loss) for callers that want the curve

    def _json(self, event: dict):
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def emit(self, event: str, **fields):
        if self.mode == "json":
            self._json({"event": event, **fields})
        elif self.mode == "bar" and event not in ("progress", "validation"):
            text = fields.get("message") or fields.get("note") or ", ".join(f"{k}={v}" for k, v in fields.items())
            self.error_stream.write(f"[pretrain] {event}: {text}\n")
            self.error_stream.flush()

    def start(self, total_steps: int, device: str, note: str = "", **fields):
        self.started = time.monotonic()
        self.emit("start", total_steps=total_steps, device=device, note=note, **fields)

    def log(self, message: str):
        self.emit("log", message=message)

    def progress(self, step: int, total: int, loss: float, lr: float):
        now = time.monotonic()
        if self.first_step is None:
            self.first_step, self.first_time = step - 1, self.started
        done = step - self.first_step
        rate = done / max(now - self.first_time, 1e-9)
        eta = (total - step) / rate if rate > 0 else None
        self.history.append((step, loss))
        fields = {"phase": "pretrain", "step": step, "total": total,
                  "loss": float(loss) if math.isfinite(loss) else None, "lr": float(lr), "val_dice": None,
                  "elapsed": round(now - self.started, 3), "eta": None if eta is None else round(eta, 3)}
        if self.mode == "json":
            self._json({"event": "progress", **fields})
        elif self.mode == "bar":
            width = 30
            filled = int(width * step / max(total, 1))
            eta_text = "?" if eta is None else f"{eta:,.0f}s"
            self.error_stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {loss:.4f} "
                                    f"lr {lr:.2e} eta {eta_text} ")
            if step >= total:
                self.error_stream.write("\n")
            self.error_stream.flush()

    def validation(self, step: int, loss: float, dice: float = None):
        """Loss on a fixed validation batch (and, for Volume Fusion, the mean Dice of the fusion classes)."""
        self.emit("validation", step=step, loss=float(loss), mean_dice=dice)

    def done(self, **fields):
        self.emit("done", **fields)

    def error(self, message: str):
        if self.mode == "json":
            self._json({"event": "error", "message": message})
