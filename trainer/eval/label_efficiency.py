"""The label-efficiency study: how well the SSL encoder does with 1%, 10%, 100% of the labels,
against the same architecture trained from scratch on the same labels.

For every fraction, on one class-balanced seeded subset (subsets.py; nested across fractions):
  ssl_linear    linear probe on the frozen SSL features
  ssl_finetune  SSL backbone + linear head, all trained, backbone at a smaller lr
  scratch       the same network, randomly initialized, trained like ssl_finetune (backbone lr x 1)
All three stop early on one fixed held-out part of the train split (class-balanced, `holdout` of it,
shared by every method and fraction, never trained on) and cut the lr on plateau. Fine-tune and
scratch are budgeted in epochs over their labelled subset (a fixed step count would be 150 passes
over 10 labels and one over 5,000), with the same early stopping. Scores are test accuracy of the
best-on-validation weights. One seed: differences of a point or two are noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from trainer.eval.finetune import finetune
from trainer.eval.fit import FitConfig
from trainer.eval.linear import linear_probe
from trainer.eval.subsets import balanced_subset, holdout_split

METHODS = {"ssl_linear": "SSL linear probe", "ssl_finetune": "SSL fine-tune", "scratch": "from scratch"}


@dataclass
class StudyConfig:
    """Defaults sized for the digits demo (372 s of CPU time on one thread, README). Fine-tune and scratch run
    `finetune.epochs` passes over their subset at most; early stopping usually ends them sooner."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    holdout: float = 0.1  # share of the train split held out for early stopping
    seed: int = 0
    backbone_lr_scale: float = 0.1  # SSL fine-tune: backbone lr / head lr
    probe: FitConfig = field(default_factory=lambda: FitConfig(
        lr=1e-2, batch_size=256, max_steps=600, eval_every=20, patience=3))
    finetune: FitConfig = field(default_factory=lambda: FitConfig(
        lr=2e-3, batch_size=32, epochs=150, eval_every=15, patience=3, shift=2))


@dataclass
class LabeledSplit:
    features: torch.Tensor  # [N, D] frozen SSL features
    images: torch.Tensor  # [N, 3, H, W] normalized eval-view images, same order
    labels: torch.Tensor  # [N] int64


def run_study(backbone: nn.Module, feature_dim: int, scratch_backbone: Callable[[int], nn.Module],
              train: LabeledSplit, test: LabeledSplit, num_classes: int, cfg: StudyConfig,
              device: torch.device, log: Callable[[str], None] = print) -> dict:
    """{"rows": [{"fraction", "labeled_samples", "ssl_linear", "ssl_finetune", "scratch", "details"}],
    "validation_samples", "test_samples", "seed"}; accuracies are top-1 in [0, 1].

    `scratch_backbone(seed)` returns a freshly initialized backbone of the same architecture.
    """
    rest, held_out = holdout_split(train.labels, cfg.holdout, cfg.seed)
    val_features = (train.features[held_out], train.labels[held_out])
    val_images = (train.images[held_out], train.labels[held_out])
    rows = []
    for fraction in cfg.fractions:
        subset = rest[balanced_subset(train.labels[rest], fraction, cfg.seed)]
        labels = train.labels[subset]
        started = time.perf_counter()
        linear, _ = linear_probe((train.features[subset], labels), (test.features, test.labels), num_classes,
                                 cfg.probe, device, cfg.seed, val=val_features)
        tuned, _ = finetune(copy.deepcopy(backbone), feature_dim, (train.images[subset], labels),
                            (test.images, test.labels), num_classes, cfg.finetune, device, cfg.seed,
                            val=val_images, backbone_lr_scale=cfg.backbone_lr_scale)
        scratch, _ = finetune(scratch_backbone(cfg.seed), feature_dim, (train.images[subset], labels),
                              (test.images, test.labels), num_classes, cfg.finetune, device, cfg.seed,
                              val=val_images, backbone_lr_scale=1.0)
        rows.append({"fraction": fraction, "labeled_samples": len(subset), "ssl_linear": linear["top1"],
                     "ssl_finetune": tuned["top1"], "scratch": scratch["top1"],
                     "details": {"ssl_linear": linear, "ssl_finetune": tuned, "scratch": scratch,
                                 "seconds": round(time.perf_counter() - started, 1)}})
        log(f"  {fraction:>6.0%} ({len(subset)} labels): " + "  ".join(
            f"{name} {rows[-1][key]:.3f}" for key, name in METHODS.items()))
    return {"rows": rows, "validation_samples": len(held_out), "test_samples": len(test.labels),
            "seed": cfg.seed}


def verdicts(rows: list[dict]) -> list[str]:
    """One plain sentence per fraction: does the better SSL score beat scratch, and by how much."""
    out = []
    for row in rows:
        best_key = max(("ssl_linear", "ssl_finetune"), key=lambda k: row[k])
        gap = row[best_key] - row["scratch"]
        word = "beats" if gap > 0 else ("ties with" if gap == 0 else "loses to")
        out.append(f"{row['fraction']:.0%} of labels ({row['labeled_samples']}): {METHODS[best_key]} "
                   f"{row[best_key]:.3f} {word} from-scratch {row['scratch']:.3f} ({gap:+.3f})")
    return out
