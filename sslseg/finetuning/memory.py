"""Fitting a training step into GPU memory: measure a real forward/backward pass, then trade time for memory
(gradient checkpointing, Chen et al., "Training deep nets with sublinear memory cost", 2016), then shrink the batch,
then the patch, the order in which nnU-Net's planner gives things up (Isensee et al., Nature Methods 2021)."""

from __future__ import annotations

import numpy as np

from sslseg.errors import UserError


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


def peak_training_memory(network, in_channels, patch, batch_size, device) -> float:
    """Bytes a mixed-precision forward/backward pass of one batch adds on ``device`` (inf when it runs out)."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    x = out = loss = None
    try:
        x = torch.zeros((batch_size, in_channels, *patch), device=device)
        with torch.autocast("cuda", dtype=torch.float16):
            out = network(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = out.float().mean()
        loss.backward()
        return torch.cuda.max_memory_allocated(device) - base
    except torch.cuda.OutOfMemoryError:
        return float("inf")
    finally:
        network.zero_grad(set_to_none=True)
        x = out = loss = None  # noqa: F841 - free the probe's tensors
        torch.cuda.empty_cache()


def fit_to_memory(network, in_channels, patch, batch_size, stride, device, limit_gb, reporter):
    """On CUDA: measure a full forward/backward pass and shrink until it fits under ``limit_gb`` (default 90 % of the
    card): first gradient checkpointing, then the batch, then the patch (largest axis first). Returns
    (patch, batch_size, checkpointing)."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    limit = float(limit_gb) * 2 ** 30 if limit_gb else 0.9 * total
    checkpointing = False
    patch = list(patch)
    while True:
        peak = peak_training_memory(network, in_channels, patch, batch_size, device)
        # optimiser state (SGD momentum: one copy of the weights) and the data come on top of the probe
        params = sum(p.numel() * p.element_size() for p in network.parameters())
        if peak + 2 * params <= limit:
            return patch, batch_size, checkpointing
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

