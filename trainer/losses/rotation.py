"""RotNet's pretext loss: which of the four rotations (0, 90, 180, 270 degrees) was applied.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.losses.precision import full_precision


@full_precision
def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits [B, 4], labels [B] in 0..3 (rotation / 90 degrees) -> mean cross-entropy, in float32.

    Per-image, so nothing is gathered: DDP's averaging of the local means is the global mean.
    """
    return F.cross_entropy(logits, labels)
