"""DINO's head: the weight-normalized last layer against its formula in float64, and one head call over
every crop (the authors' MultiCropWrapper), so a BatchNorm in the head normalizes over all crops."""

from __future__ import annotations

import torch
from method_helpers import random_batch, tiny_method
from tolerance import rounding_bound

from trainer.methods.dino import NormalizedLinear


def test_normalized_linear_is_x_times_unit_rows_with_the_formulas_gradient():
    torch.manual_seed(0)
    layer = NormalizedLinear(16, 40).double()
    x = torch.randn(6, 16, dtype=torch.float64)
    w = layer.weight.detach().clone().requires_grad_(True)
    want = x @ (w / (w * w).sum(1, keepdim=True).sqrt()).T  # the rows of W divided by their L2 norms
    upstream = torch.randn(6, 40, dtype=torch.float64)
    want.backward(upstream)
    got = layer(x)
    got.backward(upstream)
    scale = x.abs().sum(1).max().item()  # |x . unit row| <= sum |x|
    bound = rounding_bound(torch.float64, scale, 4 * 16)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=0, atol=bound)
    grad_scale = upstream.abs().sum().item() * scale
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=0,
                               atol=rounding_bound(torch.float64, grad_scale, 4 * 16))


def test_head_runs_once_over_all_crops_so_its_batchnorm_sees_every_crop():
    torch.manual_seed(0)
    method, views = tiny_method("dino", local_crops=2, overrides=("method.use_bn=true",))
    method = method.double()
    batch = random_batch(views, 4, dtype=torch.float64)
    _, *outputs = method.embed(batch)
    crops = [method.backbone(v) for v in batch.views]
    student, teacher = outputs[:len(views)], outputs[len(views):]
    want = method.head(torch.cat(crops))  # one BatchNorm batch of 4 crops x 4 images
    torch.testing.assert_close(torch.cat(student), want, rtol=0, atol=0)
    with torch.no_grad():
        want_teacher = method.teacher_head(torch.cat([method.teacher_backbone(v) for v in batch.views[:2]]))
    torch.testing.assert_close(torch.cat(teacher), want_teacher, rtol=0, atol=0)
    # per-crop calls would normalize each crop's 4 images alone, which changes the output
    assert not torch.allclose(student[0], method.head(crops[0]))
