"""One device resolver for every command (fine-tuning, prediction, pretraining, the demo), the CPU thread choice,
and the mixed-precision choice.

Example::

    device, note = resolve_device("auto")          # CUDA when PyTorch sees a GPU, else the CPU with a note
    precision = mixed_precision(device)            # bf16 on GPUs that support it, fp16 + GradScaler elsewhere
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sslseg.errors import UserError

DEVICE_CHOICES = "auto, cuda, cuda:N or cpu"


def _busy_cores(interval: float = 0.3):
    """Cores kept busy by other processes right now, from two readings of /proc/stat (Linux); None elsewhere.
    Unlike the load average this does not remember the previous run of our own."""
    def read():
        with open("/proc/stat", encoding="ascii") as stream:
            values = [int(v) for v in stream.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def configure_cpu_threads() -> str:
    """Pick torch's CPU thread count. OpenMP threads that outnumber the free cores spin against each other: on our
    2-core machine, busy with other jobs, a training step took ~25 s with 2 threads and ~8 s with 1 (see
    docs/benchmarks.md). Unless ``OMP_NUM_THREADS`` or ``SSLSEG_THREADS`` says otherwise, use the cores that other
    processes leave free right now (at least one)."""
    import torch

    cores = os.cpu_count() or 1
    explicit = os.environ.get("SSLSEG_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if explicit and explicit.isdigit() and int(explicit) > 0:
        threads = int(explicit)
        why = "as set in the environment"
    else:
        busy = _busy_cores()
        if busy is None:
            threads, why = torch.get_num_threads(), f"{cores} core(s)"
        else:
            threads = max(1, min(torch.get_num_threads(), int(round(cores - busy))))
            why = f"{cores} core(s), {busy:.1f} busy with other work"
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return f"{threads} thread(s) ({why})"


def parse_device(device) -> str:
    """Check a device string without importing torch: ``auto`` (or None/""), ``cpu``, ``cuda`` or ``cuda:N``."""
    text = "auto" if device in (None, "") else str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise UserError(f"unknown device {device!r} (choose {DEVICE_CHOICES})")


def device_type(device="auto") -> str:
    """``cuda`` or ``cpu``: where ``device`` would run, without side effects (no thread change, no CUDA context)."""
    text = parse_device(device)
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if text.startswith("cuda") else "cpu"


def resolve_device(device="auto", local_rank: int | None = None):
    """The torch device to run on and a one-line note for the user. ``auto`` picks CUDA when PyTorch sees a GPU;
    ``local_rank`` (under torchrun) picks that process's GPU. A CUDA device always carries its index
    (``cuda:N``). Asking for CUDA without one is a clear error."""
    import torch

    text = parse_device(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible to PyTorch (is a CPU-only torch "
                            "installed? see README); use --device cpu")
        if text == "cuda":
            # Always an indexed device: torch.cuda.set_device and set_per_process_memory_fraction reject a bare
            # torch.device("cuda") ("Expected a torch.device with a specified index").
            text = f"cuda:{torch.cuda.current_device() if local_rank is None else local_rank}"
        torch_device = torch.device(text)
        if torch_device.index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
        precision = mixed_precision(torch_device)
        return torch_device, f"CUDA: {torch.cuda.get_device_name(torch_device)}, {precision.name} mixed precision"
    note = (f"running on CPU with {configure_cpu_threads()}, no mixed precision: expect minutes where a GPU "
            f"takes seconds")
    return torch.device("cpu"), note


@dataclass(frozen=True)
class Precision:
    """What autocast does on a device: ``enabled``, its ``dtype`` and whether a GradScaler is needed (fp16 only)."""
    enabled: bool
    dtype: object  # torch.dtype
    use_scaler: bool

    @property
    def name(self) -> str:
        return {True: str(self.dtype).replace("torch.", ""), False: "no"}[self.enabled]


def mixed_precision(device, bf16_supported: bool | None = None) -> Precision:
    """bf16 autocast without a scaler on GPUs that support it (Ampere and later), fp16 + GradScaler on older ones,
    none on the CPU (fp32). ``bf16_supported`` overrides the query (tests)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return Precision(False, torch.float32, False)
    if bf16_supported is None:
        bf16_supported = bool(torch.cuda.is_bf16_supported())
    if bf16_supported:
        return Precision(True, torch.bfloat16, False)
    return Precision(True, torch.float16, True)
