"""Time to accuracy, side by side: the same SimCLR job in this trainer and in lightly's parts.

    python -m benchmarks.time_to_accuracy --config configs/fashion_mnist_simclr.yaml --epochs 2
    python -m benchmarks.time_to_accuracy --max-steps 120 --turn-steps 60    # a shorter job, turns of 60 steps

ours     `python -m trainer train` on the config's shards, checkpointing at every epoch end
lightly  benchmarks/peer_lightly.py in the peer environment (`make bench-env`, `--peer-python`): torchvision
         ImageFolder over the same image bytes (exported from the shards), lightly's SimCLRTransform,
         projection head, NTXentLoss, LARS and CosineWarmupScheduler; every hyperparameter taken from
         the same resolved config (backbone, batch, epochs, lr, schedule, augmentation strengths)
Each runs in its own process and they take turns, epoch by epoch (or every --turn-steps optimizer
steps, with --max-steps as the schedule's length in both): one runs while the other is frozen
(SIGSTOP on its process group, loader workers included), so background load on a shared machine falls
on both alike. A turn's wall time runs from SIGCONT until that turn's weights appear on disk
(process start-up is in the first turn of each). Between turns, with both frozen, the same evaluator scores
both encoders: the project's weighted kNN (eval.knn_k, eval.knn_temperature) on the test split over
features of the train split, through the same deterministic eval view.

With --ranks R, ours runs as R gloo processes under torchrun (DDP, SyncBN so BatchNorm sees the whole
batch as the peer's one process does), the --threads split between them; the peer keeps one process with
all --threads. A turn freezes and resumes every process group of the tree (torchrun gives each rank its own).
A --work-dir with a previous job's checkpoints is refused (both sides would resume from them); SIGTERM or an
error ends both trees, frozen ones included.

time_to_accuracy_ratio = ours' cumulative wall time at the first turn whose kNN reaches lightly's final
kNN / lightly's total wall time (null when ours never reaches it). Beside it, `same_steps_wall_ratio` (the two
totals' ratio) and `ratio_within_1se` (the target lowered by one binomial standard error of the kNN accuracy):
with the same arithmetic on both sides, which ends a hair higher is a seed's luck, and these two are not.
JSON: results/time_to_accuracy_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import torch

from benchmarks.common import (
    add_common_args,
    loadavg,
    machine,
    print_table,
    setup,
    trainer_launch,
    write_results,
)
from data_prep.manifest import load_manifest
from trainer.config import Config
from trainer.dist import DistContext
from trainer.eval.encoder import backbone_state
from trainer.eval.features import split_images
from trainer.eval.knn import knn_predict
from trainer.methods import METHODS
from trainer.models import build_backbone
from trainer.registry import load_config

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.05  # a frozen turn overruns its epoch by at most this (plus the time to stop the group)


def export_imagefolder(shards: Path, split: str, out: Path) -> Path:
    """Write the split's encoded image bytes, unchanged, as out/<split>/<class>/<key>.<ext> (a torchvision
    ImageFolder tree); class folders are the manifest's class ids, so folder order is label order only
    when the ids sort that way (labels are not compared across implementations, only accuracies)."""
    manifest = load_manifest(shards)
    root = out / split
    done = root / ".complete"
    if done.is_file():
        return root
    classes = manifest["classes"]
    for entry in manifest["splits"][split]["shards"]:
        samples: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shards / entry["file"]) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, fields in samples.items():
            ext = "png" if "png" in fields else "jpg"
            folder = root / classes[int(fields["cls"])]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{key.replace('/', '_')}.{ext}").write_bytes(fields[ext])
    done.touch()
    return root


def peer_params(cfg: Config, train_dir: Path, threads: int, total_steps: int, save_every: int) -> dict:
    """Every hyperparameter of the lightly loop, read off the trainer's resolved config and SimCLR's views."""
    view = METHODS["simclr"].views(cfg.method, cfg.data, cfg.aug)[0]
    return {
        "train_dir": str(train_dir), "image_size": view.size, "width": cfg.model.width,
        "small_stem": cfg.model.small_stem, "batch_size": cfg.train.global_batch_size, "total_steps": total_steps,
        "save_every": save_every,
        "lr": cfg.optim.base_lr * cfg.train.global_batch_size / 256, "warmup_epochs": cfg.optim.warmup_epochs,
        "final_lr_ratio": cfg.optim.final_lr_ratio, "weight_decay": cfg.optim.weight_decay,
        "momentum": cfg.optim.momentum, "trust_coefficient": cfg.optim.trust_coefficient,
        "temperature": cfg.method.temperature, "proj_hidden_dim": cfg.method.proj_hidden_dim,
        "proj_output_dim": cfg.method.proj_output_dim, "min_scale": view.scale[0], "flip_prob": view.flip_prob,
        "jitter": list(view.jitter), "jitter_prob": view.jitter_prob, "gray_prob": view.gray_prob,
        "blur_prob": view.blur_prob, "mean": cfg.data.mean, "std": cfg.data.std, "workers": cfg.data.workers,
        "threads": threads, "seed": cfg.train.seed,
    }


def time_to_accuracy_ratio(ours: list[dict], peer: list[dict], test_images: int) -> dict:
    """From per-turn curves [{"cum_wall_s", "knn_top1"}]: the target (peer's final kNN), ours' time to
    reach it (first turn at or above it), and that time over the peer's total; None where never reached.

    Where both run the same arithmetic, which side ends a hair higher is one seed's luck, so that ratio
    is either about the step-time ratio or None. Two readings beside it that such luck does not flip:
    `same_steps_wall_ratio`, ours' total wall over the peer's for the same steps, and
    `ratio_within_1se`, the same ratio with the target lowered by one binomial standard error of an
    accuracy t measured on `test_images` images, sqrt(t (1 - t) / n) (0.39 points at 81% of 10,000)."""
    target, total = peer[-1]["knn_top1"], peer[-1]["cum_wall_s"]

    def first_at(level: float) -> float | None:
        return next((row["cum_wall_s"] for row in ours if row["knn_top1"] >= level), None)

    se = math.sqrt(target * (1 - target) / test_images)
    reached, near = first_at(target), first_at(target - se)
    return {"target_knn_top1": target, "ours_time_to_target_s": reached, "lightly_wall_s": total,
            "time_to_accuracy_ratio": None if reached is None else round(reached / total, 3),
            "same_steps_wall_ratio": round(ours[-1]["cum_wall_s"] / total, 3),
            "knn_standard_error": round(se, 5),
            "ratio_within_1se": None if near is None else round(near / total, 3)}


def process_groups(root: int) -> list[int]:
    """The process groups of `root` and all its descendants (from /proc): torchrun starts each rank in a
    session of its own, so signalling root's group alone would leave the ranks running."""
    parent, group = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        fields = text[text.rfind(")") + 2:].split()
        pid = int(stat.parent.name)
        parent[pid], group[pid] = int(fields[1]), int(fields[2])
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sorted({group[pid] for pid in tree if pid in group})


class Turns:
    """One implementation's process tree, run one turn at a time: `turn(path)` resumes it, waits until
    `path` exists, freezes it again and returns the seconds it ran."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]):
        self.name, self.log = name, log
        self.log_file = log.open("w")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.groups = [self.proc.pid]
        self._signal(signal.SIGSTOP)

    def _signal(self, sig: int) -> None:
        for group in self.groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:  # a rank that has already exited
                pass

    def freeze(self) -> None:
        """Stop the root's group first (so it starts no more ranks), then every group below it."""
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.groups = process_groups(self.proc.pid)
        self._signal(signal.SIGSTOP)

    def turn(self, artifact: Path) -> float:
        start = time.perf_counter()
        self._signal(signal.SIGCONT)
        while not artifact.exists():
            if self.proc.poll() not in (None, 0):
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} before writing {artifact}; "
                                   f"its log ({self.log}):\n{self.log.read_text()[-3000:]}")
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - start
        if self.proc.poll() is None:
            self.freeze()
        return elapsed

    def finish(self, completed: bool) -> None:
        """Let a completed job exit by itself; end an interrupted one (every group of its tree)."""
        if self.proc.poll() is None:
            if not completed:
                self.groups = process_groups(self.proc.pid)  # the root's own group among them
            self._signal(signal.SIGCONT if completed else signal.SIGKILL)
            self.proc.wait(timeout=120)
        self.log_file.close()


