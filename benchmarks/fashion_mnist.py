"""The Fashion-MNIST study: every method pretrained under one wall-clock budget, scored by the project's eval.

    python -m benchmarks.fashion_mnist --budget-minutes 20 --methods simclr,byol,vicreg,rotnet --seeds 0
    python -m benchmarks.fashion_mnist --budget-minutes 60 --methods simclr --seeds 0,1,2
    python -m benchmarks.fashion_mnist --budget-minutes 20 --methods simclr --threads 2 --ranks 2   # 2 cores, DDP
    python -m benchmarks.fashion_mnist --steps 300 --methods simclr --fractions '' optim.base_lr=0.4   # a probe

A cell is (method, seed, budget): `configs/fashion_mnist_<method>.yaml` pretrained with `train.max_steps`
set so the run fits the budget (seconds per step measured first by a short calibration run of the same
config on the same machine; the schedule then ends where the budget does, instead of being cut off),
or, with `--steps N`, for exactly N steps (no calibration: a recipe probe that reads the same on a loaded
machine, cells named `<method>_s<seed>_<N>steps`; the overrides given are recorded in the cell), then
scored by trainer.eval: weighted kNN and the linear probe on all train labels, and at each label
fraction the SSL linear probe, SSL fine-tune and the same network from scratch. Fine-tune and scratch
get the same budget in epochs over their labels (`--finetune-epochs`, FitConfig.epochs) and the same
early stopping (validated at most once an epoch on a held-out 10% of the train split). The `pixels` cell is the raw-pixel reference:
the same kNN and scikit-learn's logistic regression on the eval-view pixels; `random_init_<method>` scores
the first method's network with random weights the same way (what pretraining must add to).

Each cell writes <work-dir>/cells/<cell>.json when it finishes, and a rerun skips cells whose file
exists, so the study runs in pieces (delete a cell's file to run it again); a work dir holds one recipe: a
run whose overrides differ from any finished cell's, reference cells included, is refused before it trains.
After every cell the finished cells are gathered into results/fashion_mnist_<device>_<date>.json and a
chart (.png beside it). `--from-results FILE` makes a committed results JSON's rows finished cells of the
work dir, each marked `from_results: FILE` (measured then, not recomputed), so new cells join its table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import add_common_args, machine, print_table, setup, trainer_launch, write_results
from data_prep.manifest import load_manifest
from trainer.atomic_json import write_json
from trainer.dist import DistContext
from trainer.eval.encoder import fresh_backbone, load_encoder
from trainer.eval.features import cached_features, split_images
from trainer.eval.fit import FitConfig
from trainer.eval.knn import knn_predict
from trainer.eval.label_efficiency import LabeledSplit, StudyConfig, run_study
from trainer.eval.linear import linear_probe, pixel_logistic_regression
from trainer.eval.plots import read_metrics
from trainer.registry import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def config_path(method: str) -> Path:
    return CONFIGS / f"fashion_mnist_{method}.yaml"


def train(config: Path, overrides: list[str], log: Path, ranks: int = 1) -> None:
    """`python -m trainer train` in its own process with this process's torch threads (OMP_NUM_THREADS), or
    as `ranks` gloo processes under torchrun sharing them, with SyncBN so BatchNorm still sees the whole
    batch (the same recipe as one process)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // ranks))}
    launcher, recipe = trainer_launch(ranks)
    with log.open("a") as out:
        done = subprocess.run([*launcher, "train", "--config", str(config), *overrides, *recipe,
                               "train.progress=false"],
                              cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config}: training exited {done.returncode}; see {log}")


