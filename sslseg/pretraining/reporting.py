"""Progress of a pretraining run through the shared :class:`sslseg.progress.Reporter` (``--progress json``: one JSON
object per stdout line, the format the SSLPretrain module reads). Only rank 0 of a distributed run reports.

Events of ``sslseg pretrain --progress json``:

- ``start`` {total_steps, device, note, method, arch, images, usable, skipped, processes, first_step}
- ``log`` {message} (e.g. one per skipped image, the defaults chosen for the device, resume notes)
- ``progress`` {phase "pretrain", step, total, loss (mean over the interval and all processes), lr, val_dice,
  elapsed, eta}
- ``validation`` {step, loss, dice, mean_dice}: the loss on a fixed batch with fixed masks (a smooth curve for the
  chart); for Volume Fusion also the mean Dice of the fusion classes (``dice`` {"fusion": x}), else ``{}``/null
- ``done`` {model (the output folder), checkpoint, registered, final_loss}
- ``error`` {message} (written by ``sslseg.commands._common.run_reported``)

Example::

    reporter = PretrainReporter("json")
    reporter.validation(100, {}, None, loss=0.41)
"""

from __future__ import annotations

from sslseg.progress import Reporter


class PretrainReporter(Reporter):
    """The shared reporter with the ``pretrain`` prefix (validation events carry the pretext loss)."""

    def __init__(self, mode: str = "bar", stream=None, error_stream=None):
        super().__init__(mode, stream=stream, error_stream=error_stream, prefix="pretrain")