class Scorer:
    """Weighted kNN of a backbone: test-split features against train-split features, eval view, cfg.eval."""

    def __init__(self, cfg: Config, device: torch.device):
        ctx = DistContext(device=device)
        self.cfg, self.device = cfg, device
        self.train = split_images(cfg.data, cfg.eval.train_split, ctx, cfg.eval.batch_size)
        self.test = split_images(cfg.data, cfg.eval.test_split, ctx, cfg.eval.batch_size)
        self.num_classes = len(load_manifest(cfg.data.shards)["classes"])

    @torch.no_grad()
    def features(self, backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        bs = self.cfg.eval.batch_size
        return torch.cat([backbone(images[i:i + bs].to(self.device)).float().cpu()
                          for i in range(0, len(images), bs)])

    def knn(self, state: dict[str, torch.Tensor]) -> float:
        backbone, _ = build_backbone(self.cfg.model, self.cfg.data.image_size)
        backbone.load_state_dict(state, strict=True)  # strict: the peer's network is ours, name for name
        backbone.to(self.device).eval()
        bank, test = self.features(backbone, self.train[0]), self.features(backbone, self.test[0])
        predicted = knn_predict(bank, self.train[1], test, self.num_classes, self.cfg.eval.knn_k,
                                self.cfg.eval.knn_temperature)
        return (predicted == self.test[1]).float().mean().item()


def refuse_previous_run(work: Path) -> None:
    """A work dir holding a previous job's checkpoints would let both sides resume from them (ours from its
    run folder, the peer's turns ending at once on weights already there): stop before timing that."""
    left = sorted([*(work / "runs" / "ours" / "checkpoints").glob("step_*"), *(work / "peer").glob("step_*.pt")])
    if left:
        raise SystemExit(f"--work-dir {work}: holds a previous run's checkpoints ({left[0]}, {len(left)} in all), "
                         f"which both implementations would resume from; pass a fresh --work-dir or remove "
                         f"{work / 'runs'} and {work / 'peer'} (the exported {work / 'imagefolder'} can stay)")


def _exit_on_sigterm(signum: int, frame) -> None:
    """SIGTERM (kill, Slurm's time limit) as an exit, so the frozen trees are killed, not left stopped."""
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict, dict]:
    work = args.work_dir
    overrides = [*args.overrides, f"train.epochs={args.epochs}"]
    if args.max_steps:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_config(args.config, overrides)
    if cfg.method.name != "simclr":
        raise SystemExit(f"{args.config}: method.name = {cfg.method.name!r}; this benchmark compares SimCLR")
    shards = Path(cfg.data.shards)
    steps_per_epoch = load_manifest(shards)["splits"][cfg.data.split]["num_samples"] // cfg.train.global_batch_size
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    every = args.turn_steps or steps_per_epoch
    if total % every:
        raise SystemExit(f"--turn-steps {every} does not divide the job's {total} steps")
    refuse_previous_run(work)
    train_dir = export_imagefolder(shards, cfg.data.split, work / "imagefolder")
    params = peer_params(cfg, train_dir, args.threads, total, every)
    (work / "peer").mkdir(parents=True, exist_ok=True)
    (work / "peer" / "params.json").write_text(json.dumps(params, indent=1))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peer_env = dict(env)
    if args.threads:
        peer_env["OMP_NUM_THREADS"] = str(args.threads)
        env["OMP_NUM_THREADS"] = str(max(1, args.threads // args.ranks))  # the same threads in all
    ours_dir = work / "runs" / "ours"
    launcher, recipe = trainer_launch(args.ranks)
    if args.ranks > 1:
        recipe.append("engine.dist_timeout_s=7200")  # a collective may wait out the peer's turn, ranks frozen
    ours = Turns("ours", [*launcher, "train", "--config", str(args.config), *overrides, *recipe,
                          f"train.run_root={work / 'runs'}", "train.name=ours", f"train.ckpt_every={every}",
                          f"train.keep_last={total // every}", "train.knn_every=0", "train.progress=false"],
                 work / "ours.log", env)
    peer = Turns("lightly", [str(args.peer_python), str(REPO / "benchmarks" / "peer_lightly.py"),
                             "--params", str(work / "peer" / "params.json"), "--out", str(work / "peer")],
                 work / "lightly.log", peer_env)
    scorer = Scorer(cfg, device)
    rows, curves = [], {"ours": [], "lightly": []}
    completed = False
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # `finally` below then ends both trees
    try:
        for turn in range(1, total // every + 1):
            artifacts = {"ours": ours_dir / "checkpoints" / f"step_{turn * every:08d}",
                         "lightly": work / "peer" / f"step_{turn * every:08d}.pt"}
            for impl in (ours, peer):
                wall = impl.turn(artifacts[impl.name])
                row = {"impl": impl.name, "step": turn * every, "epoch": round(turn * every / steps_per_epoch, 3),
                       "wall_s": round(wall, 2), "loadavg_1m": loadavg()}
                curves[impl.name].append(row)
            for name, path in artifacts.items():
                if name == "ours":
                    state = backbone_state(torch.load(path / "state.pt", map_location="cpu",
                                                      weights_only=True)["model"], str(path))
                else:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                row = curves[name][-1]
                row["knn_top1"] = round(scorer.knn(state), 4)
                row["cum_wall_s"] = round(sum(r["wall_s"] for r in curves[name]), 2)
                rows.append(row)
                print(f"step {row['step']} {name:8s} {row['wall_s']:8.1f} s  kNN {row['knn_top1']:.4f}", flush=True)
        completed = True
    finally:
        for impl in (ours, peer):
            impl.finish(completed)
        signal.signal(signal.SIGTERM, previous)
    return rows, time_to_accuracy_ratio(curves["ours"], curves["lightly"], len(scorer.test[1])), params


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "fashion_mnist_simclr.yaml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="the job's length in optimizer steps (0: the epochs')")
    p.add_argument("--turn-steps", type=int, default=0, help="optimizer steps per turn (0: one epoch)")
    p.add_argument("--peer-python", type=Path, default=REPO / ".venv-peer" / "bin" / "python",
                   help="the interpreter of the peer environment (make bench-env)")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/sslscale_time_to_accuracy"),
                   help="runs, the exported ImageFolder tree, the peer's weights and both logs")
    p.add_argument("--ranks", type=int, default=1,
                   help="ours as this many gloo processes (torchrun, DDP + SyncBN), --threads split between them")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile (goes in the JSON)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, applied to both")
    add_common_args(p)
    args = p.parse_args(argv)
    if not args.peer_python.is_file():
        raise SystemExit(f"--peer-python {args.peer_python}: not found; create it with `make bench-env`")
    device = setup(args)
    started = time.perf_counter()
    rows, summary, params = run(args, device)
    print_table(rows, ["impl", "step", "epoch", "wall_s", "cum_wall_s", "knn_top1", "loadavg_1m"])
    print(f"time_to_accuracy_ratio = {summary['time_to_accuracy_ratio']}  (target kNN {summary['target_knn_top1']}, "
          f"ours {summary['ours_time_to_target_s']} s, lightly {summary['lightly_wall_s']} s); "
          f"same steps: {summary['same_steps_wall_ratio']}x the wall; within one standard error "
          f"({summary['knn_standard_error']}): {summary['ratio_within_1se']}")
    meta = {"what": "same SimCLR job, ours vs lightly's parts, taking turns; kNN after each turn",
            "config": str(args.config), "overrides": args.overrides, "epochs": args.epochs,
            "max_steps": args.max_steps, "params": params, "ours_ranks": args.ranks,
            "machine": machine(), "threads": args.threads or torch.get_num_threads(),
            "other_load": args.note or "not noted; loadavg_1m per turn in the rows",
            "total_s_with_scoring": round(time.perf_counter() - started, 1)}
    write_results("time_to_accuracy", device, meta, rows, args.out_dir, **summary)


if __name__ == "__main__":
    main()
