"""Which samples each rank reads at each step: the one place distribution of data is decided.

Training: one permutation of all N samples per epoch, drawn from (seed, epoch) only, so every rank
computes the same one without communicating. Global batch s is permutation[s*W*B : (s+1)*W*B] and
rank r takes slice r of it. Every sample is read exactly once per epoch across the W ranks, except
the N mod (W*B) samples past the last full global batch, which are dropped (a different set each
epoch). Every rank gets the same number of steps, and for a fixed global batch W*B the global batches
do not depend on W.

Evaluation: samples in manifest order, rank r takes the r-th of W contiguous chunks (sizes differ by
at most one), batches of B with a short last one; nothing is dropped.
"""

from __future__ import annotations

import numpy as np


def epoch_seed(*parts: int) -> int:
    """A 31-bit seed from integers (seed, epoch, rank, step...): DALI wants a non-negative int32."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


class Plan:
    def __init__(self, num_samples: int, batch_size: int, global_rank: int, world_size: int, seed: int, train: bool):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.batch_size, self.train = num_samples, batch_size, train
        self.global_rank, self.world_size, self.seed = global_rank, world_size, seed
        if train:
            self.steps_per_epoch = num_samples // (batch_size * world_size)
            if self.steps_per_epoch == 0:
                raise ValueError(f"{num_samples} samples cannot fill one global batch of {batch_size} x "
                                 f"{world_size} ranks; lower the batch size")
        else:
            self._chunk = np.array_split(np.arange(num_samples), world_size)[global_rank]
            self.steps_per_epoch = -(-len(self._chunk) // batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's sample indices for each step of `epoch`: steps_per_epoch arrays of int64."""
        if not self.train:
            return [self._chunk[s : s + self.batch_size] for s in range(0, len(self._chunk), self.batch_size)]
        order = np.random.default_rng(epoch_seed(self.seed, epoch)).permutation(self.num_samples)
        b, w = self.batch_size, self.world_size
        return [order[(s * w + self.global_rank) * b : (s * w + self.global_rank + 1) * b]
                for s in range(self.steps_per_epoch)]
