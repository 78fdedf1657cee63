"""SimSiam's loss: negative cosine similarity between a prediction and a stop-gradient projection.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, eq. 1 and 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.precision import full_precision


@full_precision
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean_i cos(p_i, stopgrad(z_i)) for p, z [n, d] -> scalar in [-1, 1].

    One direction; the method symmetrizes (D(p1, z2) + D(p2, z1)) / 2. Per-image, so nothing is
    gathered: the mean over this rank's n images, averaged by DDP, is the mean over the global batch.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
