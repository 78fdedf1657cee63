"""MoCo v3's loss: InfoNCE of online queries against momentum-encoder keys gathered from every rank.

Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021, alg. 1;
the authors' facebookresearch/moco-v3 moco/builder.py `contrastive_loss` (CE x 2T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.dist import all_gather_with_grad, rank
from trainer.losses.nt_xent import fused_ce
from trainer.losses.precision import full_precision


@full_precision
def moco_v3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """q [n, d] queries (online predictor outputs of one view) and k [n, d] keys (momentum-encoder outputs
    of the other view) of this rank's n images -> scalar.

    Both are L2-normalized; the keys, which carry no gradient, are gathered from every rank into the N =
    n x W keys of the global batch. Query i's positive is its own image's key (row i + n x rank); the
    softmax runs over all N keys, the positive included (plain cross-entropy), and the result is scaled by
    2T as the authors do. Returns the mean over this rank's n queries: DDP's averaging makes it the mean
    over the N queries, i.e. one process on the concatenated batch. One process: gather = identity.
    The method symmetrizes: moco_v3_loss(q1, k2) + moco_v3_loss(q2, k1).
    """
    n = q.shape[0]
    q = F.normalize(q, dim=1)
    keys = all_gather_with_grad(F.normalize(k.detach(), dim=1))
    # fused_ce leaves out one key per row (NT-Xent's self-similarity); a zero key appended at row N is
    # the one left out here, so each row's softmax runs over exactly the N real keys
    keys = torch.cat([keys, keys.new_zeros(1, keys.shape[1])])
    pos = torch.arange(n, device=q.device) + n * rank()
    excluded = torch.full_like(pos, keys.shape[0] - 1)
    return fused_ce(q, keys, pos, excluded, 1.0 / temperature).mean() * (2 * temperature)
