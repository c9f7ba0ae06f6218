"""The ``sslseg`` command line: ``sslseg <command> --help`` for each command.

Each command lives in ``sslseg/commands/<name>.py`` and provides ``add_parser(subparsers)`` which registers its
parser and sets ``func`` (called with the parsed arguments, returns an exit code). Command modules import torch
lazily inside ``func`` so that ``sslseg --help`` is instant.
"""

import argparse
import importlib
import sys

from sslseg import __version__
from sslseg.errors import OutOfMemory, UserError, os_error_line
from sslseg.validation import one_line


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option gives one line naming it (and where to look), not the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

# Order is the order shown in --help.
COMMAND_MODULES = ["demo", "models", "finetune", "predict", "rank", "pretrain"]


def build_parser():
    parser = OneLineParser(
        prog="sslseg",
        description="Fine-tune self-supervised pretrained 3D segmentation networks and segment volumes.",
    )
    parser.add_argument("--version", action="version", version=f"sslseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sslseg.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"sslseg.commands.{name}":
                continue  # command not shipped in this build
            raise
        module.add_parser(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"sslseg {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # the environment, not the program: a full disk, a folder we may not write
        print(f"sslseg {args.command}: error: {os_error_line(error)}", file=sys.stderr)
        return 1
    except OutOfMemory as error:
        print(f"sslseg {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sslseg {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
