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


# What helps when memory runs out, per command (the options each one has)
MEMORY_HINTS = {
    "finetune": "try a smaller --batch-size or --patch (on a GPU, --max-memory-gb fits both under a limit)",
    "predict": "try --batch-size 1 (windows per pass) or a machine with more memory",
    "rank": "try --batch-size 1 (windows per pass) or a machine with more memory",
    "pretrain": "try a smaller --batch or --patch",
}
# how torch reports an allocation that failed (CPU allocator, CUDA caching allocator), besides MemoryError
_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _OUT_OF_MEMORY)


def run_reported(reporter, work, command: str | None = None):
    """Run ``work()``; in JSON mode every failure also becomes an ``error`` event on stdout before the usual
    one-line message (UserError, exit 2; OSError or memory running out, exit 1) or traceback (a bug) on stderr.
    ``command`` picks the hint for running out of memory (``MEMORY_HINTS``)."""
    from sslseg.errors import OutOfMemory, os_error_line

    try:
        return work()
    except (UserError, OSError, OutOfMemory) as error:  # one line on stderr from sslseg.cli.main
        reporter.error(os_error_line(error) if isinstance(error, OSError) else str(error))
        raise
    except KeyboardInterrupt:
        reporter.error("cancelled")
        raise
    except Exception as error:  # noqa: BLE001 - reported, then re-raised with its traceback
        if is_out_of_memory(error):  # the machine, not a bug: one line naming what helps
            hint = MEMORY_HINTS.get(command, "try smaller settings or a machine with more memory")
            message = f"out of memory ({type(error).__name__}): {hint}. Nothing was written or registered"
            reporter.error(message)
            raise OutOfMemory(message) from None
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
