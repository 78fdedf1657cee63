"""Exact gradient accumulation for losses that couple the samples of a batch: the gradient cache.

Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
RepL4NLP 2021. With A micro-batches per step, a loss computed per micro-batch sees 1/A of the global
batch: NT-Xent 1/A of the negatives, VICReg's variance and covariance 1/A of the rows, so summing
those losses is not the loss of the global batch. Instead (for `method.couples_samples`):
  1. embed every micro-batch without a graph, saving each one's RNG state (CPU and CUDA);
  2. concatenate the embeddings on dim 0 and compute the loss over them (its own all-gather makes it
     the whole global batch) and its gradient with respect to the embeddings only;
  3. re-run each micro-batch's forward from its saved RNG state (dropout, drop-path and masks draw
     the same) and back-propagate that micro-batch's slice of the cached gradients, through the
     engine's own backward (DDP's no_sync before the last, DeepSpeed's accumulation boundary).
The loss and every parameter gradient then equal those of one step on the whole batch. Memory: one
micro-batch's activations plus every micro-batch's embeddings; compute: one extra forward.

BatchNorm still normalizes each micro-batch with that micro-batch's statistics (over every rank's
micro-batch under SyncBN, never over the A micro-batches), as plain accumulation does; its running
statistics are updated once per micro-batch (the re-forward's second update is undone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from trainer.types import Batch, MethodOutput


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def concatenate(batches: list[Batch]) -> Batch:
    """The micro-batches as one batch (views and labels concatenated on dim 0)."""
    labels = None if batches[0].labels is None else torch.cat([b.labels for b in batches])
    return Batch([torch.cat(views) for views in zip(*(b.views for b in batches))], labels)


class MethodEntry(nn.Module):
    """What DDP and DeepSpeed wrap: the method's forward, or its `embed` alone (the gradient cache's
    passes), so that both run through the wrapper's forward (which prepares its gradient reduction)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, embed_only: bool = False):
        return self.method.embed(batch) if embed_only else self.method(batch)


def gradient_cache_step(method: nn.Module, batches: list[Batch], *,
                        embed: Callable[[Batch], list[torch.Tensor]],
                        backward: Callable[[int, torch.Tensor], None],
                        no_sync: Callable[[int], contextlib.AbstractContextManager],
                        autocast: Callable[[], contextlib.AbstractContextManager],
                        device: torch.device) -> list[MethodOutput]:
    """Forward and backward of the global batch split into `batches`, by the gradient cache.

    `embed(batch)` is the engine's forward of `method.embed` (through its DDP/DeepSpeed wrapper, under
    autocast); `backward(i, surrogate)` back-propagates micro-batch i's scalar whose gradient with
    respect to its embeddings is their cached slice (the engine scales it, and steps DeepSpeed);
    `no_sync(i)` holds gradient all-reduce back for all but the last. Returns one output per
    micro-batch: the whole batch's loss and metrics, with that micro-batch's rows of `features`.
    """
    states, parts = [], []
    with torch.no_grad():
        for batch in batches:
            states.append(_rng_state(device))
            parts.append(embed(batch))
    # at least float32: the cached gradients are unscaled, and fp16 would flush small ones to zero
    embeddings = [torch.cat(p).to(torch.promote_types(p[0].dtype, torch.float32)).requires_grad_()
                  for p in zip(*parts)]
    with autocast():
        out = method.loss(embeddings, concatenate(batches))
    grads = torch.autograd.grad(out.loss, embeddings, allow_unused=True)
    after = _rng_state(device)
    buffers = list(method.buffers())
    saved = [b.clone() for b in buffers]
    sizes = [len(p[0]) for p in parts]
    slices = [g.split(sizes) if g is not None else [None] * len(sizes) for g in grads]
    for i, (batch, state) in enumerate(zip(batches, states)):
        _set_rng_state(state, device)
        with no_sync(i):
            again = embed(batch)
            surrogate = sum((e.to(s[i].dtype) * s[i]).sum() for e, s in zip(again, slices)
                            if s[i] is not None and e.requires_grad)
            backward(i, surrogate)
    with torch.no_grad():
        for b, s in zip(buffers, saved):
            b.copy_(s)
    _set_rng_state(after, device)
    loss = out.loss.detach()
    features = out.features.split(sizes) if out.features is not None else [None] * len(sizes)
    return [MethodOutput(loss, dict(out.metrics), f) for f in features]
