"""runs/<name>/eval/report.md: the run's numbers and figures on one page.

Reads what the eval commands wrote (knn.json, linear.json, label_efficiency.json) and the training
log (metrics.jsonl); draws the sample grid, training curves, t-SNE and label-efficiency chart. Beside
the encoder's scores stand the raw-pixel baseline (the same kNN, and logistic regression, on the eval
view's pixels: what the encoder must beat) and what monitoring logged during pretraining, with the
last logged kNN checked against the offline one when both scored the same weights, and the online
probe's final head scored on the test split beside the offline linear probe.
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


def online_metrics(records: list[dict]) -> dict:
    """The last logged `knn/acc` (with its step) and `probe/acc` of metrics.jsonl records."""
    out = {}
    for key in ("knn/acc", "probe/acc"):
        found = [r for r in records if key in r]
        if found:
            out[key] = {"value": found[-1][key], "step": found[-1]["step"]}
    return out


def accuracy_table(eval_dir: Path, knn: dict, pixels: dict, online: dict, steps_trained: int | None,
                   probe_test: float | None = None) -> list[str]:
    """Markdown rows: the encoder's kNN and linear probe, raw pixels, and the metrics logged in training;
    `probe_test` is the online probe's final head scored on the test split's features (None: no probe)."""
    linear = read_json(eval_dir / "linear.json") or (read_json(eval_dir / "label_efficiency.json") or {}).get(
        "all_labels", {}).get("linear")
    rows = ["| evaluation (all train labels) | top-1 | top-5 |", "|---|---|---|",
            f"| weighted kNN (k={knn['k']}, T={knn['temperature']}) | {_pct(knn['top1'])} | {_pct(knn['top5'])} |"]
    if linear:
        rows.append(f"| linear probe | {_pct(linear['top1'])} | {_pct(linear['top5'])} |")
    else:
        rows.append("| linear probe | not run (`python -m trainer eval linear`) | |")
    rows += [f"| raw pixels: the same weighted kNN | {_pct(pixels['knn'])} | |",
             f"| raw pixels: logistic regression (scikit-learn) | {_pct(pixels['logreg'])} | |"]
    if "knn/acc" in online:
        rows.append(f"| kNN logged during pretraining (step {online['knn/acc']['step']}) | "
                    f"{_pct(online['knn/acc']['value'])} | |")
    if "probe/acc" in online:
        rows.append(f"| online linear probe, last log window (augmented train batches) | "
                    f"{_pct(online['probe/acc']['value'])} | |")
    if probe_test is not None:
        rows.append(f"| online linear probe's final head on the test split | {_pct(probe_test)} | |")
    lines = rows + [""]
    logged = online.get("knn/acc")
    if logged and logged["step"] == steps_trained:
        # the same evaluator on the same weights: only the order of float sums may differ, which can
        # flip a near-tie vote, so one test image of slack
        agree = abs(logged["value"] - knn["top1"]) <= 1 / knn["test_samples"] + 1e-9
        lines.append(f"Monitoring check: the kNN logged at the last step {'agrees with' if agree else 'DISAGREES with'} "
                     f"the offline kNN on the final checkpoint ({_pct(logged['value'])} vs {_pct(knn['top1'])}).")
    else:
        lines.append("Monitoring check: no kNN was logged at the last step (train.knn_every), nothing to compare.")
    if probe_test is not None and linear:
        # not the same procedure (the online head learns from augmented views of a moving encoder, at a
        # fixed small lr): the gap says how far the logged probe under-reports what the features hold
        lines.append(f"Monitoring check: the online probe's head scores {_pct(probe_test)} on the test split, the "
                     f"offline linear probe on the final features {_pct(linear['top1'])} "
                     f"({100 * (probe_test - linear['top1']):+.1f} points).")
    return lines


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


def write_report(run_dir: Path, eval_dir: Path, cfg: Config, knn: dict, pixels: dict, online: dict,
                 figures: dict[str, Path], steps_trained: int | None, probe_test: float | None = None) -> Path:
    """Write eval_dir/report.md from the results there; `pixels` = {"knn", "logreg"} top-1 on raw pixels,
    `online` = online_metrics(...), `figures` maps a caption to a PNG inside eval_dir, `probe_test` the
    online probe's head on the test split."""
    lines = [f"# {run_dir.name}: {cfg.method.name} on {Path(cfg.data.shards).name}", "",
             (f"Backbone {cfg.model.backbone} (width {cfg.model.width}, small stem {cfg.model.small_stem}), "
             f"{cfg.data.image_size} px, global batch {cfg.train.global_batch_size}, "
             f"{steps_trained if steps_trained is not None else 'unknown'} steps trained."), "",
             f"## Accuracy on the `{cfg.eval.test_split}` split ({knn['test_samples']} images)", "",
             *accuracy_table(eval_dir, knn, pixels, online, steps_trained, probe_test), "",
             "## Label efficiency", "", *study_section(read_json(eval_dir / "label_efficiency.json")), "",
             "## Figures", ""]
    lines += [f"![{caption}]({path.name})\n" for caption, path in figures.items()]
    path = eval_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
