"""Linear probe: ~100% on linearly separable features, ~chance on random labels; pixel baseline."""

import torch
from sklearn.datasets import load_digits
from tolerance import rounding_bound

from trainer.eval.fit import FitConfig
from trainer.eval.linear import EPS, linear_probe, pixel_logistic_regression, standardize

CPU = torch.device("cpu")


def separable(n, generator):
    """Four classes split by the signs of two of 16 dimensions (with a margin), the rest noise."""
    x = torch.randn(n, 16, generator=generator)
    x[:, :2] = x[:, :2].sign() * (x[:, :2].abs() + 0.5)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    return x * 10 + 3, y  # off-centre and badly scaled: standardization must handle it


def test_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    train, test = separable(400, g), separable(200, g)
    result, logits = linear_probe(train, test, 4, FitConfig(lr=3e-2, max_steps=300), CPU, seed=0)
    assert result["top1"] >= 0.99 and result["top5"] == 1.0
    assert logits.shape == (200, 4)


def one_hot_features(n_per_class, generator, classes=10, dims=32):
    """Non-negative (post-ReLU) features: class c fires dimension c (plus noise); the other
    dimensions are zero."""
    y = torch.arange(classes).repeat(n_per_class)
    x = torch.zeros(len(y), dims)
    x[torch.arange(len(y)), y] = 1.0
    x[:, :classes] += 0.1 * torch.randn(len(y), classes, generator=generator)
    return x.clamp_min(0), y


def test_channels_dead_on_a_small_labelled_subset_do_not_swamp_the_probe():
    """One image per class (a 1% split): dimensions 10-31 are zero on every training image but fire
    at test time. A floored std (1e-6) magnified them a million-fold into randomly initialized
    weights: 0.106 on this data, chance; with the epsilon inside the square root and a zero-started
    head the probe is perfect, as the 10 informative dimensions allow."""
    g = torch.Generator().manual_seed(0)
    train, test = one_hot_features(1, g), one_hot_features(50, g)
    test[0][:, 10:] = torch.randn(len(test[1]), 22, generator=g).clamp_min(0) * 0.5
    result, _ = linear_probe(train, test, 10, FitConfig(lr=1e-2, max_steps=300), CPU, seed=0)
    assert result["top1"] == 1.0


def test_standardize_puts_the_epsilon_inside_the_square_root():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]], dtype=torch.float64)
    got = torch.cat(standardize(x, torch.tensor([[2.0, 6.0]], dtype=torch.float64)))
    # column 0: mean 2, biased variance 1; column 1: constant 5, its offsets over sqrt(EPS), not 1e-6
    want = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    want = want / torch.tensor([1 + EPS, EPS], dtype=torch.float64).sqrt()
    # a mean, a variance of 2 rows and a division, each at most 1 / sqrt(EPS) in float64
    torch.testing.assert_close(got, want, rtol=0, atol=rounding_bound(torch.float64, EPS ** -0.5, 8))


def test_probe_is_at_chance_on_random_labels_and_early_stopping_stops():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(900, 32, generator=g)
    y = torch.randint(0, 4, (900,), generator=g)
    cfg = FitConfig(lr=1e-2, max_steps=2000, eval_every=20, patience=3)
    result, _ = linear_probe((x[:500], y[:500]), (x[500:800], y[500:800]), 4, cfg, CPU, seed=0,
                             val=(x[800:], y[800:]))
    assert 0.15 <= result["top1"] <= 0.36
    assert result["stopped_early"] and result["steps"] < 2000


def test_pixel_logistic_regression_on_digits():
    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None]  # [N, 1, 8, 8]
    y = torch.from_numpy(digits.target)
    result = pixel_logistic_regression((x[:1000], y[:1000]), (x[1000:], y[1000:]))
    assert 0.85 <= result["top1"] <= 1.0 and result["train_samples"] == 1000


def test_saturated_validation_accuracy_does_not_stop_training():
    """Every validation point right from early on: accuracy alone would stop a few evaluations
    later; the loss tie-break keeps training while the validation loss still falls, and keeps the
    lowest-loss weights."""
    from torch import nn
    from torch.nn import functional as F

    from trainer.eval.fit import fit_classifier

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, generator=g)
    x = torch.randn(2000, 16, generator=g)
    logits = x @ w
    top2 = logits.topk(2, dim=1).values
    x = x[(top2[:, 0] - top2[:, 1]) > 2.0][:500]  # a margin: separable with room to spare
    y = (x @ w).argmax(1)
    train, val = (x[:400], y[:400]), (x[400:], y[400:])
    model = nn.Linear(16, 3)
    cfg = FitConfig(lr=5e-2, max_steps=300, eval_every=10, patience=3)
    result = fit_classifier(model, [{"params": model.parameters()}], train, val, cfg, torch.device("cpu"), seed=0)
    assert result.best_val_accuracy == 1.0
    assert result.steps == 300 and not result.stopped_early
    with torch.no_grad():
        assert F.cross_entropy(model(val[0]), val[1]).item() < 0.1
