"""Every registered method (so every loss) under DDP on W real processes (gloo, 127.0.0.1): the mean of
the ranks' losses, every parameter gradient and every buffer the step updates (DINO's center) equal
those of one process on the concatenated batch.

BatchNorm is removed (batch statistics are per rank unless engine.sync_bn: test_sync_bn.py) and
everything runs in float64, so the comparison is exact to rounding. Each batch has a local crop,
so the multi-crop pairs are covered too (RotNet has its four rotations instead).
"""


import pytest
import torch
from method_helpers import (
    TINY_CHAIN,
    VIT_ONLY,
    ddp_step,
    float64_method,
    on_gloo_ranks,
    whole_batch_runs,
)
from tolerance import rounding_bound

from trainer.methods import METHODS

NAMES = tuple(sorted(set(METHODS) - VIT_ONLY))  # MAE (per-sample loss, a ViT): tests/methods/test_mae.py
PER_RANK = 2


def trainable_grads(method):
    return {name: p.grad.clone() for name, p in method.named_parameters() if p.requires_grad}


def buffers(method):
    return {name: b.clone() for name, b in method.named_buffers()}


def outcome(method, loss):
    return loss, trainable_grads(method), buffers(method)


def rank_results(rank, world_size, inputs):
    results = {}
    for name in NAMES:
        state, views = inputs[name]
        method, _ = float64_method(name)
        method.load_state_dict(state)
        results[name] = outcome(method, ddp_step(method, views, rank, world_size))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_equals_one_process_on_the_whole_batch(world_size, tmp_path):
    inputs, want = whole_batch_runs(NAMES, world_size * PER_RANK, outcome)
    got = on_gloo_ranks(world_size, tmp_path, rank_results, inputs)
    for name in NAMES:
        (loss, grads, bufs), (ref_loss, ref_grads, ref_bufs) = got[name], want[name]
        # float64 throughout: the ranks sum the same terms in another order, each result within
        # eps64 x its size x the chain (loss: its own size; gradients: the method's largest; buffers: theirs)
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=rounding_bound(torch.float64, ref_loss.abs().item(),
                                   TINY_CHAIN), msg=lambda m, name=name: f"{name} loss: {m}")
        assert grads.keys() == ref_grads.keys()
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for key in grads:
            assert ref_grads[key].abs().max() > 0, f"{name} {key}: no gradient to compare"
            torch.testing.assert_close(grads[key], ref_grads[key], rtol=0,
                                       atol=rounding_bound(torch.float64, scale, TINY_CHAIN),
                                       msg=lambda m, what=f"{name} {key}": f"{what}: {m}")
        assert bufs.keys() == ref_bufs.keys()
        for key in bufs:  # DINO's center: updated from the teacher outputs of the global batch
            bound = rounding_bound(torch.float64, ref_bufs[key].abs().max().item(), TINY_CHAIN)
            torch.testing.assert_close(bufs[key], ref_bufs[key], rtol=0, atol=bound,
                                       msg=lambda m, what=f"{name} {key}": f"{what}: {m}")
