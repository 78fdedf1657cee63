"""Linear classifiers: the linear probe on frozen features, and the raw-pixel baseline.

The probe standardizes features with the training mean and variance (the BatchNorm-without-affine
layer of MoCo v3 / MAE's linear probe, folded into the data, with BatchNorm's epsilon inside the
square root), then fits one zero-initialized `nn.Linear` with `fit_classifier`. Both matter on a
small labelled subset: a ReLU channel that is zero on all of its images has no training variance,
so only the epsilon bounds how much its test-time values are magnified, and only a zero start keeps
the weight it never gets a gradient for out of the test logits.
The pixel baseline is scikit-learn's multinomial logistic regression on flattened, standardized images.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from trainer.eval.fit import FitConfig, FitResult, accuracy, fit_classifier, predict

EPS = 1e-5  # BatchNorm's


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor [N, D] minus the train mean, over sqrt(train variance + EPS) (per dimension)."""
    mean, std = train.mean(0), (train.var(0, unbiased=False) + EPS).sqrt()
    return [(t - mean) / std for t in (train, *others)]


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 num_classes: int, cfg: FitConfig, device: torch.device, seed: int,
                 val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[dict, torch.Tensor]:
    """Fit a linear classifier on features train = (x [N, D], y [N]); returns
    ({"top1", "top5", "steps", ...}, test logits [M, C])."""
    torch.manual_seed(seed)
    xs = standardize(train[0], test[0], *([val[0]] if val else []))
    head = nn.Linear(train[0].shape[1], num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    result: FitResult = fit_classifier(head, [{"params": head.parameters()}], (xs[0], train[1]),
                                       (xs[2], val[1]) if val else None, cfg, device, seed)
    logits = predict(head, xs[1], device)
    return {"top1": accuracy(logits, test[1]), "top5": accuracy(logits, test[1], 5), "steps": result.steps,
            "stopped_early": result.stopped_early, "best_val_accuracy": result.best_val_accuracy}, logits


def pixel_logistic_regression(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                              max_iter: int = 200) -> dict:
    """Top-1 accuracy of logistic regression on raw pixels: images [N, 3, H, W] flattened."""
    x_train = train[0].flatten(1).numpy().astype(np.float64)
    x_test = test[0].flatten(1).numpy().astype(np.float64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(x_train, train[1].numpy())
    return {"top1": float(model.score(x_test, test[1].numpy())), "train_samples": len(x_train)}
