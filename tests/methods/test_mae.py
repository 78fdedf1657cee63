"""MAE: masking, the normalized-pixel loss against a float64 formula, and what the encoder sees."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import ModelConfig
from trainer.methods.mae import MAE, MAEConfig, masked_patch_loss, patchify, random_masking, sincos_2d
from trainer.types import Batch

VIT = ModelConfig(backbone="timm:vit_tiny_patch16_224", patch_size=4)


def small_mae() -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2), VIT, image_size=32).double()


def test_random_masking_keeps_exactly_the_kept_patches_per_sample():
    torch.manual_seed(0)
    ids_keep, mask = random_masking(5, 64, 16, torch.device("cpu"))
    assert ids_keep.shape == (5, 16) and mask.shape == (5, 64)
    assert (mask.sum(1) == 48).all()  # ratio 0.75 of 64 patches, per sample
    for row, kept in zip(mask, ids_keep):
        assert kept.unique().numel() == 16 and (row[kept] == 0).all()
    assert not torch.equal(ids_keep[0].sort().values, ids_keep[1].sort().values)  # per sample, not shared


def test_patchify_is_the_row_major_patch_grid_and_unpatchify_inverts_it():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; inside a patch, pixels row-major with the 3 channels last
    assert torch.equal(patches[0, 1].reshape(4, 4, 3), images[0, :, :4, 4:].permute(1, 2, 0))
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert torch.equal(small_mae().unpatchify(patchify(images, 4)), images)


def test_masked_patch_loss_matches_float64_formula():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 10, 12, generator=g, dtype=torch.float64)
    target = torch.randn(3, 10, 12, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 10, generator=g) < 0.7).double()
    total, count = 0.0, 0
    for i in range(3):
        for j in range(10):
            if mask[i, j]:
                t = target[i, j].tolist()
                mean = sum(t) / len(t)
                std = math.sqrt(sum((x - mean) ** 2 for x in t) / (len(t) - 1) + 1e-6)  # unbiased, as the paper's code
                total += sum((p - (x - mean) / std) ** 2 for p, x in zip(pred[i, j].tolist(), t)) / len(t)
                count += 1
    assert masked_patch_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(total / count, rel=1e-12)


def test_loss_gradient_reaches_only_masked_patches():
    mae = small_mae()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(3)
    cls, pred, mask = mae.embed(Batch([images]))
    pred.retain_grad()
    mae.loss([cls, pred, mask], Batch([images])).loss.backward()
    per_patch = pred.grad.abs().sum(-1)
    assert (per_patch[mask == 0] == 0).all() and (per_patch[mask == 1] > 0).all()


def test_encoder_sees_only_the_visible_tokens():
    mae = small_mae()
    seen = []
    mae.backbone.blocks[0].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].shape))
    torch.manual_seed(0)
    mae.embed(Batch([torch.randn(2, 3, 32, 32, dtype=torch.float64)]))
    assert seen == [torch.Size([2, 1 + 16, mae.feature_dim])]  # class token + 25% of the 8 x 8 patches


def test_sincos_positions_are_the_papers_formula():
    pos = sincos_2d(8, 3).double()
    omega = [1.0, 1e-2]  # 1 / 10000^(k / 2), k = 0, 1: dim / 4 = 2 frequencies per axis and function
    for idx in range(9):
        r, c = divmod(idx, 3)
        expected = ([math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
                    + [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega])
        # stored in float32: values in [-1, 1], so half an ulp of 1 bounds the rounding
        torch.testing.assert_close(pos[idx], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=6e-8)


def test_mae_refuses_a_backbone_without_patches():
    with pytest.raises(ValueError, match="model.backbone = resnet18"):
        MAE(MAEConfig(), ModelConfig(width=8, small_stem=True), image_size=32)


def test_images_show_the_visible_patches_and_paste_predictions_into_the_masked_ones():
    mae = small_mae()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.manual_seed(5)
    original, masked, reconstructed = mae.images(Batch([images]))["reconstructions"]
    torch.manual_seed(5)  # the same mask
    _, _, mask = mae.encode_visible(images)
    visible = patchify(masked, 4)
    assert torch.equal(original, images)
    assert (visible[mask == 1] == 0).all()  # masked patches blank (0 = the data mean after normalization)
    torch.testing.assert_close(visible[mask == 0], patchify(images, 4)[mask == 0], rtol=0, atol=0)
    # visible patches pass through the reconstruction untouched; masked ones are predictions
    assert torch.equal(patchify(reconstructed, 4)[mask == 0], patchify(images, 4)[mask == 0])
    assert not torch.equal(patchify(reconstructed, 4)[mask == 1], patchify(images, 4)[mask == 1])


@pytest.mark.parametrize("world", [2, 4])
def test_mean_of_rank_losses_is_the_loss_of_the_whole_batch(world):
    """Distributed semantics: every sample has the same number of masked patches, so the mean of W ranks'
    losses (what averaging their gradients optimizes) is the loss of the concatenated batch."""
    g = torch.Generator().manual_seed(2)
    pred, target = (torch.randn(8, 16, 12, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.stack([torch.randperm(16, generator=g) < 12 for _ in range(8)]).double()
    whole = masked_patch_loss(pred, target, mask, norm_pix=True)
    parts = [masked_patch_loss(p, t, m, norm_pix=True)
             for p, t, m in zip(pred.chunk(world), target.chunk(world), mask.chunk(world))]
    assert torch.stack(parts).mean().item() == pytest.approx(whole.item(), rel=1e-12)
