"""lightly's equivalent of our methods, for benchmarks/step.py: lightly 1.6.0's heads, losses and momentum
utilities on our backbone, written as lightly's examples write them (examples/pytorch/<method>.py: one
backbone call per view, the loss module, `update_momentum` on a deep-copied target), with the head sizes,
temperatures and momenta of our method's config, so a row differs from ours in the implementation only.

  simclr        SimCLRProjectionHead + NTXentLoss
  byol          BYOLProjectionHead + BYOLPredictionHead + NegativeCosineSimilarity, EMA target
  vicreg        VICRegProjectionHead (3 layers) + VICRegLoss
  barlow_twins  BarlowTwinsProjectionHead + BarlowTwinsLoss
  simsiam       SimSiamProjectionHead + SimSiamPredictionHead + NegativeCosineSimilarity (stop-gradient)
  mocov3        MoCoProjectionHead (2 layers, BatchNorm) + BYOLPredictionHead, momentum encoder, NTXentLoss
                (lightly has no MoCo v3 loss: NT-Xent over (q, k) contrasts 2N - 1 candidates where MoCo v3's
                InfoNCE contrasts the N keys; the same O(N^2 d) logits)
  dino          DINOProjectionHead + DINOLoss on 2 global + every local crop, EMA teacher on the global crops,
                `cancel_last_layer_gradients` between backward and the optimizer step (frozen, as ours is
                in the first 1% of training)
RotNet and MAE have no equivalent here (lightly's MAE rebuilds the ViT around its masked tokens).

lightly never goes into .venv: it pulls hydra-core, which downgrades omegaconf below the trainer's pin.
`import_lightly` takes it from the peer environment that `make bench-env` builds (.venv-peer).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

PEER = Path(__file__).resolve().parents[1] / ".venv-peer"


def import_lightly(peer: Path = PEER) -> str | None:
    """None once lightly is importable, else why not. When this interpreter lacks it, the peer's
    site-packages go *after* ours on sys.path: every package both hold (torch, numpy, omegaconf) stays
    ours, and only lightly (and what only the peer has) is read from there. Same Python version only."""
    if importlib.util.find_spec("lightly") is not None:
        return None
    site = peer / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not (site / "lightly").is_dir():
        return f"not installed (no {site / 'lightly'}: make bench-env)"
    sys.path.append(str(site))
    importlib.invalidate_caches()
    return None


@dataclass
class LightlyMethod:
    """`model` holds every module (targets with requires_grad off); `loss(views)` is one step's loss;
    `before_optimizer_step()` runs between backward and the optimizer step."""

    model: nn.Module
    loss: Callable[[list[torch.Tensor]], torch.Tensor]
    before_optimizer_step: Callable[[], None] = field(default=lambda: None)


def frozen_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


def build(name: str, ours: nn.Module, backbone: nn.Module, dim: int) -> LightlyMethod | str:
    """lightly's `name` on `backbone` (features [B, dim]) with the sizes of `ours` (our method instance,
    read for its config), or the reason there is none."""
    from lightly import loss as L
    from lightly.models.modules import heads as H
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    cfg = ours.cfg
    if name == "simclr":
        head = H.SimCLRProjectionHead(dim, cfg.proj_hidden_dim or dim, cfg.proj_output_dim)
        model = nn.ModuleDict({"backbone": backbone, "head": head})
        criterion = L.NTXentLoss(temperature=cfg.temperature)
        return LightlyMethod(model, lambda v: criterion(head(backbone(v[0])), head(backbone(v[1]))))
    if name == "vicreg":
        head = H.VICRegProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_output_dim, num_layers=3)
        model = nn.ModuleDict({"backbone": backbone, "head": head})
        criterion = L.VICRegLoss()
        return LightlyMethod(model, lambda v: criterion(head(backbone(v[0])), head(backbone(v[1]))))
    if name == "barlow_twins":
        head = H.BarlowTwinsProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        model = nn.ModuleDict({"backbone": backbone, "head": head})
        criterion = L.BarlowTwinsLoss(lambda_param=cfg.lambd)
        return LightlyMethod(model, lambda v: criterion(head(backbone(v[0])), head(backbone(v[1]))))
    if name == "simsiam":
        head = H.SimSiamProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
        pred = H.SimSiamPredictionHead(cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim)
        model = nn.ModuleDict({"backbone": backbone, "head": head, "pred": pred})
        criterion = L.NegativeCosineSimilarity()

        def simsiam(views):
            z0, z1 = (head(backbone(x)) for x in views[:2])
            return 0.5 * (criterion(z0.detach(), pred(z1)) + criterion(z1.detach(), pred(z0)))

        return LightlyMethod(model, simsiam)
    if name in ("byol", "mocov3"):
        if name == "byol":
            head = H.BYOLProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_output_dim)
            criterion = L.NegativeCosineSimilarity()
        else:
            head = H.MoCoProjectionHead(dim, cfg.proj_hidden_dim, cfg.proj_output_dim, num_layers=2,
                                        batch_norm=True)
            criterion = L.NTXentLoss(temperature=ours.temperature)
        pred = H.BYOLPredictionHead(cfg.proj_output_dim, cfg.pred_hidden_dim, cfg.proj_output_dim)
        target = nn.ModuleDict({"backbone": frozen_copy(backbone), "head": frozen_copy(head)})
        model = nn.ModuleDict({"backbone": backbone, "head": head, "pred": pred, "target": target})

        def momentum(views):
            update_momentum(backbone, target.backbone, cfg.tau_base)
            update_momentum(head, target.head, cfg.tau_base)
            p0, p1 = (pred(head(backbone(x))) for x in views[:2])
            with torch.no_grad():
                t0, t1 = (target.head(target.backbone(x)) for x in views[:2])
            if name == "byol":
                return 0.5 * (criterion(p0, t1) + criterion(p1, t0))
            return criterion(p0, t1) + criterion(p1, t0)

        return LightlyMethod(model, momentum)
    if name == "dino":
        head, teacher_head = (H.DINOProjectionHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                                   freeze_last_layer=1) for _ in range(2))
        teacher_head.load_state_dict(head.state_dict())  # a second head, as the example: weight_norm cannot be copied
        deactivate_requires_grad(teacher_head)
        teacher = nn.ModuleDict({"backbone": frozen_copy(backbone), "head": teacher_head})
        model = nn.ModuleDict({"backbone": backbone, "head": head, "teacher": teacher})
        criterion = L.DINOLoss(output_dim=cfg.out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                               teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp,
                               center_momentum=cfg.center_momentum)

        def dino(views):
            update_momentum(backbone, teacher.backbone, cfg.tau_base)
            update_momentum(head, teacher.head, cfg.tau_base)
            with torch.no_grad():
                teacher_out = [teacher.head(teacher.backbone(x)) for x in views[:2]]
            student_out = [head(backbone(x)) for x in views]
            return criterion(teacher_out, student_out, epoch=0)

        # the criterion's center is a buffer: it goes to the device with the model
        model["criterion"] = criterion
        return LightlyMethod(model, dino, lambda: head.cancel_last_layer_gradients(current_epoch=0))
    return "no lightly equivalent"
