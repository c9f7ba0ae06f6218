"""Running under torchrun and being stopped politely.

:class:`Distributed` reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and wraps the few
collective calls a run needs (NCCL on GPUs, gloo on the CPU; see the PyTorch ``torch.distributed`` documentation);
with one process every call is a no-op. :class:`CancelRequest` turns SIGTERM (the SSLPretrain module's Cancel, a
cluster scheduler's pre-emption) into a flag the training loop checks after each step, so the run saves a
checkpoint to resume from instead of dying mid-write.

Example::

    dist = Distributed()
    with CancelRequest() as cancel:
        ...
        if cancel.requested:
            save_and_stop()
"""

from __future__ import annotations

import os
import signal


class Distributed:
    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device_type: str):
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float, device) -> float:
        """The mean of ``value`` over all ranks."""
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class CancelRequest:
    """While entered, SIGTERM sets :attr:`requested` instead of ending the process (the previous handler comes
    back on exit). Outside the main thread signals cannot be caught; then it never fires."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False
