"""Training order and augmentation as pure functions of ``(seed, epoch, patch)``.

A resumed run must equal one that never stopped. Lightning restores weights, optimiser and
loop counters, but not the random streams behind shuffling and augmentation (the global
torch generator, each loader worker's seed), so an epoch after a resume would see other
batches and other augmentations. Here nothing depends on those streams: the sampler draws
epoch ``e``'s order from a generator seeded by ``(seed, e)`` and hands each index to the
dataset together with that epoch's stream key, and the dataset seeds the patch's
augmentation from ``(key, index)``. The same holds for any number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def stream_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers (numpy's SeedSequence: nearby inputs, unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def unpack(key) -> tuple[int, int | None]:
    """``index`` or ``(stream, index)`` (from :class:`EpochSampler`) -> ``(index, seed or None)``."""
    if isinstance(key, (tuple, list)):
        stream, index = key
        return int(index), stream_seed(stream, index)
    return int(key), None


class EpochSampler(DistributedSampler):
    """Shuffled (or class-balanced) training order, a pure function of ``(seed, epoch)``.

    Yields ``(stream, index)`` pairs, ``stream`` naming this epoch's augmentation stream.
    A :class:`~torch.utils.data.DistributedSampler`, so under DDP each rank takes its share
    (padded as torch does) and Lightning calls :meth:`set_epoch` without wrapping it.

    Args:
        weights: per-item sampling weights: draw ``len(dataset)`` items with replacement
            (balanced sampling); None = a permutation.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, weights: Sequence[float] | None = None):
        ranked = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if ranked else 1,
                         rank=dist.get_rank() if ranked else 0, shuffle=True, seed=int(seed))
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = stream_seed(self.seed, self.epoch)
        generator = torch.Generator().manual_seed(stream)
        n = len(self.dataset)
        if self.weights is None:
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, n, replacement=True, generator=generator).tolist()
        order += order[: self.total_size - len(order)]  # pad to share evenly across ranks
        return iter([(stream, i) for i in order[self.rank : self.total_size : self.num_replicas]])
