"""A run saved on W ranks resumes on another world size (same global batch): the data position is a global
sample index, so the rest of the epoch is every sample not yet seen, once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from trainer.data.sampling import Plan

N, GLOBAL, SEED, EPOCH, DONE = 203, 16, 7, 3, 5  # 203 samples, 12 full global batches; saved after 5 of them


def seen(world: int, accumulation: int, steps: slice) -> list[int]:
    """Sample indices every rank reads in optimizer steps `steps` of the epoch (micro-batches of per-device
    GLOBAL / (world x accumulation), as the loop fetches them)."""
    per_device = GLOBAL // (world * accumulation)
    out = []
    for rank in range(world):
        micro = Plan(N, per_device, rank, world, SEED, train=True).batches(EPOCH)
        stop = steps.stop or len(micro) // accumulation  # the loop runs whole optimizer steps only
        out += np.concatenate(micro[steps.start * accumulation: stop * accumulation]).tolist()
    return out


@pytest.mark.parametrize(("saved", "resumed"), [(4, 2), (4, 1), (2, 4), (1, 4), (2, 2)])
@pytest.mark.parametrize(("saved_acc", "resumed_acc"), [(1, 1), (2, 1), (1, 4)])
def test_rest_of_the_epoch_is_each_unseen_sample_once(saved, resumed, saved_acc, resumed_acc):
    reference = Counter(seen(1, 1, slice(0, None)))  # one process, one uninterrupted epoch
    assert len(reference) == (N // GLOBAL) * GLOBAL and set(reference.values()) == {1}
    before = seen(saved, saved_acc, slice(0, DONE))
    after = seen(resumed, resumed_acc, slice(DONE, None))
    assert len(before) == DONE * GLOBAL
    assert not set(before) & set(after)  # nothing seen twice
    assert Counter(before + after) == reference  # everything seen, once
