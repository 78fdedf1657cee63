"""runs/<name>/eval/report.md: the run's numbers and figures on one page.

Reads what the eval commands wrote (knn.json, linear.json, label_efficiency.json) and the training
log (metrics.jsonl); draws the sample grid, training curves, t-SNE and label-efficiency chart.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import Config
from trainer.eval.label_efficiency import METHODS, verdicts


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def accuracy_table(eval_dir: Path, knn: dict) -> list[str]:
    """Markdown rows: kNN, linear probe and raw pixels on all labels, from whichever file has them."""
    study = read_json(eval_dir / "label_efficiency.json") or {}
    linear = read_json(eval_dir / "linear.json") or study.get("all_labels", {}).get("linear")
    pixels = study.get("all_labels", {}).get("pixel_logreg")
    rows = ["| evaluation (all train labels) | top-1 | top-5 |", "|---|---|---|",
            f"| weighted kNN (k={knn['k']}, T={knn['temperature']}) | {_pct(knn['top1'])} | {_pct(knn['top5'])} |"]
    if linear:
        rows.append(f"| linear probe | {_pct(linear['top1'])} | {_pct(linear['top5'])} |")
    else:
        rows.append("| linear probe | not run (`python -m trainer eval linear`) | |")
    if pixels:
        rows.append(f"| raw-pixel logistic regression (scikit-learn) | {_pct(pixels['top1'])} | |")
    return rows


def study_section(study: dict | None) -> list[str]:
    if study is None:
        return ["Not run: `python -m trainer eval label-efficiency --run <run>`."]
    lines = ["| labels | " + " | ".join(METHODS.values()) + " |", "|---|---|---|---|"]
    for row in study["rows"]:
        lines.append(f"| {row['fraction']:.0%} ({row['labeled_samples']}) | "
                     + " | ".join(_pct(row[k]) for k in METHODS) + " |")
    lines += ["", *[f"- {v}" for v in verdicts(study["rows"])], "",
              (f"Early stopping and lr-on-plateau used a held-out {study['validation_samples']} train images "
              f"(class-balanced, the same for every method); test accuracy on {study['test_samples']} images; "
              f"one seed ({study['seed']}), so gaps of a point or two are within noise.")]
    return lines


def write_report(run_dir: Path, eval_dir: Path, cfg: Config, knn: dict, figures: dict[str, Path],
                 steps_trained: int | None) -> Path:
    """Write eval_dir/report.md from the results there; `figures` maps a caption to a PNG inside eval_dir."""
    lines = [f"# {run_dir.name}: {cfg.method.name} on {Path(cfg.data.shards).name}", "",
             (f"Backbone {cfg.model.backbone} (width {cfg.model.width}, small stem {cfg.model.small_stem}), "
             f"{cfg.data.image_size} px, global batch {cfg.train.global_batch_size}, "
             f"{steps_trained if steps_trained is not None else 'unknown'} steps trained."), "",
             f"## Accuracy on the `{cfg.eval.test_split}` split ({knn['test_samples']} images)", "",
             *accuracy_table(eval_dir, knn), "",
             "## Label efficiency", "", *study_section(read_json(eval_dir / "label_efficiency.json")), "",
             "## Figures", ""]
    lines += [f"![{caption}]({path.name})\n" for caption, path in figures.items()]
    path = eval_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
