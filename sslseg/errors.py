"""Exceptions the engine raises for problems the user can fix (bad input, missing files, refused checkpoints).

The CLI prints them as one line without a traceback; the Slicer modules show them in a message box.
"""


class UserError(ValueError):
    """Bad input or a refused operation, with a message that says what to do."""


class OutOfMemory(RuntimeError):
    """The machine ran out of memory mid-run; the message names the option that helps (the CLI: one line, exit 1)."""
