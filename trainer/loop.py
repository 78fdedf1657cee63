"""The training loop, top to bottom. It never names a method: it asks the components.

    config -> process group -> plan (derived sizes from the manifest, logged) -> loader -> method -> engine
    -> resume the latest valid checkpoint -> for each optimizer step:
         fetch accumulation_steps micro-batches, method.before_step (schedules), engine.step
         (forward/backward/step), method.after_step (EMA), online probe, window metrics;
         at log cadence: one host sync, non-finite check, logs;
         checkpoint when due; on SIGUSR1/SIGTERM/SIGINT every rank saves together and exits 75.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from trainer.checkpoint import EXIT_PREEMPTED, Checkpointer, Position, Preemption
from trainer.config import Config, to_dict, to_yaml
from trainer.dist import DistContext, init_distributed, shutdown
from trainer.engine import build_engine, make_plan, train_step
from trainer.logger import Meter, make_logger
from trainer.optim import lr_at
from trainer.probe import OnlineProbe, knn_accuracy
from trainer.run_lock import run_lock


class NonFiniteLoss(RuntimeError):
    """train.nonfinite = stop and a loss was NaN or infinite."""


def seed_everything(seed: int) -> None:
    """The same seed on every rank: identical initial weights (DDP and DeepSpeed also broadcast
    rank 0's). Data randomness is seeded per rank by the loader."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# gloo and NCCL raise a plain RuntimeError naming neither rank nor setting; these say where it came from
COLLECTIVE_CODE = tuple(os.path.join("torch", *parts, "") for parts in (("distributed",), ("nn", "parallel"),
                                                                          ("autograd",)))


def from_collective(err: RuntimeError) -> bool:
    """Whether `err` came out of a collective: torch.distributed's own, DDP's buffer broadcast, or the
    gradient all-reduce that DDP and all_gather_with_grad run inside backward."""
    frames = traceback.extract_tb(err.__traceback__)
    return isinstance(err, dist.DistError) or any(code in f.filename for f in frames for code in COLLECTIVE_CODE)


def train(cfg: Config) -> int:
    """Run (or resume) `cfg`'s pretraining; returns the process exit code (0, 1, or EXIT_PREEMPTED).

    A collective that fails (a peer died) or times out (a peer hangs) ends this rank with one line
    naming it and engine.dist_timeout_s, instead of a traceback per rank that names neither."""
    ctx = init_distributed(cfg.engine.dist_timeout_s)
    try:
        with contextlib.ExitStack() as lock:  # released when the job ends, however it ends
            return run(cfg, ctx, lock)
    except RuntimeError as err:
        if not ctx.distributed or isinstance(err, NonFiniteLoss) or not from_collective(err):
            raise
        print(f"rank {ctx.global_rank} of {ctx.world_size}: a collective failed or timed out "
              f"(engine.dist_timeout_s={cfg.engine.dist_timeout_s}): {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        shutdown()


def run(cfg: Config, ctx: DistContext, lock: contextlib.ExitStack) -> int:
    from trainer.data import build_loader, split_size
    from trainer.methods import METHODS

    preemption = Preemption(ctx)  # first, so a signal during setup is not lost
    seed_everything(cfg.train.seed)
    method_cls = METHODS[cfg.method.name]
    plan = make_plan(cfg.train, cfg.optim, cfg.engine, ctx.world_size, ctx.device, split_size(cfg.data))
    accumulation, total = plan.accumulation_steps, plan.total_steps
    views = method_cls.views(cfg.method, cfg.data, cfg.aug)
    loader = build_loader(cfg.data, views, ctx, plan.per_device_batch_size, cfg.train.seed)
    run_dir = Path(cfg.train.run_root) / cfg.train.name
    # after every check of the data (a bad shard, index or label stops the run before its folder exists)
    lock.enter_context(run_lock(run_dir, ctx))

    method = method_cls(cfg.method, cfg.model, cfg.data.image_size)
    engine = build_engine(cfg.engine, cfg.optim, plan, method, ctx, nonfinite=cfg.train.nonfinite)
    probe = None
    if cfg.train.online_probe and loader.samples.labeled:
        probe = OnlineProbe(method.feature_dim, len(loader.class_names), ctx)
    data = {"dataset": loader.samples.manifest["dataset"], "num_samples": loader.num_samples,
            "view_sizes": [v.size for v in views]}
    checkpointer = Checkpointer(run_dir, cfg.train, ctx, config=to_dict(cfg), data=data, engine=cfg.engine.name)
    position = checkpointer.resume(engine, probe)  # Position() on a fresh run

    log = make_logger(ctx, run_dir, total, position.step, cfg.train.progress)
    log.write("config.yaml", to_yaml(cfg))
    log.info(f"plan: {json.dumps(plan.summary())}")
    log.info(f"{type(method).__name__}: {sum(p.numel() for p in method.parameters()) / 1e6:.2f}M parameters, "
             f"{loader.num_samples} images, {ctx.world_size} processes on {ctx.device.type}")
    if position.step:
        log.info(f"resumed at step {position.step} (epoch {position.epoch}, step {position.step_in_epoch} in it)")

    meter = Meter(ctx.device)
    step = position.step
    window_start = time.perf_counter()
    window_steps = 0
    collapse_warned = False
    for epoch in range(position.epoch, plan.epochs):
        first = position.step_in_epoch if epoch == position.epoch else 0
        # start_step counts micro-batches: the data position within the epoch, for exact resume
        with contextlib.closing(loader.epoch(epoch, start_step=first * accumulation)) as batches:
            for step_in_epoch in range(first, plan.steps_per_epoch):
                if step >= total:
                    break
                fetch_start = time.perf_counter()
                micro = [next(batches) for _ in range(accumulation)]
                meter.add_host({"time/data_wait": time.perf_counter() - fetch_start})
                if step == position.step:
                    log.images("views", step, micro[0].views, cfg.data.mean, cfg.data.std)

                lr = lr_at(step, peak_lr=plan.lr, warmup_steps=plan.warmup_steps, total_steps=total,
                           final_lr_ratio=cfg.optim.final_lr_ratio)
                outputs, hooks = train_step(engine, micro, lr, step, total)
                meter.add_host({"lr": lr, **hooks})
                step += 1
                window_steps += 1
                for out, batch in zip(outputs, micro):
                    meter.add_loss(out.loss, step)
                    meter.add({"loss": out.loss, **out.metrics})
                    if probe is not None:
                        meter.add(probe.step(out.features, batch.labels))

                done_in_epoch = step_in_epoch + 1
                position = (Position(step, epoch + 1, 0) if done_in_epoch == plan.steps_per_epoch
                            else Position(step, epoch, done_in_epoch))
                preempted = preemption.agreed()
                save = preempted or checkpointer.due(step) or step == total
                if step % cfg.train.log_every == 0 or save:
                    # the log cadence: the only host-device sync of the loop; also before every save,
                    # so a checkpoint never holds weights a non-finite step produced
                    elapsed = time.perf_counter() - window_start
                    meter.total("data/corrupt_skipped", loader.stats["corrupt_skipped"])
                    values, nonfinite, first_bad = meter.read()
                    if nonfinite and cfg.train.nonfinite == "stop":
                        raise NonFiniteLoss(f"non-finite loss at step {first_bad} (train.nonfinite = stop; "
                                            f"{nonfinite} non-finite micro-batches in the last window)")
                    values["time/data_wait_fraction"] = values.pop("time/data_wait") * window_steps / elapsed
                    values["time/step"] = elapsed / window_steps
                    values["images_per_s"] = plan.global_batch_size * window_steps / elapsed
                    values["nonfinite_skipped"] = float(nonfinite)
                    sign = engine.module.collapse_sign(values)
                    values["collapse"] = float(sign is not None)
                    if sign and not collapse_warned:
                        log.info(f"warning: step {step}: {sign}")
                        collapse_warned = True
                    if ctx.device.type == "cuda":
                        values["gpu/max_memory_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
                    log.scalars(step, epoch, values)
                    log.progress(step, epoch, values)
                    window_start, window_steps = time.perf_counter(), 0
                if save:
                    for tag, pictures in engine.images(micro[0]).items():  # collective under FSDP2
                        log.images(tag, step, pictures, cfg.data.mean, cfg.data.std)
                    path = checkpointer.save(position, engine, probe)
                    log.info(f"step {step}: saved {path}")
                if preempted:
                    log.info(f"preempted at step {step}: exiting {EXIT_PREEMPTED} for requeue")
                    log.close()
                    return EXIT_PREEMPTED
        knn_due = cfg.train.knn_every and (epoch + 1) % cfg.train.knn_every == 0
        if knn_due and loader.samples.labeled and step > 0:
            accuracy = knn_accuracy(engine.module.backbone, len(loader.class_names), cfg.data, cfg.eval, ctx)
            log.scalars(step, epoch, {"knn/acc": accuracy})
            log.info(f"epoch {epoch + 1}: kNN accuracy {accuracy:.4f}")
    log.close()
    return 0
