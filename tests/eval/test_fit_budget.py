"""The supervised fits' budget in epochs: equal passes over any subset size, validation no more
often than once an epoch, and the label-efficiency study's scratch baseline budgeted that way."""

import torch
from torch import nn

from trainer.eval.fit import FitConfig, fit_classifier, steps_and_cadence
from trainer.eval.label_efficiency import LabeledSplit, StudyConfig, run_study

CPU = torch.device("cpu")


def test_epochs_budget_scales_with_the_subset():
    cfg = FitConfig(batch_size=32, epochs=150, eval_every=15)
    assert steps_and_cadence(cfg, 10) == (150, 15)  # a batch of all 10: one step an epoch
    assert steps_and_cadence(cfg, 5000) == (150 * 156, 156)  # 156 full batches; validate once an epoch
    assert steps_and_cadence(FitConfig(max_steps=40, eval_every=15), 5000) == (40, 15)  # no epochs: steps


def test_fit_without_validation_runs_its_epochs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
    model = nn.Linear(5, 3)
    result = fit_classifier(model, [{"params": model.parameters()}], (x, y), None,
                            FitConfig(batch_size=8, epochs=3), CPU, seed=0)
    assert result.steps == 15 and not result.stopped_early


def test_early_stopping_counts_whole_epochs():
    """Random labels: validation never improves for long, so the fit stops early, and it can only
    stop at an evaluation, which comes once an epoch (50 steps), not every eval_every = 5 steps."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(500, 8, generator=g), torch.randint(0, 4, (500,), generator=g)
    model = nn.Linear(8, 4)
    cfg = FitConfig(lr=1e-2, batch_size=8, epochs=40, eval_every=5, patience=2)
    result = fit_classifier(model, [{"params": model.parameters()}], (x[:400], y[:400]), (x[400:], y[400:]),
                            cfg, CPU, seed=0)
    assert result.stopped_early and result.steps % 50 == 0 and result.steps >= 3 * 50


def test_scratch_baseline_gets_the_epoch_budget_of_its_subset():
    """A fixed 150 steps was one pass over 4,800 labels at batch 32; now scratch and fine-tune both
    get `epochs` passes (here 2, without anything to stop on: the validation set is one class)."""
    g = torch.Generator().manual_seed(2)
    n, classes = 2000, 4
    labels = torch.arange(n) % classes
    images = torch.randn(n, 3, 4, 4, generator=g)
    split = LabeledSplit(images.flatten(1), images, labels)

    def backbone(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(48, 6))

    cfg = StudyConfig(fractions=[1.0], holdout=0.1)
    cfg.finetune = FitConfig(lr=1e-3, batch_size=32, epochs=2, eval_every=15, patience=10 ** 6)
    study = run_study(backbone(0), 6, backbone, split, split, classes, cfg, CPU, log=lambda _: None)
    row = study["rows"][0]
    steps_per_epoch = row["labeled_samples"] // 32
    assert row["labeled_samples"] == 1800 and steps_per_epoch == 56
    assert row["details"]["scratch"]["steps"] == row["details"]["ssl_finetune"]["steps"] == 2 * steps_per_epoch
