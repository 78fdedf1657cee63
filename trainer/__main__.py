"""`python -m trainer train --config F [key=value ...]`, `... eval <command> ...`, `... export ...`.

The same command runs under plain python, torchrun, the deepspeed launcher and srun: trainer/dist.py
reads whichever environment the launcher set. Config mistakes exit 2 before any process group starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.manifest import ManifestError, load_manifest
from data_prep.shard_format import ShardError
from trainer.config import Config, ConfigError
from trainer.registry import load_config

USAGE = """usage: python -m trainer {train,show,eval,export} ...
  train --config F [key=value ...]   pretrain (or resume) the run F describes
  show --config F --out PNG [--rows N] [key=value ...]   a grid of images and the method's views
  eval <knn|linear|finetune|label-efficiency|report> --run DIR [...]
  export --run DIR --out FILE"""


MAX_UPSCALE = 8  # data.image_size above this many times the stored images' larger side is a typo, not a plan


def check_image_size(cfg: Config) -> None:
    """Refuse a view size far above what the shards hold (each view would be mostly interpolation, and
    a typo like 3200 allocates gigabytes per batch). Datasets of mixed sizes (image_size null) pass."""
    stored = load_manifest(cfg.data.shards)["image_size"]
    if stored and cfg.data.image_size > MAX_UPSCALE * max(stored):
        raise ConfigError(f"'data.image_size' = {cfg.data.image_size}: more than {MAX_UPSCALE}x the "
                          f"{stored[0]}x{stored[1]} px images of {cfg.data.shards}")


MIN_CPU_WIDTH = 8


def check_cpu_width(cfg: Config) -> None:
    """Refuse a ResNet narrower than 8 channels that will train on the CPU: torch 2.14's CPU backward of the
    1x1 stride-2 shortcut convolution on the loaders' channels_last input corrupts memory (an abort, or worse)."""
    import torch

    if cfg.model.backbone.startswith("resnet") and cfg.model.width < MIN_CPU_WIDTH and not torch.cuda.is_available():
        raise ConfigError(f"'model.width' = {cfg.model.width}: must be >= {MIN_CPU_WIDTH} on the CPU (torch's CPU "
                          "backward of a 1x1 stride-2 convolution on channels_last input corrupts memory below that)")


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer train", description=__doc__)
    parser.add_argument("--config", required=True, help="YAML file (may list _base_ layers)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=10")
    # the deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_image_size(cfg)
        check_cpu_width(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except ManifestError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2
    from trainer.checkpoint import ResumeError  # torch, the data backends: only once the config is valid
    from trainer.loop import NonFiniteLoss, train
    from trainer.run_lock import RunInUse

    try:
        return train(cfg)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ResumeError, RunInUse) as e:  # nothing was trained or written: the command needs another value
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ManifestError, ShardError) as e:  # found while building the loader, before any run folder
        print(f"data error: {e}", file=sys.stderr)
        return 2


def show_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer show",
                                     description="write a PNG grid: each image's resize, then each view of the "
                                                 "config's method recipe")
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--rows", type=int, default=8, help="images shown (one per row)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. data.backend=dali")
    args = parser.parse_args(argv)
    from trainer.data.show import render_grid
    from trainer.methods import METHODS

    try:
        cfg = load_config(args.config, args.overrides)
        views = METHODS[cfg.method.name].views(cfg.method, cfg.data, cfg.aug)
        path = render_grid(cfg.data, views, args.out, rows=args.rows, seed=cfg.train.seed)
    except ValueError as err:  # ConfigError and ManifestError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}: {args.rows} images x (original + {len(views)} views)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("train", "show", "eval", "export"):
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "show":
        return show_main(rest)
    if command == "eval":
        from trainer.eval.cli import main as eval_main

        return eval_main(rest)
    from trainer.eval.export import main as export_main

    return export_main(rest)


if __name__ == "__main__":
    sys.exit(main())
