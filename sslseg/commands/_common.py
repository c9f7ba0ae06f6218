"""Helpers shared by the fine-tuning, prediction and demo commands."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback

from sslseg.errors import UserError


def add_progress_argument(parser):
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="bar: human-readable progress on stderr; json: one JSON event per stdout line (for the "
                             "Slicer module); none: quiet (default: bar)")


def add_inference_arguments(parser, tta_default: str):
    """The options every command that segments shares (predict, rank): device, mirroring, overlap, window batch,
    .seg.nrrd output. ``tta_default`` completes the --tta help text."""
    import argparse

    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help=f"average over the 8 mirrorings (default: {tta_default})")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass, at least 1 (default: from free GPU memory; 2 on the CPU)")
    parser.add_argument("--seg-nrrd", action="store_true", help="also write Slicer .seg.nrrd files")


def run_reported(reporter, work):
    """Run ``work()``; in JSON mode every failure also becomes an ``error`` event on stdout before the usual
    one-line message (UserError, exit 2) or traceback (a bug) on stderr."""
    try:
        return work()
    except (UserError, OSError) as error:  # one line on stderr from sslseg.cli.main; OSError: disk full, no access
        reporter.error(str(error))
        raise
    except KeyboardInterrupt:
        reporter.error("cancelled")
        raise
    except Exception as error:  # noqa: BLE001 - reported, then re-raised with its traceback
        reporter.error(f"{type(error).__name__}: {error}")
        traceback.print_exc(file=sys.stderr)
        raise SystemExit(1) from None


@contextlib.contextmanager
def sigterm_cancels():
    """Within the block, SIGTERM (how Slicer's Cancel and most job schedulers stop a process) raises
    KeyboardInterrupt like Ctrl-C, so that the same cleanup runs: no half-written model or ``.partial`` file stays.
    Only the first SIGTERM interrupts; later ones are ignored while that cleanup runs (SIGKILL still ends the
    process). Outside the main thread, where Python cannot install handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def cancel(signum, frame):
        if not received:
            received.append(signum)
            raise KeyboardInterrupt("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
