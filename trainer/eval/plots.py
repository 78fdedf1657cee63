"""PNG figures readable without TensorBoard: samples, training curves, t-SNE, label efficiency,
confusion matrices. Matplotlib's Agg backend (no display needed); each function writes one file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.manifold import TSNE


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def sample_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], mean: list[float],
                std: list[float], path: Path, per_class: int = 6, max_classes: int = 10) -> Path:
    """Up to `per_class` images of each of the first `max_classes` classes; images [N, 3, H, W] normalized."""
    classes = [c for c in range(len(class_names)) if (labels == c).any()][:max_classes]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.2 * per_class, 1.3 * len(classes)),
                             squeeze=False)
    pixels = images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    for row, c in enumerate(classes):
        members = (labels == c).nonzero().squeeze(1)[:per_class]
        for col, ax in enumerate(axes[row]):
            ax.axis("off")
            if col < len(members):
                ax.imshow(pixels[members[col]].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[row][0].set_title(class_names[c], fontsize=8, loc="left")
    return _save(fig, path)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file (one JSON object per line; blank lines skipped)."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object ({err})") from err
    return records


def training_curves(records: list[dict], path: Path) -> Path:
    """One panel per logged scalar (loss terms first, then lr, kNN accuracy, the rest) against step."""
    tags = sorted({k for r in records for k, v in r.items() if k not in ("step", "epoch")
                   and isinstance(v, (int, float))},
                  key=lambda t: (not t.startswith("loss"), t != "lr", "knn" not in t, t))
    if not tags:
        raise ValueError("metrics.jsonl holds no scalars to plot")
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        points = [(r["step"], r[tag]) for r in records if tag in r and "step" in r]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def tsne_plot(features: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: Path,
              seed: int = 0, max_points: int = 2000) -> Path:
    """2-D t-SNE (scikit-learn) of features [N, D], coloured by class; a seeded sample of max_points."""
    if len(features) > max_points:
        keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:max_points]
        features, labels = features[keep], labels[keep]
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(features) - 1) / 3),
              random_state=seed).fit_transform(features.double().numpy())
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in labels.unique().tolist():
        mask = (labels == c).numpy()
        ax.scatter(xy[mask, 0], xy[mask, 1], s=8, color=cmap(c % cmap.N), label=class_names[c])
    if len(class_names) <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(f"t-SNE of {len(features)} test embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def label_efficiency_chart(rows: list[dict], methods: dict[str, str], path: Path,
                           references: dict[str, float] | None = None) -> Path:
    """Test accuracy against the number of labels (log x), one line per method column of `rows`;
    `references` (name -> accuracy with all labels) are drawn as dashed horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = [r["labeled_samples"] for r in rows]
    for key, name in methods.items():
        ax.plot(x, [r[key] for r in rows], marker="o", label=name)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, linestyle="--", linewidth=1, color=f"C{len(methods) + i}", label=f"{name} (all labels)")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{n}\n({r['fraction']:.0%})" for n, r in zip(x, rows)])
    ax.set_xlabel("labeled training images")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def confusion_plot(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """Counts matrix [true, predicted] as a heat map with the counts written in."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                color="white" if n > matrix.max() / 2 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
