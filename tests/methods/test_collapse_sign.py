"""`Method.collapse_sign` names collapse from the metrics the loss logs, on embeddings and targets whose
effective rank and entropy the test knows exactly: every method's complete collapse (`z_rank`), and
DINO's uniform teacher (`teacher_entropy` against log of the prototypes used)."""

from __future__ import annotations

import math

import pytest
import torch
from method_helpers import tiny_method

from trainer.losses import dino_loss
from trainer.methods.base import collapse_metrics


def logged(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def embeddings_of_rank(r: int, n: int = 64, d: int = 32) -> torch.Tensor:
    """n embeddings whose centered, normalized matrix has r equal singular values (effective rank r):
    +-1 on r orthogonal directions, a balanced sign pattern, plus a shared offset."""
    signs = torch.tensor([[1.0 if (i >> j) & 1 else -1.0 for j in range(r)] for i in range(n)], dtype=torch.float64)
    z = torch.zeros(n, d, dtype=torch.float64)
    z[:, :r] = signs
    z[:, -1] = 10.0  # the same offset for every sample: normalize scales all rows alike, centering removes it
    return z


# collapse_metrics' float32 SVD leaves the d - 1 zero singular values at about eps * s_max, each adding
# -p log p ~ eps log(1 / eps) to the entropy: the rank is exact to a factor 1 + d eps log(1 / eps)
EPS = torch.finfo(torch.float32).eps
RANK_REL = 32 * EPS * math.log(1 / EPS)


@pytest.mark.parametrize("name", ["simclr", "byol", "dino"])
def test_complete_collapse_is_named_and_a_spread_batch_is_not(name):
    method, _ = tiny_method(name)
    collapsed = logged(collapse_metrics(embeddings_of_rank(1)))
    assert collapsed["z_rank"] == pytest.approx(1.0, rel=RANK_REL)
    sign = method.collapse_sign(collapsed)
    assert sign is not None and "z_rank 1.00" in sign
    spread = logged(collapse_metrics(embeddings_of_rank(4)))
    assert spread["z_rank"] == pytest.approx(4.0, rel=RANK_REL)
    assert method.collapse_sign(spread) is None
    assert method.collapse_sign({"loss": 1.0}) is None  # no collapse metric logged: nothing to say


def teacher_using(m: int, k: int, n: int = 8) -> torch.Tensor:
    """Teacher outputs [n, K] whose softmax at any temperature is uniform over the first m prototypes
    (entropy exactly log m) with a zero center: 0 there, -100 elsewhere (exp underflows to 0)."""
    t = torch.full((n, k), -100.0)
    t[:, :m] = 0.0
    return t


@pytest.mark.parametrize(("used", "warns"), [(32, True), (29, True), (28, False), (1, False)])
def test_dino_names_a_uniform_teacher_at_90_percent_of_the_prototypes(used, warns):
    """29 of 32 prototypes is 90.6% >= 90%, 28 is 87.5%: the boundary the docstring states."""
    method, _ = tiny_method("dino")
    k = method.cfg.out_dim
    assert k == 32
    teacher = [teacher_using(used, k), teacher_using(used, k)]
    student = [torch.randn(8, k), torch.randn(8, k)]
    terms = dino_loss(student, teacher, torch.zeros(k), 0.1, 0.04)
    # float32: m terms t log t of size (1/m) log m, each off by a few eps: a few eps x log m in all
    assert float(terms.teacher_entropy) == pytest.approx(math.log(used), abs=8 * EPS * max(1.0, math.log(used)))
    spread = logged(collapse_metrics(embeddings_of_rank(4)))
    sign = method.collapse_sign({**spread, "teacher_entropy": float(terms.teacher_entropy)})
    assert (sign is not None) == warns
    if warns:
        assert "teacher_entropy" in sign and "method.use_bn=true" in sign
