"""Reading checkpoint files without running code from them.

Everything goes through ``torch.load(..., weights_only=True)``: tensors, containers and primitive values only.
MIS-FM / PyMIC checkpoints (and nnssl training logs) may also carry NumPy scalars (e.g. a validation score); those
few NumPy classes, which rebuild plain numbers and dtypes and call nothing else, are allowed by name
(``torch.serialization.safe_globals``) for such a load. Any other global, e.g. a pickled ``os.system`` call, makes the load fail before anything runs.
"""

from __future__ import annotations

import os
import pickle
import zipfile

from sslseg.errors import UserError


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
        # the pickles of NumPy 1.x name numpy.core.multiarray.scalar, NumPy 2.x numpy._core...; both are the same function
        allowed.append((module.scalar, f"{module_name}.scalar"))
    for dtype_class in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(numpy, "dtypes") and hasattr(numpy.dtypes, dtype_class):
            allowed.append(getattr(numpy.dtypes, dtype_class))
    return allowed


def load_checkpoint(path: str, allow_numpy: bool = False):
    """The object stored in a torch checkpoint file, loaded on the CPU with ``weights_only=True``.

    Raises UserError for a missing, truncated or corrupt file and for one that needs anything beyond tensors and
    plain data (the message names the refused global)."""
    import torch

    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint file is empty: {path}")
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_numpy_allow_list()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        detail = _refused_global(str(error))
        raise UserError(
            f"refused to load {path}: it contains objects other than tensors and plain data{detail}. "
            "sslseg never unpickles arbitrary code; if this file is from a source you trust, convert it to a "
            f"plain state_dict in the nnssl format (see `sslseg models import --help`). ({first_line[:200]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as error:
        raise UserError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else 'no detail'}). "
            "Download or copy it again."
        ) from None


def _refused_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return f" ({line.strip()[:160]})"
    return ""