def seconds_per_step(config: Path, overrides: list[str], run_root: Path, steps: int, cell: str,
                     ranks: int = 1) -> float:
    """Median of the trainer's own `time/step` over a short run of the same config, first window
    (start-up, first batches) dropped. Measured afresh for every cell, under the load it will run with:
    a calibration folder left from before would resume at its last step and hand back its old times."""
    window = max(1, steps // 3)
    name = f"calibrate_{cell}"
    shutil.rmtree(run_root / name, ignore_errors=True)
    train(config, [*overrides, f"train.run_root={run_root}", f"train.name={name}", f"train.max_steps={steps}",
                   f"train.log_every={window}", f"train.ckpt_every={steps}", "train.knn_every=0"],
          run_root / f"{name}.log", ranks)
    times = [r["time/step"] for r in read_metrics(run_root / name / "metrics.jsonl") if "time/step" in r]
    return statistics.median(times[1:] or times)


def cell_name(method: str, seed: int, args: argparse.Namespace) -> str:
    budget = f"{args.steps}steps" if args.steps else f"{args.budget_minutes:g}min"
    return f"{method}_s{seed}_{budget}" + (f"_{args.ranks}ranks" if args.ranks > 1 else "")


def pretrain(method: str, seed: int, args: argparse.Namespace) -> tuple[Path, dict]:
    """Train one cell: `args.steps` steps, or as many as the calibrated step time fits in the budget."""
    config = config_path(method)
    overrides = [f"data.shards={args.shards}", f"train.seed={seed}", *args.overrides]
    run_root = args.work_dir / "runs"
    run_root.mkdir(parents=True, exist_ok=True)
    name = cell_name(method, seed, args)
    per_step = None
    steps = args.steps
    if not steps:
        per_step = seconds_per_step(config, overrides, run_root, args.calibration_steps, name, args.ranks)
        steps = max(1, math.floor(60 * args.budget_minutes / per_step))
    started = time.perf_counter()
    train(config, [*overrides, f"train.run_root={run_root}", f"train.name={name}", f"train.max_steps={steps}",
                   "train.knn_every=0"], run_root / f"{name}.log", args.ranks)
    cfg = load_config(config, overrides)
    logged = read_metrics(run_root / name / "metrics.jsonl")
    return run_root / name, {"steps": steps, "calibrated_s_per_step": per_step,
                             "pretrain_wall_s": round(time.perf_counter() - started, 1),
                             "epochs": round(steps * cfg.train.global_batch_size / args.train_samples, 2),
                             # the first window the loop flagged as collapsed (Method.collapse_sign), or None
                             "collapse_step": next((r["step"] for r in logged if r.get("collapse")), None)}


class Data:
    """The eval-view images of both splits, read once per process (the same for every cell)."""

    def __init__(self, cfg, device: torch.device):
        ctx = DistContext(device=device)
        self.ctx, self.cfg = ctx, cfg
        self.train = split_images(cfg.data, cfg.eval.train_split, ctx, cfg.eval.batch_size)
        self.test = split_images(cfg.data, cfg.eval.test_split, ctx, cfg.eval.batch_size)
        self.num_classes = len(load_manifest(cfg.data.shards)["classes"])


def knn_top1(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor, cfg,
             num_classes: int) -> float:
    predicted = knn_predict(train, train_y, test, num_classes, cfg.eval.knn_k, cfg.eval.knn_temperature)
    return (predicted == test_y).float().mean().item()


def all_labels_probe(num_samples: int, epochs: int) -> FitConfig:
    """The linear probe of `python -m trainer eval linear` (AdamW lr 1e-2, cosine over `epochs` passes)."""
    return FitConfig(lr=1e-2, weight_decay=FitConfig().weight_decay, batch_size=256,
                     max_steps=epochs * math.ceil(num_samples / 256))


def evaluate(run_dir: Path, data: Data, args: argparse.Namespace, device: torch.device, seed: int) -> dict:
    encoder = load_encoder(run_dir, device)
    cfg = encoder.cfg
    splits = (cfg.eval.train_split, cfg.eval.test_split)
    (train_f, train_y), (test_f, test_y) = (cached_features(run_dir, encoder.backbone, data.cfg.data, s,
                                                            data.ctx, cfg.eval.batch_size) for s in splits)
    if not (torch.equal(train_y, data.train[1]) and torch.equal(test_y, data.test[1])):
        raise RuntimeError(f"{run_dir}: cached features and images disagree on label order; delete eval/features_*.pt")
    n = data.num_classes
    result = {"knn": knn_top1(train_f, train_y, test_f, test_y, cfg, n)}
    linear, _ = linear_probe((train_f, train_y), (test_f, test_y), n, all_labels_probe(len(train_y), args.probe_epochs),
                             device, seed)
    result["linear"] = linear["top1"]
    train = LabeledSplit(train_f, data.train[0], train_y)
    test = LabeledSplit(test_f, data.test[0], test_y)
    result["label_efficiency"] = []
    for fraction in args.fractions:
        study = StudyConfig(fractions=[fraction], seed=seed)
        study.finetune = replace(study.finetune, epochs=args.finetune_epochs)
        row = run_study(encoder.backbone, encoder.feature_dim,
                        lambda s: fresh_backbone(cfg.model, cfg.data.image_size, s)[0], train, test, n, study,
                        device)["rows"][0]
        keys = ("ssl_linear", "ssl_finetune", "scratch")
        result["label_efficiency"].append({k: row[k] for k in ("fraction", "labeled_samples", *keys)}
                                          | {"steps": {k: row["details"][k]["steps"] for k in keys},
                                             "max_epochs_over_labels": args.finetune_epochs})
    return result


def pixels_cell(data: Data) -> dict:
    (x, y), (xt, yt) = data.train, data.test
    return {"knn": knn_top1(x.flatten(1), y, xt.flatten(1), yt, data.cfg, data.num_classes),
            "linear": pixel_logistic_regression(data.train, data.test)["top1"]}


def random_init_cell(data: Data, config: Path, args: argparse.Namespace, device: torch.device) -> dict:
    """The reference an encoder must beat besides pixels: `config`'s network with random weights (seed 0),
    scored by the same kNN and all-labels linear probe."""
    cfg = load_config(config, [f"data.shards={args.shards}", *args.overrides])
    backbone = fresh_backbone(cfg.model, cfg.data.image_size, 0)[0].to(device).eval()
    with torch.no_grad():
        train_f, test_f = (torch.cat([backbone(x[i:i + 512].to(device)).cpu() for i in range(0, len(x), 512)])
                           for x in (data.train[0], data.test[0]))
    (_, train_y), (_, test_y) = data.train, data.test
    linear, _ = linear_probe((train_f, train_y), (test_f, test_y), data.num_classes,
                             all_labels_probe(len(train_y), args.probe_epochs), device, 0)
    return {"knn": knn_top1(train_f, train_y, test_f, test_y, cfg, data.num_classes), "linear": linear["top1"],
            "config": config.name}


def seed_cells(results: Path, cells_dir: Path) -> list[str]:
    """The rows of a results JSON as finished cells of `cells_dir`, those not there yet; returns their names."""
    try:
        rows = json.loads(results.read_text())["rows"]
        names = [row["cell"] for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--from-results {results}: not a results JSON whose rows name their cell ({e!r})")
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise SystemExit(f"--from-results {results}: cell names that are not file names: {bad}")
    seeded = []
    for row in rows:
        path = cells_dir / f"{row['cell']}.json"
        if not path.exists():
            write_json(path, {**row, "from_results": row.get("from_results", results.name)})
            seeded.append(row["cell"])
    return seeded


def gather(cells_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]


SCORES = ("knn", "linear")
LABEL_SCORES = ("ssl_linear", "ssl_finetune", "scratch")


def over_seeds(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample standard deviation) of every score of each (method, budget) pretrained with
    more than one seed: the numbers to quote for it, since one seed's differ by about a point."""
    groups: dict[tuple[str, float | None, int | None, int], list[dict]] = {}
    for r in rows:
        if "seed" in r:
            key = (r["method"], r["budget_minutes"], r.get("budget_steps"), r.get("ranks", 1))
            groups.setdefault(key, []).append(r)

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values)}

    out = []
    for (method, budget, budget_steps, ranks), cells in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(cells) < 2:
            continue
        entry = {"method": method, "budget_minutes": budget, "budget_steps": budget_steps, "ranks": ranks,
                 "seeds": sorted(c["seed"] for c in cells),
                 **{k: spread([c[k] for c in cells]) for k in (*SCORES, "steps")}}
        entry["label_efficiency"] = []  # over the seeds that ran each fraction (a run may skip them: --fractions '')
        for f in sorted({le["fraction"] for c in cells for le in c.get("label_efficiency", [])}):
            runs = {c["seed"]: le for c in cells for le in c.get("label_efficiency", []) if le["fraction"] == f}
            if len(runs) > 1:
                entry["label_efficiency"].append({"fraction": f, "seeds": sorted(runs), **{
                    k: spread([le[k] for le in runs.values()]) for k in LABEL_SCORES}})
        out.append(entry)
    return out


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["cell"] for r in rows]
    for offset, key in ((-0.2, "knn"), (0.2, "linear")):
        ax.bar([i + offset for i in range(len(rows))], [100 * r[key] for r in rows], width=0.4, label=key)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(100 * min(r[k] for r in rows for k in ("knn", "linear")) - 5, 100)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST: all train labels")
    ax.legend(loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=20.0, help="pretraining wall clock per cell")
    p.add_argument("--steps", type=int, default=0,
                   help="pretrain each cell for exactly this many steps instead of --budget-minutes (a probe)")
    p.add_argument("--methods", default="simclr,byol,vicreg,rotnet,barlow_twins,simsiam,mocov3,dino",
                   help="comma-separated; each needs configs/fashion_mnist_<method>.yaml")
    p.add_argument("--seeds", default="0", help="comma-separated pretraining seeds (train.seed)")
    p.add_argument("--shards", type=Path, default=REPO / "shards" / "fashion-mnist")
    p.add_argument("--work-dir", type=Path, default=REPO / "runs" / "fashion_mnist_study",
                   help="runs, logs and the finished cells (cells/<cell>.json)")
    p.add_argument("--fractions", default="0.01,0.1",
                   help="label fractions of the label-efficiency rows; '' for none (kNN and linear only)")
    p.add_argument("--finetune-epochs", type=int, default=10,
                   help="fine-tune and scratch: most passes over the labels (early stopping may end sooner)")
    p.add_argument("--probe-epochs", type=int, default=30, help="all-labels linear probe: passes over the features")
    p.add_argument("--calibration-steps", type=int, default=15, help="steps timed before a cell to size its run")
    p.add_argument("--ranks", type=int, default=1,
                   help="pretrain as this many gloo processes (torchrun, DDP + SyncBN) sharing --threads; "
                        "cells get an _<R>ranks suffix")
    p.add_argument("--from-results", type=Path, action="append", default=[],
                   help="a results JSON whose rows become finished cells of --work-dir (any not there yet), "
                        "so this run's cells join its table; repeatable")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every method's config")
    add_common_args(p)
    args = p.parse_args(argv)
    device = setup(args)
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    args.fractions = [float(f) for f in args.fractions.split(",") if f]
    missing = [str(config_path(m)) for m in methods if not config_path(m).is_file()]
    if missing:
        raise SystemExit(f"--methods: no config {', '.join(missing)}")
    cells_dir = args.work_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    for results in args.from_results:
        print(f"{results}: seeded cells {seed_cells(results, cells_dir)}")
    reference = load_config(config_path(methods[0]), [f"data.shards={args.shards}", *args.overrides])
    data = None
    todo = [("pixels", None, None), (f"random_init_{methods[0]}", "random", None)]
    todo += [(cell_name(m, s, args), m, s) for m in methods for s in seeds]
    for done in sorted(cells_dir.glob("*.json")):  # one recipe per work dir: its reference cells and table too
        before = json.loads(done.read_text()).get("overrides", [])
        if before != args.overrides:
            raise SystemExit(f"{done}: finished with overrides {before}, asked now for {args.overrides}: "
                             "give this recipe a --work-dir of its own")
    for cell, method, seed in todo:
        if (cells_dir / f"{cell}.json").is_file():
            print(f"{cell}: done before, skipped")
            continue
        data = data or Data(reference, device)
        args.train_samples = len(data.train[1])
        started = time.perf_counter()
        if method is None:
            result = {"cell": cell, **pixels_cell(data)}
        elif method == "random":
            result = {"cell": cell, **random_init_cell(data, config_path(methods[0]), args, device)}
        else:
            run_dir, run = pretrain(method, seed, args)
            result = {"cell": cell, "method": method, "seed": seed,
                      "budget_minutes": None if args.steps else args.budget_minutes,
                      "budget_steps": args.steps or None, "ranks": args.ranks, **run,
                      **evaluate(run_dir, data, args, device, seed)}
        result["overrides"] = args.overrides  # what the cell ran with: a rerun must ask for the same
        result["cell_wall_s"] = round(time.perf_counter() - started, 1)
        result["machine"] = machine()  # the load average as the cell ended: other jobs on the cores
        write_json(cells_dir / f"{cell}.json", result)
        print(f"{cell}: kNN {result['knn']:.4f}  linear {result['linear']:.4f}", flush=True)
        write_study(cells_dir, args, device)
    rows = write_study(cells_dir, args, device)
    print_table(rows, ["cell", "knn", "linear", "steps", "epochs", "pretrain_wall_s", "cell_wall_s"])
    for s in over_seeds(rows):
        budget = f"{s['budget_steps']} steps" if s["budget_steps"] else f"{s['budget_minutes']:g} min"
        print(f"{s['method']}, {budget}, seeds {s['seeds']}: " + ", ".join(
            f"{k} {100 * s[k]['mean']:.1f} +- {100 * s[k]['stdev']:.1f}" for k in SCORES))


def write_study(cells_dir: Path, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every finished cell into results/fashion_mnist_<device>_<date>.json and its chart."""
    rows = gather(cells_dir)
    meta = {"what": __doc__.split("\n")[0], "shards": str(args.shards), "threads": torch.get_num_threads(),
            "machine": machine()}
    path = write_results("fashion_mnist", device, meta, rows, args.out_dir, over_seeds=over_seeds(rows))
    chart(rows, path.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    main()
