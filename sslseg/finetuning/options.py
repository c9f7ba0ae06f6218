"""The fine-tuning options a user gives (CLI flags or ``sslseg.finetune`` keywords), checked in one place before any
data is read or any memory is allocated.

Every refusal is one :class:`sslseg.errors.UserError` line naming the option, built on :mod:`sslseg.validation`.
``None`` means "not given" (the preset's default applies later) and is returned as ``None``.

Example::

    options = check_finetune_options(steps=300, patch_size=[32, 48, 32], seed=0, device="cpu", out="models/hippo")
    options.patch_size        # [32, 48, 32]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sslseg import validation
from sslseg.device import parse_device
from sslseg.errors import UserError

OPTIMIZERS = ("sgd", "adamw")
# Refused before allocating: no GPU holds more samples of even a small patch, and a larger value is a typo.
MAX_BATCH_SIZE = 512
# A larger peak learning rate makes SGD and AdamW diverge on these networks within a few steps.
MAX_LEARNING_RATE = 1.0


@dataclass(frozen=True)
class FinetuneOptions:
    """The checked options, normalised (ints, floats, lists); ``None`` where not given."""
    steps: int | None = None
    batch_size: int | None = None
    patch_size: list | None = None
    seed: int = 0
    max_lr: float | None = None
    time_limit: float | None = None
    val_cases: int | None = None
    max_memory_gb: float | None = None
    label_info: list | None = None
    optimizer: str | None = None
    preset: str | None = None
    device: str = "auto"
    out: str | None = None
    pack: str | None = None
    init_model: str | None = None
    checkpoint_every: float | None = None
    config: str = "auto"  # "auto", "2d" or "3d" (sslseg.finetuning.planning.choose_configuration)


def _optional(check, name: str, value, *limits):
    """``check(name, value, *limits)``, or None when the option was not given."""
    return None if value is None else check(name, value, *limits)


def check_label_info(label_info) -> list | None:
    """A ``--label-info`` list (or the path of a JSON file holding one): ``[{value, name, color, terminology}]``,
    values 1..255 once each, names non-empty strings, colours 3 numbers in [0, 1], terminology (optional) a Slicer
    terminology entry string (``sslseg.model_folder.check_terminology``), carried into model.json and every
    predicted segment."""
    from sslseg.model_folder import check_labels

    if label_info is None:
        return None
    if isinstance(label_info, (str, os.PathLike)):
        label_info = validation.read_json_file(label_info, "--label-info", expect=list)
    return check_labels(label_info, "--label-info", strict_keys=True)


def check_finetune_options(*, steps=None, batch_size=None, patch_size=None, seed=0, max_lr=None, time_limit=None,
                           val_cases=None, max_memory_gb=None, label_info=None, optimizer=None, preset=None,
                           device="auto", out=None, pack=None, init_model=None,
                           checkpoint_every=None, config="auto") -> FinetuneOptions:
    """Check every fine-tuning option; returns them normalised, or raises one UserError line. Cheap: nothing is
    allocated in proportion to a value (``--patch 100000 100000 100000`` fails at once), no torch import.
    ``init_model`` (a model to continue from) is checked by reading its model.json only."""
    from sslseg.finetuning.planning import CONFIGURATIONS
    from sslseg.model_folder import check_output_folder, check_pack_target, read_model_meta
    from sslseg.presets import PRESETS

    options = FinetuneOptions(
        steps=_optional(validation.positive_int, "--steps", steps),
        batch_size=_optional(validation.positive_int, "--batch-size", batch_size, MAX_BATCH_SIZE),
        patch_size=_optional(validation.patch_size, "--patch", patch_size),
        seed=validation.seed(0 if seed is None else seed),
        max_lr=_optional(validation.float_in_range, "--max-lr", max_lr, 0.0, MAX_LEARNING_RATE, True),
        time_limit=_optional(validation.float_in_range, "--time-limit", time_limit, 0.0),  # 0: no limit
        val_cases=_optional(validation.int_in_range, "--val-cases", val_cases, 0),
        max_memory_gb=_optional(validation.positive_float, "--max-memory-gb", max_memory_gb),
        label_info=check_label_info(label_info),
        optimizer=_optional(validation.one_of, "--optimizer", optimizer, OPTIMIZERS),
        preset=_optional(validation.one_of, "--preset", preset, sorted(PRESETS)),
        device=parse_device(device),
        out=None if out is None else os.path.abspath(os.fspath(out)),
        pack=None if pack is None else os.path.abspath(os.fspath(pack)),
        init_model=None if init_model is None else os.path.abspath(os.fspath(init_model)),
        checkpoint_every=_optional(validation.float_in_range, "--checkpoint-every", checkpoint_every, 0.0),
        config=validation.one_of("--config", "auto" if config is None else config, CONFIGURATIONS),
    )
    if options.out is None:
        raise UserError("give the output model folder (--out)")
    check_output_folder(options.out)
    if options.pack is not None:
        check_pack_target(options.pack, options.out)
    if options.init_model is not None:
        try:  # a missing or garbled model is refused now, not after the data are read
            read_model_meta(options.init_model)
        except UserError as error:
            raise UserError(f"--init-model: {error}") from None
    return options
