"""The global sample order of an epoch, and which positions of it each rank reads.

Epoch e of a dataset with shards S_0..S_{k-1} is laid out as follows:

1. the shards are permuted with a generator seeded by (seed, e);
2. walking that shard order, consecutive shards are grouped into *windows* of
   at least ``window_bytes`` (the last window may be smaller);
3. within each window, all its samples are permuted with a generator seeded by
   (seed, e, window index).

The concatenation of the windows is the epoch's global order, a permutation of
all N samples. Readers need only the shards of the current window (and prefetch
the next), so reads stay sequential and memory stays bounded, while samples are
mixed across ``window_bytes`` of data. With ``shuffle=False`` the order is the
manifest's. A position p in [0, N) indexes this order; rank r of w reads
positions ``c + r + k*w`` for k = 0 .. (N - c) // w - 1, where c is where the
epoch was resumed (0 for a fresh epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """Windows of one epoch: window j holds shards ``windows[j]`` and positions [starts[j], starts[j+1])."""
    epoch: int
    windows: list[np.ndarray]
    starts: np.ndarray

    def window_of(self, position: int) -> int:
        return int(np.searchsorted(self.starts, position, side="right") - 1)


class EpochOrder:
    """Order of every epoch of one dataset for a seed; pure and cheap to rebuild on any rank."""

    def __init__(self, shard_samples: list[int], shard_bytes: list[int], seed: int, shuffle: bool = True,
                 window_bytes: int = 256 << 20):
        self.samples = np.asarray(shard_samples, dtype=np.int64)
        self.bytes = np.asarray(shard_bytes, dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.samples)])  # global id of each shard's first sample
        self.num_samples = int(self.first[-1])
        self.seed, self.shuffle, self.window_bytes = int(seed), bool(shuffle), max(1, int(window_bytes))

    def plan(self, epoch: int) -> EpochPlan:
        """The shard windows of epoch."""
        n = len(self.samples)
        shards = (np.random.default_rng([self.seed, epoch, 0]).permutation(n) if self.shuffle
                  else np.arange(n))
        windows, current, size = [], [], 0
        for s in shards:
            current.append(int(s))
            size += int(self.bytes[s])
            if size >= self.window_bytes:
                windows.append(np.asarray(current, dtype=np.int64))
                current, size = [], 0
        if current:
            windows.append(np.asarray(current, dtype=np.int64))
        counts = [int(self.samples[w].sum()) for w in windows]
        return EpochPlan(epoch, windows, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    def window_ids(self, plan: EpochPlan, j: int) -> np.ndarray:
        """Global sample ids of window j, in the order its positions read them."""
        ids = np.concatenate([np.arange(self.first[s], self.first[s + 1]) for s in plan.windows[j]])
        if self.shuffle:
            ids = ids[np.random.default_rng([self.seed, plan.epoch, 1, j]).permutation(len(ids))]
        return ids

    def global_order(self, epoch: int) -> np.ndarray:
        """The whole permutation of epoch (for tests and tools; readers go window by window)."""
        plan = self.plan(epoch)
        return np.concatenate([self.window_ids(plan, j) for j in range(len(plan.windows))])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, index within the shard) of global sample ids."""
        shard = np.searchsorted(self.first, ids, side="right") - 1
        return shard, ids - self.first[shard]


def rank_rounds(num_samples: int, consumed: int, world_size: int) -> int:
    """How many samples each rank reads from global position consumed to the epoch's end."""
    return max(0, (num_samples - consumed) // world_size)
