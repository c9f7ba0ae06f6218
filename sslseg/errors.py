"""Exceptions the engine raises for problems the user can fix (bad input, missing files, refused checkpoints).

The CLI prints them as one line without a traceback; the Slicer modules show them in a message box.
"""


class UserError(ValueError):
    """Bad input or a refused operation, with a message that says what to do."""


class OutOfMemory(RuntimeError):
    """The machine ran out of memory mid-run; the message names the option that helps (the CLI: one line, exit 1)."""


def os_error_line(error: OSError) -> str:
    """An OSError as the CLI prints it: "<path>: <cause>" (a full disk, a folder that cannot be written)."""
    where = f"{error.filename}: " if getattr(error, "filename", None) else ""
    return " ".join(f"{where}{error.strerror or error}".split())
