"""Supervised training of a classifier on in-memory tensors: the one loop behind the linear probe,
fine-tuning and the from-scratch baseline.

With a validation set: AdamW at a constant lr that ReduceLROnPlateau cuts when the validation loss
stalls, early stopping after `patience` evaluations without a better score, and the best-scoring
weights restored at the end. The score is validation accuracy, ties broken by the lower loss: a
small validation set saturates (every image right from some step on), and accuracy alone would then
stop training at the first weights that got there. Without one: AdamW with a cosine schedule over `max_steps`, last weights kept.

The budget is `max_steps`, or with `epochs` set, that many passes over the training set (full batches
only), so that a fit on 100 labels and one on 5,000 see their data equally often; validation then
runs every `eval_every` steps or once an epoch, whichever is rarer, so that `patience` never gives up
within one pass over a large set.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FitConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_steps: int = 500
    epochs: int = 0  # > 0: the budget is this many passes over the training set instead of max_steps
    eval_every: int = 25  # steps between validation evaluations (at least one epoch when epochs > 0)
    patience: int = 4  # evaluations without improvement before stopping
    plateau_patience: int = 1  # evaluations without improvement before the lr is cut
    plateau_factor: float = 0.3
    shift: int = 0  # random translation in px (image inputs; 0 for features)


def steps_and_cadence(cfg: FitConfig, num_samples: int) -> tuple[int, int]:
    """(step budget, steps between validations) for a training set of `num_samples`."""
    if cfg.epochs == 0:
        return cfg.max_steps, cfg.eval_every
    steps_per_epoch = num_samples // min(cfg.batch_size, num_samples)
    return cfg.epochs * steps_per_epoch, max(cfg.eval_every, steps_per_epoch)


@dataclass
class FitResult:
    steps: int
    best_val_accuracy: float | None
    stopped_early: bool


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of x [B, C, H, W] translated by up to `pad` px (reflect-padded, then cropped)."""
    if pad == 0:
        return x
    height, width = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=generator).tolist()
    return torch.stack([p[:, dy:dy + height, dx:dx + width] for p, (dy, dx) in zip(padded, offsets)])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Logits [N, C] on the CPU, the model in eval mode (BatchNorm uses its running statistics)."""
    model.eval()
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    top = min(top, logits.shape[1])
    hits = (logits.topk(top, dim=1).indices == labels[:, None]).any(dim=1)
    return hits.float().mean().item()


def fit_classifier(model: nn.Module, param_groups: list[dict], train: tuple[torch.Tensor, torch.Tensor],
                   val: tuple[torch.Tensor, torch.Tensor] | None, cfg: FitConfig, device: torch.device,
                   seed: int) -> FitResult:
    """Train `model` (already on `device`) on train = (x [N, ...], y [N]) in place; see module doc.

    `param_groups` may carry an "lr_scale" (e.g. a smaller lr for a pretrained backbone).
    """
    x, y = train
    max_steps, eval_every = steps_and_cadence(cfg, len(x))
    generator = torch.Generator().manual_seed(seed)
    for group in param_groups:
        group["lr"] = cfg.lr * group.pop("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    if val is None:
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max_steps)))
    else:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    best_acc, best_loss, best_state, since_best = -1.0, math.inf, None, 0
    order, cursor = torch.randperm(len(x), generator=generator), 0
    step = 0
    batch_size = min(cfg.batch_size, len(x))
    while step < max_steps:
        if cursor + batch_size > len(x):  # full batches only: a batch of one would upset BatchNorm
            order, cursor = torch.randperm(len(x), generator=generator), 0
        idx = order[cursor:cursor + batch_size]
        cursor += batch_size
        model.train()
        inputs = random_shift(x[idx], cfg.shift, generator).to(device)
        loss = F.cross_entropy(model(inputs), y[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if val is None:
            schedule.step()
        elif step % eval_every == 0 or step == max_steps:
            logits = predict(model, val[0], device)
            acc, val_loss = accuracy(logits, val[1]), F.cross_entropy(logits, val[1]).item()
            plateau.step(val_loss)
            if (acc, -val_loss) > (best_acc, -best_loss):
                best_acc, best_loss, since_best = acc, val_loss, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(step, best_acc if val is not None else None, step < max_steps)
