"""Every registered method meets the contract of trainer/methods/base.py and learns on a tiny batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from method_helpers import BACKBONES, VIT, VIT_ONLY, random_batch, tiny_method, without_batchnorm
from tolerance import rounding_bound

from trainer.losses import byol_loss, nt_xent_loss, vicreg_loss
from trainer.methods import METHODS
from trainer.methods.base import Method
from trainer.types import Batch

# the longest float64 accumulation chain of an embedding: ViT-Tiny's 12 blocks, each a fan-in of 3 x 192
# (qkv, projection, fc1), 65 tokens (attention), 768 (fc2) and 2 x 192 (layer norms), then 32-wide heads;
# ResNet-18 at width 8 is shorter (20 layers of at most 9 x 64)
EMBED_CHAIN = 12 * (3 * 192 + 65 + 768 + 2 * 192) + 3 * 32


@pytest.fixture(params=sorted(METHODS))
def name(request):
    return request.param


@pytest.fixture(params=BACKBONES)
def backbone(request, name):
    if name in VIT_ONLY and request.param != VIT:
        pytest.skip(f"{name} needs a ViT")
    return request.param


def test_forward_backward_contract(name, backbone):
    torch.manual_seed(0)
    image_size = 32 if backbone == VIT else 16
    method, views = tiny_method(name, backbone=backbone, image_size=image_size)
    out = method(random_batch(views, 8))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.features.shape == (8, method.feature_dim) and not out.features.requires_grad
    assert {"z_std", "z_rank"} <= out.metrics.keys()
    for key, value in out.metrics.items():
        assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value), key
    out.loss.backward()
    # every backbone parameter learns, the input side included (a ResNet's stem, a ViT's class token)
    assert all(p.grad is not None for p in method.backbone.parameters())
    assert next(method.backbone.parameters()).grad.abs().sum() > 0

    grouped = [p for group in method.parameter_groups() for _, p in group["params"]]
    assert all(isinstance(group["name"], str) for group in method.parameter_groups())
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in method.parameters() if p.requires_grad}


def test_embeddings_concatenate_over_micro_batches(name, backbone):
    """The gradient-cache split: embed() of two micro-batches, concatenated on dim 0, is embed() of the
    whole batch, and loss() of that equals forward() of the whole batch (BatchNorm removed: its batch
    statistics are per micro-batch by design; float64, so equal to rounding)."""
    assert issubclass(METHODS[name], Method) and isinstance(METHODS[name].couples_samples, bool)
    torch.manual_seed(0)
    method, views = tiny_method(name, backbone=backbone, image_size=32 if backbone == VIT else 16)
    method = without_batchnorm(method).double()
    batch = random_batch(views, 6, dtype=torch.float64)
    halves = [Batch([v[:2] for v in batch.views]), Batch([v[2:] for v in batch.views])]
    torch.manual_seed(1)  # a method that draws (MAE's masks) draws the same numbers for the whole as for its parts
    whole = method.embed(batch)
    torch.manual_seed(1)
    parts = [method.embed(h) for h in halves]
    assert len(whole) == len(parts[0]) and all(e.shape[0] == 6 for e in whole)
    joined = [torch.cat(es) for es in zip(*parts)]
    for got, want in zip(joined, whole):  # a matmul over 2 rows may sum in another order than over 6
        torch.testing.assert_close(got, want, rtol=0, atol=rounding_bound(torch.float64, want.abs().max().item(),
                                                                          EMBED_CHAIN))
    state = {k: b.clone() for k, b in method.named_buffers()}  # DINO's loss moves its center: same start
    joined_loss = method.loss(joined, batch).loss
    for k, b in method.named_buffers():
        b.copy_(state[k])
    torch.manual_seed(1)
    # the embeddings' chain, then the loss's reductions (<= 6 x 3 views x 32 per term): the loss's size,
    # times the 1 / temperature (<= 10) by which NT-Xent, MoCo v3 and DINO scale their embeddings
    loss_bound = rounding_bound(torch.float64, 10 * max(joined_loss.abs().item(), 1.0), EMBED_CHAIN + 6 * 3 * 32)
    torch.testing.assert_close(joined_loss, method(batch).loss, rtol=0, atol=loss_bound)
    if name not in VIT_ONLY:  # MAE's element 0 is its encoder on the visible patches only (see mae.py)
        torch.testing.assert_close(whole[0], method.backbone(batch.views[0]), rtol=0,  # RotNet runs 4 views at once
                                   atol=rounding_bound(torch.float64, whole[0].abs().max().item(), EMBED_CHAIN))


# DINO's loss is a cross-entropy against targets that move (teacher EMA, center); with both held still
# it is a fixed objective of the student, which must then go down
FIXED_TARGETS = {"dino": ("method.tau_base=1.0", "method.center_momentum=1.0")}


def test_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    vit = {"backbone": VIT, "image_size": 32} if name in VIT_ONLY else {}
    method, views = tiny_method(name, overrides=FIXED_TARGETS.get(name, ()), **vit)
    batch = random_batch(views, 8)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for step in range(1, 7):
        method.before_step(step - 1, 6)
        loss = method(batch).loss
        optimizer.zero_grad()
        loss.backward()
        method.before_optimizer_step(step - 1)
        optimizer.step()
        method.after_step(step, 6)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_multicrop_pairs_each_local_view_with_each_global_view():
    """3 views (2 global, 1 local): SimCLR and VICReg average their loss over the pairs (0,1),
    (2,0), (2,1); BYOL sums, over the two targets, the mean over the other views' predictions."""
    torch.manual_seed(0)
    for name in ("simclr", "vicreg", "byol"):
        method, views = tiny_method(name, local_crops=1)
        assert [v.size for v in views] == [16, 16, 7]
        batch = random_batch(views, 6)
        loss = method(batch).loss
        batch_views = batch.views
        feats = [method.backbone(v) for v in batch_views]
        if name == "simclr":
            z = [method.projector(f) for f in feats]
            pairs = [nt_xent_loss(z[i], z[j], method.cfg.temperature) for i, j in ((0, 1), (2, 0), (2, 1))]
            want = sum(pairs) / 3
        elif name == "vicreg":
            z = [method.expander(f) for f in feats]
            want = sum(vicreg_loss(z[i], z[j]).loss for i, j in ((0, 1), (2, 0), (2, 1))) / 3
        else:
            p = [method.predictor(method.projector(f)) for f in feats]
            t = [method.target_projector(method.target_backbone(v)) for v in batch_views[:2]]
            want = (byol_loss(p[1], t[0]) + byol_loss(p[2], t[0])) / 2 + (
                byol_loss(p[0], t[1]) + byol_loss(p[2], t[1])
            ) / 2
        # the same float32 terms, regrouped: 3 pairs (4 per pair for BYOL) summed and divided, each
        # term >= 0, so the error is a few roundings of the loss itself
        torch.testing.assert_close(loss, want, rtol=0, atol=rounding_bound(torch.float32, want.item(), 6))


