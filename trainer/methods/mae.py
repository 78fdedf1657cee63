"""MAE: a ViT encoder over a random 25% of the patches, a light decoder that predicts the rest.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (and facebookresearch/mae's
`models_mae.py`, whose masking, sin-cos decoder positions and normalized-pixel loss this follows).
One view, crops and flips only: the task is in the masking, not in the augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from trainer.config import AugConfig, DataConfig, ModelConfig
from trainer.methods.base import Method, collapse_metrics, trainable_groups
from trainer.models import build_backbone
from trainer.types import Batch, MethodOutput, ViewSpec


@dataclass
class MAEConfig:
    name: str = "mae"
    mask_ratio: float = 0.75
    decoder_dim: int = 512  # the paper's 8 x 512 decoder; CPU configs use far smaller ones
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True  # targets are each patch's pixels standardized by its own mean and std
    min_scale: float = 0.2  # random-resized-crop lower bound (the paper's pretraining crop)


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, dim], half the channels for rows, half for columns."""
    if dim % 4:
        raise ValueError(f"method.decoder_dim must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = [f(pos.flatten()[:, None] * omega[None]) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1).float()


def random_masking(n: int, num_patches: int, keep: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample uniform masking: (ids_keep [n, keep], mask [n, num_patches], 1 = masked), drawn from the
    torch generator (checkpointed with the run), not the loader's."""
    noise = torch.rand(n, num_patches, device=device)
    order = noise.argsort(dim=1)
    ids_keep = order[:, :keep]
    mask = torch.ones(n, num_patches, device=device)
    mask.scatter_(1, ids_keep, 0.0)
    return ids_keep, mask


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[n, C, H, W] -> [n, (H/p)(W/p), p*p*C], patches in row-major order (the patch embedding's order)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean over masked patches of the per-patch mean squared error; pred/target [n, L, p*p*C], mask [n, L].

    Every sample has the same number of masked patches, so the mean over a rank's batch, averaged over
    ranks by the engine's gradient reduction, equals the mean over the global batch."""
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


class MAE(Method):
    """timm ViT encoder on the visible patches -> decoder (mask tokens, sin-cos positions, `decoder_depth`
    blocks) -> pixels of every patch; loss on the masked ones. `backbone` is the whole ViT (all patches),
    what eval and export use."""

    Config = MAEConfig
    couples_samples = False

    @classmethod
    def views(cls, cfg: MAEConfig, data: DataConfig, aug: AugConfig) -> list[ViewSpec]:
        return [ViewSpec(size=data.image_size, scale=(cfg.min_scale, 1.0), flip_prob=aug.flip_prob,
                         jitter_prob=0.0, gray_prob=0.0)]

    def __init__(self, cfg: MAEConfig, model: ModelConfig, image_size: int):
        super().__init__()
        if not 0 < cfg.mask_ratio < 1:
            raise ValueError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.cfg = cfg
        self.backbone, self.feature_dim = build_backbone(model, image_size)
        if getattr(self.backbone, "num_prefix_tokens", None) != 1 or getattr(self.backbone, "cls_token", None) is None:
            raise ValueError(f"method.name = mae needs a ViT encoder with a class token and no register tokens "
                             f"(model.backbone = timm:vit_...), got model.backbone = {model.backbone}")
        self.patch = self.backbone.patch_embed.patch_size[0]
        grid = self.backbone.patch_embed.grid_size[0]
        self.num_patches = grid * grid
        self.keep = max(1, round(self.num_patches * (1 - cfg.mask_ratio)))
        self.decoder_embed = nn.Linear(self.feature_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_2d(cfg.decoder_dim, grid)[None], persistent=False)
        self.decoder = nn.Sequential(*[Block(cfg.decoder_dim, cfg.decoder_heads, qkv_bias=True)
                                       for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch * self.patch * 3)

    def parameter_groups(self) -> list[dict]:
        """One group per child module, and the mask token (a parameter of the method itself; no decay by name)."""
        return [*trainable_groups(**dict(self.named_children())),
                {"name": "mask_token", "params": [("mask_token", self.mask_token)]}]

    def shard_units(self) -> list[nn.Module]:
        """The decoder's blocks too, one unit each like the encoder's."""
        return [*super().shard_units(), *self.decoder]

    def encode_visible(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoded tokens [n, 1 + keep, D] with the class token first, ids_keep, mask)."""
        vit = self.backbone
        x = vit.patch_embed(images)
        x = x.flatten(1, 2) if x.ndim == 4 else x  # timm's dynamic-size ViTs keep the patch grid (NHWC)
        prefix = vit.pos_embed.shape[1] - self.num_patches  # 1 when the class token has a position (timm's default)
        x = x + vit.pos_embed[:, prefix:]
        ids_keep, mask = random_masking(x.shape[0], self.num_patches, self.keep, x.device)
        x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = vit.cls_token + (vit.pos_embed[:, :1] if prefix else 0)
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = vit.norm(vit.blocks(vit.norm_pre(x)))
        return x, ids_keep, mask

    def decode(self, tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch [n, L, p*p*3]: visible tokens back in place, mask tokens elsewhere."""
        x = self.decoder_embed(tokens[:, 1:])
        full = self.mask_token.expand(x.shape[0], self.num_patches, -1).clone()
        full = full.scatter(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]), x)
        x = self.decoder_norm(self.decoder(full + self.decoder_pos))
        return self.decoder_pred(x)

    def embed(self, batch: Batch) -> list[torch.Tensor]:
        """[class-token features of the visible patches (what the online probe sees: the full image would
        cost a second, 4x longer encoder pass), predicted pixels, mask]."""
        images = batch.views[0]
        tokens, ids_keep, mask = self.encode_visible(images)
        return [tokens[:, 0], self.decode(tokens, ids_keep), mask]

    def loss(self, embeddings: list[torch.Tensor], batch: Batch) -> MethodOutput:
        cls, pred, mask = embeddings
        loss = masked_patch_loss(pred, patchify(batch.views[0], self.patch), mask, self.cfg.norm_pix_loss)
        return MethodOutput(loss, {"mae": loss.detach(), **collapse_metrics(cls)}, cls.detach())

    @torch.no_grad()
    def images(self, batch: Batch) -> dict[str, list[torch.Tensor]]:
        """For TensorBoard and the report, each [n, 3, H, W]: the input, its visible patches (masked ones at
        the data mean) and the reconstruction (the prediction pasted into the masked patches, given each
        patch's own mean and std back when the loss normalizes pixels)."""
        images = batch.views[0]
        tokens, ids_keep, mask = self.encode_visible(images)
        pred = self.decode(tokens, ids_keep)
        target = patchify(images, self.patch)
        if self.cfg.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
        m = mask[..., None]
        return {"reconstructions": [images, self.unpatchify(target * (1 - m)),
                                    self.unpatchify(target * (1 - m) + pred * m)]}

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        g = math.isqrt(length)
        x = x.reshape(n, g, g, self.patch, self.patch, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, 3, g * self.patch, g * self.patch)
