"""Helpers shared by the fine-tuning, prediction and demo commands."""

from __future__ import annotations

import sys
import traceback

from sslseg.errors import UserError


def add_progress_argument(parser):
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="bar: human-readable progress on stderr; json: one JSON event per stdout line (for the "
                             "Slicer module); none: quiet (default: bar)")


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
