"""A simulated CUDA device for tests on machines without a GPU: torch.cuda's queries answer as one (or more) GPUs
would, and every ``torch.cuda.*`` call the engine makes is recorded with its arguments and checked the way PyTorch
checks them, so that a call a real GPU would reject fails here too.

The checks reuse PyTorch's own argument parser (``torch.cuda._utils._get_device_index``) with the strictness each
function has in PyTorch's sources: ``set_device`` and ``set_per_process_memory_fraction`` need a device with an
index (``cuda:N`` or an int; a bare ``torch.device("cuda")`` raises ``ValueError: Expected a torch.device with a
specified index``), the queries accept a bare ``cuda`` as the current device.

Nothing here runs a kernel: tensors cannot be moved to the simulated device. Tests drive the branches that decide
(device, precision, memory limits, loader settings, window batches), not the arithmetic.

Example::

    with simulated_cuda(monkeypatch, devices=1, total_gb=80) as gpu:
        device, note = resolve_device("auto")
        torch.cuda.set_device(device)
    assert gpu.calls_to("set_device") == [(torch.device("cuda:0"),)]
"""

from __future__ import annotations

import contextlib
import time
import types

import torch
from torch.cuda._utils import _get_device_index

GB = 2 ** 30
# torch.cuda functions that take a device and parse it without ``optional=True`` (PyTorch's sources).
STRICT = {"set_device", "set_per_process_memory_fraction"}


class FakeEvent:
    """``torch.cuda.Event(enable_timing=True)`` on the host clock: ``record`` stamps the time, ``elapsed_time`` is
    in milliseconds; ``query`` says finished."""

    def __init__(self, enable_timing: bool = False, **_):
        self.enable_timing = enable_timing
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def query(self) -> bool:
        return self.time is not None

    def synchronize(self):
        pass

    def elapsed_time(self, end) -> float:
        return (end.time - self.time) * 1000.0


class SimulatedGPU:
    """The state behind the patched queries: ``devices`` GPUs of ``total`` bytes, ``allocated``/``reserved``
    bytes in use, the peaks, a current device and every call (name, args)."""

    def __init__(self, devices: int, total_gb: float, bf16: bool, name: str):
        self.devices, self.total, self.bf16, self.name = devices, int(total_gb * GB), bf16, name
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.free = self.total
        self.current = 0
        self.fraction = {}
        self.calls = []

    def calls_to(self, name: str) -> list:
        return [args for called, args in self.calls if called == name]

    def index(self, name: str, device) -> int:
        """The device index as PyTorch derives it for ``name`` (raises as PyTorch would), checked against the
        count."""
        index = _get_device_index(device, optional=name not in STRICT)
        if not 0 <= index < self.devices:
            raise RuntimeError(f"torch.cuda.{name}: invalid device ordinal {index}")
        return index


def _install(monkeypatch, gpu: SimulatedGPU):
    def record(name, *args):
        gpu.calls.append((name, args))

    def query(name, value):
        def function(device=None):
            record(name, device)
            gpu.index(name, device)
            return value() if callable(value) else value
        return function

    def set_device(device):
        record("set_device", device)
        gpu.current = gpu.index("set_device", device)

    def set_fraction(fraction, device=None):
        record("set_per_process_memory_fraction", fraction, device)
        if not isinstance(fraction, float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"Invalid fraction value: {fraction}")
        gpu.fraction[gpu.index("set_per_process_memory_fraction", device)] = fraction

    def reset_peaks(device=None):
        record("reset_peak_memory_stats", device)
        gpu.index("reset_peak_memory_stats", device)
        gpu.peak_allocated, gpu.peak_reserved = gpu.allocated, gpu.reserved

    def properties(device=None):
        record("get_device_properties", device)
        gpu.index("get_device_properties", device)
        return types.SimpleNamespace(name=gpu.name, total_memory=gpu.total, major=9, minor=0,
                                     multi_processor_count=132)

    cuda = torch.cuda
    patches = {
        "is_available": lambda: True,
        "device_count": lambda: gpu.devices,
        "current_device": lambda: gpu.current,
        "is_bf16_supported": lambda including_emulation=True: gpu.bf16,
        "get_device_name": query("get_device_name", lambda: gpu.name),
        "get_device_properties": properties,
        "set_device": set_device,
        "set_per_process_memory_fraction": set_fraction,
        "reset_peak_memory_stats": reset_peaks,
        "memory_allocated": query("memory_allocated", lambda: gpu.allocated),
        "memory_reserved": query("memory_reserved", lambda: gpu.reserved),
        "max_memory_allocated": query("max_memory_allocated", lambda: gpu.peak_allocated),
        "max_memory_reserved": query("max_memory_reserved", lambda: gpu.peak_reserved),
        "mem_get_info": query("mem_get_info", lambda: (gpu.free, gpu.total)),
        "empty_cache": lambda: record("empty_cache"),
        "synchronize": query("synchronize", None),
        "Event": FakeEvent,
    }
    for name, value in patches.items():
        monkeypatch.setattr(cuda, name, value)


@contextlib.contextmanager
def simulated_cuda(monkeypatch, devices: int = 1, total_gb: float = 80.0, bf16: bool = True,
                   name: str = "NVIDIA H100 80GB HBM3 (simulated)"):
    """Patch torch.cuda for the ``with`` block (monkeypatch undoes it at the test's end too)."""
    gpu = SimulatedGPU(devices, total_gb, bf16, name)
    benchmark = torch.backends.cudnn.benchmark
    _install(monkeypatch, gpu)
    try:
        yield gpu
    finally:
        torch.backends.cudnn.benchmark = benchmark
        monkeypatch.undo()
