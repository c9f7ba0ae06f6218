"""Fitting a training step into GPU memory: measure a real forward/backward pass, then trade time for memory
(gradient checkpointing, Chen et al., "Training deep nets with sublinear memory cost", 2016), then shrink the batch,
then the patch, the order in which nnU-Net's planner gives things up (Isensee et al., Nature Methods 2021). The
limit then binds the whole run (the allocator's per-process fraction), and the run's peaks go to its log and
model.json."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sslseg.errors import UserError

# The probe's peak must stay this far under the limit: the real step adds the loss, deep supervision's targets and
# validation between steps, and the allocator's blocks fragment over a run.
HEADROOM = 0.9


def enable_gradient_checkpointing(network) -> int:
    """Recompute each encoder/decoder stage's activations in the backward pass (saves memory, costs ~30 % time).
    The stages' ``forward`` is wrapped in place, so state_dict keys do not change. Returns the number of stages."""
    from torch.utils.checkpoint import checkpoint

    stages = list(getattr(network.encoder, "stages", [])) + list(getattr(network.decoder, "stages", []))
    for stage in stages:
        if getattr(stage, "_sslseg_checkpointed", False):
            continue
        original = stage.forward

        def forward(x, _original=original):
            import torch

            if torch.is_grad_enabled() and (x.requires_grad or
                                            any(p.requires_grad for p in _original.__self__.parameters())):
                return checkpoint(_original, x, use_reentrant=False)
            return _original(x)

        stage.forward = forward
        stage._sslseg_checkpointed = True
    return len(stages)


def is_out_of_memory(error: BaseException) -> bool:
    """The allocator's OutOfMemoryError, or a library's failed allocation that PyTorch raises as a plain
    RuntimeError (cuDNN's ``CUDNN_STATUS_ALLOC_FAILED``, cuBLAS's ``CUBLAS_STATUS_ALLOC_FAILED``, "out of memory")."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)


def peak_training_memory(network, in_channels, patch, batch_size, device, precision=None) -> float:
    """Bytes of GPU memory reserved at the peak of one real training step's forward/backward pass: the network with
    deep supervision as it trains, the training loss (Dice + cross-entropy over every supervised output, whose
    one-hot targets grow with the class count), the weights and gradients (inf when it runs out). Reserved, not
    allocated: the caching allocator's blocks are what the card gives up, and what
    ``torch.cuda.max_memory_reserved`` reports for the run. cuDNN's autotuner is off while it measures: its
    trial workspaces are not what the run keeps."""
    import torch

    from sslseg.device import mixed_precision
    from sslseg.finetuning.loss import deep_supervision_weights, make_loss_function, supervised_loss

    precision = precision or mixed_precision(device)
    classes = int(getattr(network.decoder, "num_classes", 2) or 2)
    weights = deep_supervision_weights(len(getattr(network.decoder, "stages", [])) or 1)
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    x = labels = out = loss = None
    try:
        x = torch.zeros((batch_size, in_channels, *patch), device=device)
        labels = torch.randint(0, classes, (batch_size, 1, *patch), device=device)
        with torch.autocast("cuda", dtype=precision.dtype, enabled=precision.enabled):
            out = network(x)
            loss = supervised_loss(out, labels, make_loss_function(), weights)
        loss.backward()
        return float(torch.cuda.max_memory_reserved(device))
    except RuntimeError as error:  # OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        return float("inf")
    finally:
        network.zero_grad(set_to_none=True)
        x = labels = out = loss = None  # noqa: F841 - free the probe's tensors
        torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = autotune


@dataclass
class MemoryFit:
    """What fitting gave: the patch and batch to train with, whether gradient checkpointing is on, the limit and
    the estimated peak (bytes)."""
    patch: list
    batch_size: int
    checkpointing: bool
    limit: float
    estimate: float

    def to_dict(self) -> dict:
        return {"limit_gb": round(self.limit / 2 ** 30, 2), "fitted_estimate_gb": round(self.estimate / 2 ** 30, 2)}


def fit_to_memory(network, in_channels, patch, batch_size, stride, device, limit_gb, reporter, precision=None,
                  state_copies: int = 1) -> MemoryFit:
    """On CUDA: measure a full forward/backward pass and shrink until it fits under ``limit_gb`` (default 90 % of the
    card) with ``HEADROOM`` to spare: first gradient checkpointing, then the batch, then the patch (largest axis
    first). ``state_copies``: copies of the weights the optimiser keeps (SGD momentum 1, AdamW 2)."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    limit = float(limit_gb) * 2 ** 30 if limit_gb else 0.9 * total
    checkpointing = False
    patch = list(patch)
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    while True:
        estimate = peak_training_memory(network, in_channels, patch, batch_size, device, precision) + \
            state_copies * params
        if estimate <= HEADROOM * limit:
            return MemoryFit(patch, batch_size, checkpointing, limit, estimate)
        if not checkpointing:
            enable_gradient_checkpointing(network)
            checkpointing = True
            reporter.log("GPU memory: enabling gradient checkpointing")
        elif batch_size > 1:
            batch_size -= 1
            reporter.log(f"GPU memory: batch size reduced to {batch_size}")
        else:
            axis = int(np.argmax(patch))
            if patch[axis] - stride[axis] < 2 * stride[axis]:
                raise UserError(f"the network does not fit in {limit / 2 ** 30:.1f} GB of GPU memory even with "
                                f"batch 1 and a small patch; raise --max-memory-gb or use a smaller preset")
            patch[axis] -= stride[axis]
            reporter.log(f"GPU memory: patch reduced to {patch}")


def hold_to_limit(device, limit: float) -> None:
    """Make the limit binding for the run: the caching allocator frees its cache and retries before it would
    reserve beyond ``limit`` bytes (``torch.cuda.set_per_process_memory_fraction``)."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(limit) / total), device)
    torch.cuda.reset_peak_memory_stats(device)


def release_limit(device) -> None:
    import torch

    torch.cuda.set_per_process_memory_fraction(1.0, device)


def peaks(device) -> dict:
    """The run's GPU memory peaks so far (GB): reserved (what the card gave up) and allocated (tensors)."""
    import torch

    return {"peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 2),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)}
