"""The contract every method in `METHODS` meets (`Method`), and metrics and view pairs they share.

A method is a `Method` (an `nn.Module`) with:
  Config            its config dataclass (a `name: str` field first, then its own knobs)
  views(cfg, data, aug) -> list[ViewSpec]      classmethod: what the input pipeline must produce
  __init__(cfg, model: ModelConfig, image_size) builds backbone + heads (its own section, the model's)
  backbone          nn.Module, [B, 3, H, W] -> [B, feature_dim]; what eval and export use
  feature_dim       int
  couples_samples   class attribute: True where the loss couples the samples of a batch (a contrastive
                    softmax, batch statistics, a center), so gradient accumulation must embed the whole
                    global batch before the loss (gradient cache); False for per-sample losses
  embed(batch) -> list[Tensor]                 every tensor the loss needs, each [n, ...] with this
                                               micro-batch on dim 0 (micro-batches concatenate on dim 0);
                                               by convention element 0 is the backbone features of view 0
  loss(embeddings, batch) -> MethodOutput      the loss of (possibly concatenated) embeddings
and, with defaults here (so a method writes only what it uses):
  forward(batch) = loss(embed(batch), batch)
  parameter_groups() -> list[dict]             one group per child module with trainable parameters, as
                                               {"name", "params": [(name, tensor)]}; a group may carry
                                               its own hyperparameters (trainer/optim/groups.py)
  before_step(step, total_steps) -> dict       before the step's forward: schedules (temperatures, momenta)
  before_optimizer_step(step)                  after backward, before optimizer.step (DINO's freeze);
                                               a method whose hook edits .grad sets `edits_gradients`
  after_step(step, total_steps) -> dict        after optimizer step `step` (1-based): the EMA update
  collapse_sign(metrics) -> str | None         a logged window's averaged metrics -> a sentence naming the
                                               sign of collapse they show, or None; the loop warns once
  images(batch) -> dict[str, list[Tensor]]     pictures of what the method does, normalized like the views
                                               (MAE: original, masked, reconstructed); logged at each save
  shard_units() -> list[nn.Module]             what FSDP2 gathers one at a time, each entered through its
                                               forward: every child of a `blocks` container (timm's ViT
                                               blocks, an EMA copy's too); a method adds its large heads
The loop calls before_step/after_step, the engine before_optimizer_step, images and shard_units; the
dicts of the hooks are logged scalars.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models import EMA
from trainer.optim import cosine
from trainer.types import Batch, MethodOutput


class Method(nn.Module):
    couples_samples: bool
    edits_gradients = False  # True where before_optimizer_step changes .grad (engines that cannot serve it refuse)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        raise NotImplementedError

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        raise NotImplementedError

    def forward(self, batch: Batch) -> MethodOutput:
        return self.loss(self.embed(batch), batch)

    def parameter_groups(self) -> list[dict]:
        return trainable_groups(**dict(self.named_children()))

    def before_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def before_optimizer_step(self, step: int) -> None:
        pass

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}

    def shard_units(self) -> list[nn.Module]:
        return [block for m in self.modules() if isinstance(getattr(m, "blocks", None), (nn.Sequential, nn.ModuleList))
                for block in m.blocks]

    def collapse_sign(self, metrics: dict[str, float]) -> str | None:
        """Complete collapse: view 0's embeddings span about one direction (`z_rank` < 2 of up to
        min(B, d)), so every image looks the same to the loss."""
        rank = metrics.get("z_rank")
        if rank is not None and rank < 2:
            return f"z_rank {rank:.2f} < 2: the embeddings span about one direction (complete collapse)"
        return None

    def images(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        return {}


@torch.no_grad()
def collapse_metrics(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Signs of representation collapse for embeddings z [B, d].

    `z_std`: mean per-dimension std of the L2-normalized embedding (1/sqrt(d) when spread out,
    0 when collapsed; BYOL paper appendix). `z_rank`: effective rank exp(H(singular values / sum))
    (Roy & Vetterli 2007), between 1 and min(B, d).
    """
    zn = F.normalize(z.detach().float(), dim=1)
    zn = torch.where(
        torch.isfinite(zn), zn, 0.0
    )  # a NaN step must reach the loop's policy, not crash the SVD
    s = torch.linalg.svdvals(zn - zn.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"z_std": zn.std(0).mean(), "z_rank": entropy.exp()}


def view_pairs(num_views: int) -> list[tuple[int, int]]:
    """The view pairs a two-view loss compares: the two global views (0, 1), then, under multi-crop,
    each local view (2, 3, ...) with each global view. Methods average their loss over these pairs."""
    return [(0, 1)] + [(v, g) for v in range(2, num_views) for g in (0, 1)]


def trainable_groups(**modules: nn.Module) -> list[dict]:
    """One optimizer group per named module holding trainable parameters, as (name, tensor) pairs with
    the method-level name (for `parameter_groups`); modules with none (an EMA target) are left out."""
    groups = []
    for name, m in modules.items():
        params = [(f"{name}.{n}", p) for n, p in m.named_parameters() if p.requires_grad]
        if params:
            groups.append({"name": name, "params": params})
    return groups


def against_targets(loss_fn, online: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """BYOL's and MoCo v3's symmetrized loss: for each target view g (the momentum encoder's global views),
    the mean of loss_fn(online[a], targets[g]) over the online views a != g, summed over g. With two views
    this is loss(p1, t2) + loss(p2, t1); multi-crop's local views add online predictions only."""
    return sum(torch.stack([loss_fn(online[a], t) for a in range(len(online)) if a != g]).mean()
               for g, t in enumerate(targets))


def momentum_update(step: int, total_steps: int, tau_base: float, *pairs: tuple[EMA, nn.Module]) -> dict:
    """The EMA step of BYOL, MoCo v3 and DINO after optimizer step `step`: every (EMA, source) pair moves
    with tau on a cosine from tau_base to 1 over `total_steps` (Grill et al. 2020, section 3.2)."""
    tau = cosine(step, start=tau_base, end=1.0, total_steps=total_steps)
    for target, source in pairs:
        target.update(source, tau)
    return {"tau": tau}
