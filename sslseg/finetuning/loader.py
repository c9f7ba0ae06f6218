"""Feeding the training step: the batch of step ``s`` is ``sampler.batch_for_step(s)`` (seeded by the run's seed and
``s`` alone), so batches can be built anywhere, in any order, and are the same whoever builds them.

- On CUDA, worker processes build the next batches while the GPU trains on the current one: a step-indexed
  map-style dataset under a ``torch.utils.data.DataLoader`` (persistent workers, prefetch, pinned memory), copied
  to the GPU with ``non_blocking`` (the shape of PyTorch's data-loading guide, and of nnU-Net's background
  augmenter, Isensee et al., Nature Methods 2021). One augmented batch of two 160^3 patches costs about as many
  CPU-seconds as a GPU step: built in the training thread, the GPU would wait for it.
- On the CPU the batch is built in the training thread (0 workers): every core already works on the step, and a
  worker would only take cores from it. ``SSLSEG_LOADER_WORKERS`` overrides the worker count (0 turns the loader
  off, e.g. to compare).

``DataWait`` measures how much of the training time the device waits for data: on CUDA from events on the GPU's
own timeline (the gap between one step's last kernel and the next step's first), on the CPU from the time spent
building batches.

Example::

    feed = BatchFeed(sampler, torch.device("cuda"))
    images, labels = feed.batch(step)       # on the device, ready for the forward pass
    ...                                     # forward, backward, optimiser step
    feed.clock.step_ended()
    feed.close()
"""

from __future__ import annotations

import itertools
import os
import time

import torch

WORKERS_ENV = "SSLSEG_LOADER_WORKERS"
MAX_WORKERS = 8
# Batches in flight per worker. They wait in shared (then pinned) memory: 8 workers x 2 batches of two 160^3
# patches are about 0.7 GB; more would risk a container's small /dev/shm for little gain.
PREFETCH = 2


class StepBatches(torch.utils.data.Dataset):
    """``batches[step]`` = ``(step, images, labels)`` of ``sampler.batch_for_step(step)``, the labels (class
    indices) as uint8: an eighth of int64's bytes through shared memory, pinned memory and the copy to the GPU.
    Endless: the DataLoader's sampler says which steps."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, step):
        images, labels = self.sampler.batch_for_step(int(step))
        return int(step), images, labels.to(torch.uint8)


class StepsFrom(torch.utils.data.Sampler):
    """The steps ``first, first + 1, ...`` without end: the training loop stops when its schedule ends, which a time
    limit may move."""

    def __init__(self, first: int = 0):
        self.first = int(first)

    def __iter__(self):
        return itertools.count(self.first)


def loader_workers(device, cores: int | None = None) -> int:
    """Worker processes: ``SSLSEG_LOADER_WORKERS`` when set; on CUDA the cores less two (the training process and
    the pinning thread), at least 1 and at most ``MAX_WORKERS``; 0 on the CPU."""
    explicit = os.environ.get(WORKERS_ENV, "").strip()
    if explicit.isdigit():
        return int(explicit)
    if getattr(device, "type", str(device)) != "cuda":
        return 0
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_WORKERS, int(cores) - 2))


class DataWait:
    """The share of training time the device waits for data. Call ``batch_requested`` before the batch is fetched,
    ``step_started`` when it is on its way to the device, ``step_ended`` after the optimiser step, ``pause`` after
    other work (validation: its time is not a wait for data), and ``collect`` now and then (it reads only finished
    CUDA events: no synchronisation).

    On the CPU the wait is the time spent building or fetching the batch. On CUDA the GPU's idle gap between two
    steps counts only as far as the host was itself blocked fetching the batch in that gap: the rest of a gap is the
    host's other work (progress, logging, the time budget), not data."""

    def __init__(self, device):
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.waited = 0.0
        self.worked = 0.0
        self._pending = []  # CUDA: (previous step's end or None, start, end, host seconds blocked on the batch)
        self._previous_end = None
        self._requested = self._started = None
        self._host_wait = 0.0

    def batch_requested(self):
        self._requested = time.perf_counter()

    def step_started(self):
        if self.cuda:
            self._host_wait = time.perf_counter() - self._requested
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()
            self.waited += self._started - self._requested

    def step_ended(self):
        if not self.cuda:
            self.worked += time.perf_counter() - self._started
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((self._previous_end, self._started, end, self._host_wait))
        self._previous_end = end

    def pause(self):
        self._previous_end = None

    def collect(self, wait: bool = False):
        """Add the finished steps' times (``wait``: synchronise first, at the end of a run)."""
        if wait and self._pending:
            self._pending[-1][2].synchronize()
        while self._pending and self._pending[0][2].query():
            previous, start, end, host_wait = self._pending.pop(0)
            if previous is not None:
                self.waited += min(previous.elapsed_time(start) / 1000.0, host_wait)
            self.worked += start.elapsed_time(end) / 1000.0

    def share(self):
        """Waited / (waited + worked), or None before any step."""
        self.collect(wait=True)
        total = self.waited + self.worked
        return self.waited / total if total > 0 else None


class BatchFeed:
    """The batches of steps ``first_step, first_step + 1, ...`` on ``device``, in that order."""

    def __init__(self, sampler, device, first_step: int = 0, workers: int | None = None):
        self.sampler = sampler
        self.device = device
        self.workers = loader_workers(device) if workers is None else int(workers)
        self.pin_memory = getattr(device, "type", str(device)) == "cuda"
        self.next_step = int(first_step)
        self.clock = DataWait(device)
        self._iterator = None
        if self.workers > 0:
            loader = torch.utils.data.DataLoader(
                StepBatches(sampler), batch_size=None, sampler=StepsFrom(first_step), num_workers=self.workers,
                pin_memory=self.pin_memory, persistent_workers=True, prefetch_factor=PREFETCH)
            self._iterator = iter(loader)

    def _build(self, step: int):
        if self._iterator is not None:
            got, images, labels = next(self._iterator)
            if got != step:
                raise RuntimeError(f"the data loader delivered step {got} for step {step}")
            return images, labels
        images, labels = self.sampler.batch_for_step(step)
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def batch(self, step: int):
        """(images, labels) of ``step`` on the device; steps come in order."""
        if step != self.next_step:
            raise RuntimeError(f"batch of step {step} asked for; the next is {self.next_step}")
        self.clock.batch_requested()
        images, labels = self._build(step)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True).long()
        self.clock.step_started()
        self.next_step += 1
        return images, labels

    def describe(self) -> str:
        if not self.workers:
            return "batches built in the training process"
        return f"{self.workers} loader process(es), {PREFETCH} batches ahead each" + \
            (", pinned memory" if self.pin_memory else "")

    def close(self):
        """Stop the worker processes (the batches prefetched beyond the last step are dropped)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
