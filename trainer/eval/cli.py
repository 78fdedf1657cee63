"""`python -m trainer eval <knn|linear|finetune|label-efficiency|report> --run runs/<name> [...]`.

Every rank extracts features of its part of each split (features.py); rank 0 alone then fits the
probes and classifiers, which are small, and writes runs/<name>/eval/*.json and *.png (or `--out DIR`,
which leaves a read-only run folder as it is; the feature cache is outside the run folder either way).
`--classes a,b,c` turns any of knn/linear/finetune into a k-way task on those classes (labels
remapped to 0..k-1) and adds a confusion matrix. `--shards DIR` evaluates on another dataset.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from data_prep.manifest import load_manifest
from trainer.atomic_json import write_json
from trainer.checkpoint import load_probe_head
from trainer.config import DataConfig, EvalConfig
from trainer.dist import DistContext, init_distributed, shutdown
from trainer.eval import plots
from trainer.eval.encoder import Encoder, fresh_backbone, load_encoder
from trainer.eval.features import cached_features, feature_cache_path, split_batches, split_images
from trainer.eval.finetune import finetune
from trainer.eval.fit import FitConfig
from trainer.eval.knn import knn_scores
from trainer.eval.label_efficiency import METHODS, LabeledSplit, StudyConfig, run_study, verdicts
from trainer.eval.linear import linear_probe, pixel_logistic_regression
from trainer.eval.report import online_metrics, read_json, write_report
from trainer.eval.subsets import balanced_subset, resolve_classes, restrict_to_classes


@dataclass
class Session:
    """What every command needs: the run, its encoder, the data and eval settings after overrides."""

    run_dir: Path
    ctx: DistContext
    encoder: Encoder
    data: DataConfig
    eval: EvalConfig
    class_names: list[str]  # label k -> name
    classes: list[int] | None  # --classes as label ids, or None for all
    eval_dir: Path  # where results go: --out, or runs/<name>/eval

    def features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.restrict(*cached_features(self.run_dir, self.encoder.backbone, self.data, split, self.ctx,
                                              self.eval.batch_size))

    def images(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.restrict(*split_images(self.data, split, self.ctx, self.eval.batch_size))

    def restrict(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classes is None:
            return x, y
        indices, labels = restrict_to_classes(y, self.classes)
        return x[indices], labels

    @property
    def task_names(self) -> list[str]:
        return self.class_names if self.classes is None else [self.class_names[c] for c in self.classes]

    def result_name(self, command: str) -> str:
        if self.classes is None:
            return command
        return command + "_" + re.sub(r"[^A-Za-z0-9]+", "-", "_".join(self.task_names)).strip("-")[:80]


def open_session(args: argparse.Namespace) -> Session:
    run_dir = Path(args.run)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir}: not a run directory (no config.yaml)")
    ctx = init_distributed()
    encoder = load_encoder(run_dir, ctx.device)
    cfg = encoder.cfg
    data = replace(cfg.data, shards=args.shards or cfg.data.shards)
    overrides = {k: v for k, v in (("train_split", args.train_split), ("test_split", args.test_split),
                                   ("batch_size", args.batch_size)) if v is not None}
    manifest = load_manifest(data.shards)
    names = [manifest["class_names"].get(c, c) for c in manifest["classes"]]
    classes = None
    if getattr(args, "classes", None):
        classes = resolve_classes(args.classes, manifest["classes"], manifest["class_names"])
    return Session(run_dir, ctx, encoder, data, replace(cfg.eval, **overrides), names, classes,
                   Path(args.out) if args.out else run_dir / "eval")


def confusion(session: Session, name: str, predictions: torch.Tensor, labels: torch.Tensor) -> dict:
    """Confusion counts [true, predicted] as JSON-ready lists, plus its PNG, for class-subset tasks."""
    k = len(session.task_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels.numpy(), predictions.numpy()), 1)
    plots.confusion_plot(matrix, session.task_names, session.eval_dir / f"{name}_confusion.png", name)
    return {"classes": session.task_names, "confusion": matrix.tolist()}


def finish(session: Session, name: str, result: dict, logits: torch.Tensor, labels: torch.Tensor) -> dict:
    if session.classes is not None:
        result.update(confusion(session, name, logits.argmax(1), labels))
    path = write_json(session.eval_dir / f"{name}.json", result)
    print(f"{name}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  -> {path}")
    return result


def knn_result(session: Session, train, test) -> tuple[dict, torch.Tensor]:
    cfg = session.eval
    scores = knn_scores(train[0].to(session.ctx.device), train[1], test[0], len(session.task_names), cfg.knn_k,
                        cfg.knn_temperature)
    top5 = min(5, scores.shape[1])
    result = {"top1": (scores.argmax(1) == test[1]).float().mean().item(),
              "top5": (scores.topk(top5, 1).indices == test[1][:, None]).any(1).float().mean().item(),
              "k": cfg.knn_k, "temperature": cfg.knn_temperature, "train_samples": len(train[1]),
              "test_samples": len(test[1])}
    return result, scores


def probe_config(args: argparse.Namespace) -> FitConfig:
    """The all-labels linear probe: AdamW, cosine schedule over `epochs` passes, no early stopping."""
    return FitConfig(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.probe_batch_size,
                     epochs=args.epochs)


def cmd_knn(session: Session, args: argparse.Namespace) -> None:
    train, test = session.features(session.eval.train_split), session.features(session.eval.test_split)
    if session.ctx.is_main:
        result, scores = knn_result(session, train, test)
        finish(session, session.result_name("knn"), result, scores, test[1])


def cmd_linear(session: Session, args: argparse.Namespace) -> None:
    train, test = session.features(session.eval.train_split), session.features(session.eval.test_split)
    if session.ctx.is_main:
        result, logits = linear_probe(train, test, len(session.task_names), probe_config(args),
                                      session.ctx.device, args.seed)
        result.update(train_samples=len(train[1]), test_samples=len(test[1]), epochs=args.epochs)
        finish(session, session.result_name("linear"), result, logits, test[1])


def cmd_finetune(session: Session, args: argparse.Namespace) -> None:
    train, test = session.images(session.eval.train_split), session.images(session.eval.test_split)
    if not session.ctx.is_main:
        return
    subset = balanced_subset(train[1], args.fraction, args.seed)
    cfg = FitConfig(lr=args.lr, weight_decay=args.weight_decay, batch_size=args.finetune_batch_size,
                    epochs=args.epochs, shift=args.shift)
    result, logits = finetune(session.encoder.backbone, session.encoder.feature_dim,
                              (train[0][subset], train[1][subset]), test, len(session.task_names), cfg,
                              session.ctx.device, args.seed, backbone_lr_scale=args.backbone_lr_scale)
    result.update(fraction=args.fraction, train_samples=len(subset), test_samples=len(test[1]), epochs=args.epochs)
    finish(session, session.result_name("finetune"), result, logits, test[1])


def study_config(args: argparse.Namespace) -> StudyConfig:
    cfg = StudyConfig(fractions=args.fractions, holdout=args.holdout, seed=args.seed,
                      backbone_lr_scale=args.backbone_lr_scale)
    cfg.probe = replace(cfg.probe, max_steps=args.probe_steps, patience=args.patience)
    cfg.finetune = replace(cfg.finetune, epochs=args.finetune_epochs, patience=args.patience,
                           lr=args.finetune_lr, shift=args.shift)
    return cfg


def cmd_label_efficiency(session: Session, args: argparse.Namespace) -> None:
    started = time.perf_counter()
    split = session.eval.train_split, session.eval.test_split
    features = [session.features(s) for s in split]
    images = [session.images(s) for s in split]
    if not session.ctx.is_main:
        return
    if not all(torch.equal(f[1], i[1]) for f, i in zip(features, images)):
        raise RuntimeError("cached features and images disagree on label order; delete "
                           + ", ".join(str(feature_cache_path(session.run_dir, s)) for s in split))
    train, test = (LabeledSplit(f[0], i[0], f[1]) for f, i in zip(features, images))
    num_classes = len(session.task_names)
    model_cfg, image_size = session.encoder.cfg.model, session.encoder.cfg.data.image_size
    print(f"label efficiency on {len(train.labels)} train / {len(test.labels)} test images, "
          f"{num_classes} classes, fractions {args.fractions}")
    study = run_study(session.encoder.backbone, session.encoder.feature_dim,
                      lambda seed: fresh_backbone(model_cfg, image_size, seed)[0], train, test, num_classes,
                      study_config(args), session.ctx.device)
    knn, _ = knn_result(session, (train.features, train.labels), (test.features, test.labels))
    linear, _ = linear_probe((train.features, train.labels), (test.features, test.labels), num_classes,
                             probe_config(args), session.ctx.device, args.seed)
    pixels = pixel_logistic_regression((train.images, train.labels), (test.images, test.labels))
    study["all_labels"] = {"knn": knn, "linear": linear, "pixel_logreg": pixels}
    study["wall_s"] = round(time.perf_counter() - started, 1)
    path = write_json(session.eval_dir / "label_efficiency.json", study)
    plots.label_efficiency_chart(study["rows"], METHODS, session.eval_dir / "label_efficiency.png",
                                 {"kNN": knn["top1"], "linear probe": linear["top1"],
                                  "raw-pixel logistic regression": pixels["top1"]})
    print("\n".join(verdicts(study["rows"])))
    print(f"all labels: kNN {knn['top1']:.3f}  linear probe {linear['top1']:.3f}  "
          f"raw pixels {pixels['top1']:.3f}  ({study['wall_s']} s) -> {path}")


def sample_images(session: Session, split: str, per_class: int, max_classes: int):
    """The first `per_class` images of each of the first `max_classes` classes met in `split`'s order."""
    images, labels, seen = [], [], {}
    for batch in split_batches(session.data, split, session.ctx, session.eval.batch_size):
        for image, label in zip(batch.views[0].cpu(), batch.labels.cpu().tolist()):
            if seen.get(label, 0) < per_class and (label in seen or len(seen) < max_classes):
                seen[label] = seen.get(label, 0) + 1
                images.append(image)
                labels.append(label)
        if len(seen) == max_classes and all(n == per_class for n in seen.values()):
            break
    return torch.stack(images), torch.tensor(labels)


