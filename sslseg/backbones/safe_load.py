"""Reading checkpoint files without running code from them.

Everything goes through ``torch.load(..., weights_only=True)``: tensors, containers and primitive values only.
MIS-FM / PyMIC checkpoints (and nnssl training logs) may also carry NumPy scalars (e.g. a validation score); those
few NumPy classes, which rebuild plain numbers and dtypes and call nothing else, are allowed by name
(``torch.serialization.safe_globals``) for such a load. Any other global, e.g. a pickled ``os.system`` call, makes
the load fail before anything runs.

Messages never pass on torch's own text for a refused file: it suggests loading again without the weights-only
guard, which is exactly what must not be done with a file of unknown origin.

Example::

    from sslseg.backbones.safe_load import load_checkpoint
    checkpoint = load_checkpoint("checkpoint_final.pth")     # UserError (one line) if unsafe or corrupt
"""

from __future__ import annotations

import os
import pickle
import re

from sslseg.errors import UserError

# torch.save writes a zip archive (PyTorch >= 1.6) or, in the legacy format, a pickle (protocol 2: 0x80 0x02).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")


class RefusedCheckpoint(UserError):
    """The file asks for more than tensors and plain data: ``global_name`` is what it asked for (or "")."""

    def __init__(self, message: str, global_name: str = ""):
        super().__init__(message)
        self.global_name = global_name


def looks_like_checkpoint(path: str) -> bool:
    """Whether the file starts like something ``torch.save`` writes (cheap: reads 4 bytes)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError:
        return False
    return head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)


def require_checkpoint_file(path: str):
    """UserError unless ``path`` starts like a torch checkpoint (refuses a web page or a text file at once)."""
    if not looks_like_checkpoint(path):
        raise UserError(f"cannot read checkpoint {path}: it is not a PyTorch checkpoint (truncated or corrupt, or "
                        "another kind of file such as a web page or text)")


def _numpy_allow_list() -> list:
    """NumPy scalar/dtype reconstruction, as named in the pickles of NumPy 1.x and 2.x."""
    allowed = []
    try:
        import numpy
    except ImportError:
        return allowed
    allowed.append(numpy.dtype)
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar"])
        except ImportError:
            continue
        # NumPy 1.x pickles name numpy.core.multiarray.scalar, NumPy 2.x numpy._core...; both are the same function
        allowed.append((module.scalar, f"{module_name}.scalar"))
    for dtype_class in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(numpy, "dtypes") and hasattr(numpy.dtypes, dtype_class):
            allowed.append(getattr(numpy.dtypes, dtype_class))
    return allowed


def load_checkpoint(path: str, allow_numpy: bool = False):
    """The object stored in a torch checkpoint file, loaded on the CPU with ``weights_only=True``.

    Raises UserError for a missing, empty, truncated or corrupt file, and RefusedCheckpoint (a UserError) for one
    that needs anything beyond tensors and plain data (the message names the refused global)."""
    import torch

    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint file is empty: {path}")
    require_checkpoint_file(path)
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_numpy_allow_list()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(path, str(error)) from None
    except Exception as error:  # noqa: BLE001 - any failure inside the reader is a corrupt file, said in one line
        raise UserError(f"cannot read checkpoint {path}: the file is truncated or corrupt ({_detail(error)}). "
                        "Download or copy it again.") from None


def _refusal(path: str, torch_message: str) -> RefusedCheckpoint:
    """The one-line refusal for a file the weights-only reader stopped (torch's advice is not passed on)."""
    match = _GLOBAL.search(torch_message)
    global_name = match.group(1) if match else ""
    what = f"it asks to run {global_name} while loading" if global_name else \
        "its pickle uses operations beyond tensors and plain data"
    return RefusedCheckpoint(f"refused to load {path}: it is not a file this program can trust ({what}; sslseg "
                             "only reads tensors and plain data from checkpoints)", global_name)


def _detail(error: Exception) -> str:
    """The first line of an exception, unless it is torch's advice about the weights-only guard."""
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else ""
    if not first or "weights_only" in first or "likely succeed" in first:
        return type(error).__name__
    return f"{type(error).__name__}: {first}"
