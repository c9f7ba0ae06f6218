"""Training batches as a map-style dataset indexed by step: ``batches[step]`` is the whole batch of that step,
drawn from a generator seeded with ``(seed, rank, step)`` (see :mod:`sslseg.pretraining.data`). A DataLoader with
``batch_size=None`` and ``sampler=range(first_step, steps)`` runs it in worker processes.
"""

from __future__ import annotations

import numpy as np
import torch

from sslseg.pretraining import volume_fusion
from sslseg.pretraining.data import sample_patch


class PretrainBatches(torch.utils.data.Dataset):
    def __init__(self, volumes, method: str, patch, batch_size: int, seed: int, rank: int,
                 volf_variant: str = "pymic", augment: bool = True):
        self.volumes = list(volumes)
        self.method = method
        self.patch = [int(p) for p in patch]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.volf_variant = volf_variant
        self.augment = augment
        self._arrays = {}

    def __len__(self):
        return 2**62  # indexed by step; the sampler bounds it

    def _array(self, index):
        # memory-mapped per process (workers open their own maps)
        if index not in self._arrays:
            self._arrays[index] = self.volumes[index].load()
        return self._arrays[index]

    def rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, int(step)])

    def __getitem__(self, step):
        rng = self.rng(step)
        picks = rng.integers(0, len(self.volumes), size=self.batch_size)
        images, labels = [], []
        for index in picks:
            volume = self.volumes[index]
            array = self._array(int(index))
            if self.method == "volf":
                if self.volf_variant == "paper":
                    other_index = int(rng.integers(0, len(self.volumes)))
                    other = self.volumes[other_index]
                    image, label = volume_fusion.fuse_paper(array, self._array(other_index), self.patch, rng,
                                                            (volume.background, other.background))
                else:
                    image, label = volume_fusion.fuse_pymic(array, self.patch, rng, volume.background)
                labels.append(label)
            else:
                image = sample_patch(array, self.patch, rng, volume.background, augment=self.augment)
            images.append(image)
        batch = {"image": torch.from_numpy(np.stack(images)[:, None].astype(np.float32)), "step": int(step)}
        if labels:
            batch["label"] = torch.from_numpy(np.stack(labels)[:, None])
        return batch