def probe_test_accuracy(session: Session, test: tuple[torch.Tensor, torch.Tensor]) -> float | None:
    """Top-1 of the online probe's final head on the test features; None without a probe, or on a class
    subset (the head's classes are the dataset's)."""
    head = load_probe_head(session.run_dir)
    if not head or session.classes is not None:
        return None
    logits = test[0].float() @ head["weight"].T.float() + head["bias"].float()
    return (logits.argmax(1) == test[1]).float().mean().item()


def cmd_report(session: Session, args: argparse.Namespace) -> None:
    train, test = session.features(session.eval.train_split), session.features(session.eval.test_split)
    if not session.ctx.is_main:
        return
    out, figures = session.eval_dir, {}
    knn, _ = knn_result(session, train, test)
    images, labels = sample_images(session, session.eval.train_split, per_class=6, max_classes=10)
    figures["dataset samples"] = plots.sample_grid(images, labels, session.class_names, session.data.mean,
                                                   session.data.std, out / "samples.png")
    steps_trained, online = None, {}
    metrics_path = session.run_dir / "metrics.jsonl"
    if metrics_path.is_file() and (records := plots.read_metrics(metrics_path)):
        figures["training curves"] = plots.training_curves(records, out / "training_curves.png")
        steps_trained = max(r.get("step", 0) for r in records)
        online = online_metrics(records)
    pixel_train, pixel_test = session.images(session.eval.train_split), session.images(session.eval.test_split)
    pixel_knn, _ = knn_result(session, (pixel_train[0].flatten(1), pixel_train[1]),
                              (pixel_test[0].flatten(1), pixel_test[1]))
    pixels = {"knn": pixel_knn["top1"], "logreg": pixel_logistic_regression(pixel_train, pixel_test)["top1"]}
    figures["t-SNE of test embeddings"] = plots.tsne_plot(test[0], test[1], session.class_names, out / "tsne.png")
    for logged in sorted((session.run_dir / "images").glob("*.png")):  # the method's pictures (MAE: reconstructions)
        figures[f"{logged.stem} at the last checkpoint (one row per image kind)"] = Path(
            shutil.copyfile(logged, out / f"pretraining_{logged.name}"))
    study = read_json(out / "label_efficiency.json")
    if study is not None:
        figures["label efficiency"] = out / "label_efficiency.png"
        if not figures["label efficiency"].is_file():
            plots.label_efficiency_chart(study["rows"], METHODS, figures["label efficiency"])
    path = write_report(session.run_dir, out, replace(session.encoder.cfg, eval=session.eval), knn, pixels, online,
                        figures, steps_trained, probe_test_accuracy(session, test))
    print(f"report: {path}")


