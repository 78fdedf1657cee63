"""BYOL's regression loss between an online prediction and a target projection.

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.precision import full_precision


@full_precision
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Normalized MSE  ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z), mean over the batch -> scalar.

    p [n, d] online predictions, z [n, d] target projections (gradient stopped here). One direction
    only; the method symmetrizes. Per-image, so nothing is gathered: the mean over this rank's n
    images, averaged by DDP, is the mean over the global batch.
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()