def test_byol_target_moves_only_by_ema():
    torch.manual_seed(0)
    method, views = tiny_method("byol", local_crops=0)
    targets = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    onlines = [*method.backbone.parameters(), *method.projector.parameters()]
    assert not any(t.requires_grad for t in targets)
    grouped = {id(p) for group in method.parameter_groups() for _, p in group["params"]}
    assert not grouped & {id(t) for t in targets}

    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    before = [t.detach().clone() for t in targets]
    method(random_batch(views, 8)).loss.backward()
    optimizer.step()  # trains the online network only; also refreshes BN running stats of both
    assert all(torch.equal(t, b) for t, b in zip(targets, before))
    assert not all(torch.equal(o, b) for o, b in zip(onlines, before))

    step, total = 3, 10
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * step / total) + 1) / 2
    logged = method.after_step(step, total)
    assert logged == {"tau": pytest.approx(tau, abs=1e-12)}
    for t, b, o in zip(targets, before, onlines):
        # float32 lerp against the formula's two products and a sum, tau rounded to float32 on both sides:
        # a few roundings of |b| + |o|
        scale = b.abs().max().item() + o.abs().max().item()
        torch.testing.assert_close(t, tau * b + (1 - tau) * o, rtol=0, atol=rounding_bound(torch.float32, scale, 4))
    target_buffers = [*method.target_backbone.buffers(), *method.target_projector.buffers()]
    online_buffers = [*method.backbone.buffers(), *method.projector.buffers()]
    assert target_buffers and all(torch.equal(t, o) for t, o in zip(target_buffers, online_buffers))
    assert method.after_step(total, total)["tau"] == 1.0


def test_rotnet_labels_follow_the_view_rotation():
    """Views are rotated by 0/90/180/270 degrees; the loss is cross-entropy against r = rotation / 90."""
    torch.manual_seed(0)
    method, views = tiny_method("rotnet")
    assert [v.rotation for v in views] == [0, 90, 180, 270]
    image = torch.randn(5, 3, 16, 16)
    batch_views = [torch.rot90(image, v.rotation // 90, dims=(2, 3)) for v in views]
    out = method(Batch(batch_views))
    logits = method.head(method.backbone(torch.cat(batch_views)))
    want = torch.stack(
        [
            F.cross_entropy(logits[5 * r : 5 * (r + 1)], torch.full((5,), v.rotation // 90))
            for r, v in enumerate(views)
        ]
    ).mean()
    # the same logits (one backbone pass over the four views, as embed() makes); one mean over 20
    # cross-entropies against four means of 5: log-sum-exp over 4 classes and the 20-term mean
    bound = rounding_bound(torch.float32, 2 * logits.abs().max().item() + math.log(4), 4 * 20 + 8)
    torch.testing.assert_close(out.loss, want, rtol=0, atol=bound)
    # a wrong labelling (all zeros) gives another value: the check above can fail
    wrong = F.cross_entropy(logits, torch.zeros(20, dtype=torch.long))
    assert (out.loss - wrong).abs() > bound
    torch.testing.assert_close(out.features, method.backbone(torch.cat(batch_views))[:5].detach(), rtol=0, atol=0)
