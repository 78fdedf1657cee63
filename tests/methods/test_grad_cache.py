"""Exact gradient accumulation (gradient cache) for every method whose loss couples samples: at
(W ranks, A micro-batches) = (1, 4), (2, 2), (4, 1) the DDP engine's loss and every parameter
gradient equal one process's on the whole batch; plain accumulation, for contrast, does not.

BatchNorm is removed (it normalizes each micro-batch by its own statistics by design) and everything
runs in float64, so only regrouped sums separate the two sides. Ranks are real processes (gloo).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist
from method_helpers import TINY_CHAIN, float64_method, on_gloo_ranks, whole_batch_runs
from tolerance import rounding_bound

from trainer.config import Config, EngineConfig, OptimConfig, TrainConfig
from trainer.dist import DistContext
from trainer.engine import build_engine, make_plan
from trainer.methods import METHODS
from trainer.types import Batch

COUPLED = [name for name, cls in METHODS.items() if cls.couples_samples]
GLOBAL_BATCH = 8


def grads_of(method):
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def engine_for(method, world_size, accumulation, ctx):
    cfg = Config(optim=OptimConfig(name="sgd", base_lr=0.1), engine=EngineConfig(name="ddp"),
                 train=TrainConfig(global_batch_size=GLOBAL_BATCH,
                                   per_device_batch_size=GLOBAL_BATCH // (world_size * accumulation)))
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, world_size, torch.device("cpu"), num_samples=100 * GLOBAL_BATCH)
    assert plan.accumulation_steps == accumulation
    return build_engine(cfg.engine, cfg.optim, plan, method, ctx, nonfinite=cfg.train.nonfinite)


def micro_batches(views, rank, world_size, accumulation):
    """This rank's micro-batches: rows (rank x A + i) x n ... of the global batch."""
    n = GLOBAL_BATCH // (world_size * accumulation)
    starts = [(rank * accumulation + i) * n for i in range(accumulation)]
    return [Batch([v[s:s + n] for v in views]) for s in starts]


def run_rank(rank, world_size, inputs, accumulation):
    results = {}
    for name in COUPLED:
        state, views = inputs[name]
        method, _ = float64_method(name)
        method.load_state_dict(state)
        engine = engine_for(method, world_size, accumulation, DistContext(rank, rank, world_size, world_size))
        outputs = engine.forward_backward(micro_batches(views, rank, world_size, accumulation))
        loss = outputs[0].loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(loss)
        results[name] = (loss / world_size, grads_of(engine.module))
    return results


def reference():
    return whole_batch_runs(COUPLED, GLOBAL_BATCH, lambda method, loss: (loss, grads_of(method)))


def assert_equal_to_reference(got, want):
    for name in COUPLED:
        (loss, grads), (ref_loss, ref_grads) = got[name], want[name]
        assert grads.keys() == ref_grads.keys(), name
        # the loss against its own size; gradients against the method's largest
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=rounding_bound(torch.float64, ref_loss.abs().item(), TINY_CHAIN))
        scale = max(g.abs().max().item() for g in ref_grads.values())
        for key, ref in ref_grads.items():
            torch.testing.assert_close(grads[key], ref, rtol=0, atol=rounding_bound(torch.float64, scale, TINY_CHAIN),
                                       msg=lambda m, k=f"{name} {key}": f"{k}: {m}")


def test_one_process_four_micro_batches_equals_the_whole_batch():
    inputs, want = reference()
    assert_equal_to_reference(run_rank(0, 1, inputs, accumulation=4), want)


def test_plain_accumulation_would_not():
    """The check above can fail: the per-micro-batch losses of plain accumulation give other gradients."""
    inputs, want = reference()
    for name in COUPLED:
        state, views = inputs[name]
        method, _ = float64_method(name)
        method.load_state_dict(state)
        for batch in micro_batches(views, 0, 1, 4):
            (method(batch).loss / 4).backward()
        grads = grads_of(method)
        assert max((grads[k] - g).abs().max().item() for k, g in want[name][1].items()) > 1e-3, name


@pytest.mark.slow
@pytest.mark.parametrize("world_size,accumulation", [(2, 2), (4, 1)])
def test_ranks_and_micro_batches_equal_the_whole_batch(world_size, accumulation, tmp_path):
    inputs, want = reference()
    got = on_gloo_ranks(world_size, tmp_path, functools.partial(run_rank, accumulation=accumulation), inputs)
    assert_equal_to_reference(got, want)
