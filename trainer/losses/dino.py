"""DINO's loss: cross-entropy of every student crop against the centered, sharpened teacher softmax of
the other global crops, and the center's update from the teacher outputs of the global batch.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021, alg. 1 and eq. 4;
the authors' facebookresearch/dino main_dino.py `DINOLoss`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from trainer.dist import all_gather_with_grad
from trainer.losses.precision import full_precision


class DINOTerms(NamedTuple):
    loss: torch.Tensor  # scalar, with graph through the student
    teacher_mean: torch.Tensor  # [K], mean teacher output over the global batch and both global crops
    teacher_entropy: torch.Tensor  # mean entropy of the teacher's targets (0: collapsed to one prototype)


@full_precision
def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> DINOTerms:
    """student: V tensors [n, K] (head outputs of every crop, the 2 global ones first), teacher: 2 tensors
    [n, K] (the teacher's outputs of the global crops), center [K] -> DINOTerms.

    Targets t_g = softmax((teacher_g - center) / teacher_temp), no gradient; loss = mean over the pairs
    (g, v), v != g, of mean_i sum_k -t_g[i, k] log softmax(student_v[i] / student_temp)_k. Per image
    given the center, so the mean over this rank's n images, averaged by DDP, is the global mean. The
    center is a statistic of the global batch: `teacher_mean` is the mean over all W ranks' 2n teacher
    rows (per-rank sums gathered, then added), the same on every rank; the caller updates
    center = m center + (1 - m) teacher_mean after the loss, as the authors do.
    """
    with torch.no_grad():  # the teacher and the center are targets, never trained through the loss
        targets = [F.softmax((t - center) / teacher_temp, dim=1) for t in teacher]
    log_probs = [F.log_softmax(s / student_temp, dim=1) for s in student]
    terms = [-(t * log_probs[v]).sum(1).mean() for g, t in enumerate(targets) for v in range(len(student)) if v != g]
    with torch.no_grad():
        rows = torch.cat(teacher)
        sums = all_gather_with_grad(rows.sum(0, keepdim=True))  # [W, K]: every rank's sum
        counts = all_gather_with_grad(rows.new_full((1,), rows.shape[0]))
        entropy = torch.stack([-(t * torch.log(t.clamp_min(1e-12))).sum(1).mean() for t in targets]).mean()
    return DINOTerms(torch.stack(terms).mean(), sums.sum(0) / counts.sum(), entropy)
