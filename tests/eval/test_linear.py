"""Linear probe: ~100% on linearly separable features, ~chance on random labels; pixel baseline."""

import torch
from sklearn.datasets import load_digits

from trainer.eval.fit import FitConfig
from trainer.eval.linear import linear_probe, pixel_logistic_regression

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