# per-command defaults; label-efficiency and report use the linear ones for the all-labels probe
EPOCHS = {"linear": 30, "finetune": 20}
LRS = {"linear": 1e-2, "finetune": 1e-3}
COMMANDS = {"knn": cmd_knn, "linear": cmd_linear, "finetune": cmd_finetune,
            "label-efficiency": cmd_label_efficiency, "report": cmd_report}


def fractions(text: str) -> list[float]:
    try:
        return [float(f) for f in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions {text!r}: expected e.g. 0.01,0.1,1") from None


def build_parser() -> argparse.ArgumentParser:
    study, probe = StudyConfig(), FitConfig()
    parser = argparse.ArgumentParser(prog="python -m trainer eval", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=list(COMMANDS))
    # torchrun's own parser reads `--run` as an abbreviation of its --run-path: spell it --run-dir there
    parser.add_argument("--run", "--run-dir", dest="run", required=True,
                        help="run directory (runs/<name>); --run-dir under torchrun")
    parser.add_argument("--shards", help="dataset folder to evaluate on (default: the run's data.shards)")
    parser.add_argument("--out", help="folder for the results (default: runs/<name>/eval); for a read-only run")
    parser.add_argument("--train-split", help="labeled split to fit on (default: eval.train_split)")
    parser.add_argument("--test-split", help="split to score (default: eval.test_split)")
    parser.add_argument("--batch-size", type=int, help="feature-extraction batch per device (eval.batch_size)")
    parser.add_argument("--classes", help="k-way task on these classes: names, ids (wnids) or label ints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="linear/finetune: passes over the labels (default: linear "
                        f"{EPOCHS['linear']}, finetune {EPOCHS['finetune']})")
    parser.add_argument("--lr", type=float, help="linear/finetune: AdamW lr of the head (default: linear "
                        f"{LRS['linear']}, finetune {LRS['finetune']})")
    parser.add_argument("--weight-decay", type=float, default=probe.weight_decay)
    parser.add_argument("--probe-batch-size", type=int, default=256)
    parser.add_argument("--finetune-batch-size", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=1.0, help="finetune: class-balanced label fraction")
    parser.add_argument("--backbone-lr-scale", type=float, default=study.backbone_lr_scale,
                        help="finetune: backbone lr = lr x this")
    parser.add_argument("--shift", type=int, default=study.finetune.shift,
                        help="finetune: random translation augmentation in px")
    parser.add_argument("--fractions", type=fractions, default=study.fractions, help="label-efficiency fractions")
    parser.add_argument("--holdout", type=float, default=study.holdout,
                        help="label-efficiency: share of the train split held out for early stopping")
    parser.add_argument("--probe-steps", type=int, default=study.probe.max_steps,
                        help="label-efficiency: max linear-probe steps")
    parser.add_argument("--finetune-epochs", type=int, default=study.finetune.epochs,
                        help="label-efficiency: max fine-tune / scratch passes over each labelled subset "
                             f"(batch {study.finetune.batch_size})")
    parser.add_argument("--finetune-lr", type=float, default=study.finetune.lr,
                        help="label-efficiency: AdamW lr of fine-tune head and scratch network")
    parser.add_argument("--patience", type=int, default=study.finetune.patience,
                        help=f"label-efficiency: validations (every {study.finetune.eval_every} fine-tune / "
                             f"{study.probe.eval_every} probe steps) without improvement before stopping")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default = "finetune" if args.command == "finetune" else "linear"
    args.epochs = EPOCHS[default] if args.epochs is None else args.epochs
    args.lr = LRS[default] if args.lr is None else args.lr
    try:
        session = open_session(args)
        COMMANDS[args.command](session, args)
    except (ValueError, FileNotFoundError) as err:  # user mistakes: a bad path, flag or class name
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0
