"""Checkpoints for exact resume, written atomically; auto-resume; preemption signals.

Layout: runs/<name>/checkpoints/step_00000120/
    state.pt     rank 0: the method's full state_dict (EMA targets included), engine state (optimizer,
                 scaler), online-probe state, step / epoch / samples_in_epoch (the data position as a
                 global sample index, so it means the same on any world size), the RNG states of every
                 rank (gathered), the resolved config and the dataset's identity (`data`: manifest name,
                 sample count, view sizes; compared on resume with the MEANING settings). Only tensors,
                 numbers, strings, lists and dicts, so it loads with `weights_only=True`.
    deepspeed/   DeepSpeed runs: its collective checkpoint (every rank's ZeRO partition; same W only).
    fsdp2/       FSDP2 runs: torch.distributed.checkpoint shards of weights and optimizer, resharded on
                 load. DDP and FSDP2 runs resume on another world size with the same global batch.
A checkpoint is built in `.tmp-step_...`, fsynced, then renamed: a crash mid-write leaves the
previous one intact, and temporary names never match `step_*`.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import shutil
import signal
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from trainer.config import Config, TrainConfig
from trainer.dist import DistContext
from trainer.registry import load_config

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "preempted, checkpoint saved, requeue me"
STATE = "state.pt"


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch / CUDA / numpy / python RNG states, as tensors (weights_only-loadable)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_extra": torch.tensor([version, float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, py_gauss = state["python_extra"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), None if math.isnan(py_gauss) else py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")) + [root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Position:
    """Where training stands after `step` optimizer steps: `step_in_epoch` steps of `epoch` are done."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, newest first."""
    return sorted((run_dir / "checkpoints").glob("step_*"), reverse=True)


class ResumeError(ValueError):
    """A run folder that cannot be resumed as asked; the message names the files, keys and values."""


# what fixes the meaning of saved state: parameter shapes (method, model), what a step and the data
# position mean (global batch), the optimizer state's layout (optim.name), what the weights were fit to
MEANING = ("method", "model", "train.global_batch_size", "optim.name", "data.split", "data.image_size")
FRESH = "start fresh with another train.name (or delete the run folder {run_dir})"


def _setting(config: dict, key: str):
    """config["a"]["b"] for key "a.b" ({} or None where a part is missing)."""
    for part in key.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else None
    return config


def _differences(state: dict, now: dict, data: dict | None) -> list[str]:
    """'key: checkpoint value -> value now' for every MEANING setting of the resolved config `now` (and the
    data's identity) that differs."""
    pairs = []
    for key in MEANING:
        then, current = _setting(state["config"], key), _setting(now, key)
        if isinstance(then, dict):  # a whole section: name each key in it
            pairs += [(f"{key}.{k}", then.get(k), current.get(k)) for k in sorted(then.keys() | current.keys())]
        else:
            pairs.append((key, then, current))
    # checkpoints written before the data's identity was recorded carry no "data": config alone is compared
    saved_data = state.get("data", data) or {}
    pairs += [(f"data ({k})", saved_data.get(k), v) for k, v in (data or {}).items()]
    return [f"{key}: {then!r} -> {current!r}" for key, then, current in pairs if then != current]


def _scan(run_dir: Path, config: dict | None, data: dict | None) -> tuple[tuple[Path, dict] | None, list[tuple[Path, str]]]:
    """(newest readable checkpoint and its state, or None; the unreadable ones newer than it, with why)."""
    unreadable = []
    for directory in checkpoints(run_dir):
        file = directory / STATE
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:  # truncated / missing / not torch
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"skipping unreadable checkpoint {file}: {reason}", stacklevel=3)
            unreadable.append((directory, reason))
            continue
        if config is not None:
            differences = _differences(state, config, data)
            if differences:
                raise ResumeError(f"{file} was saved with other settings ({'; '.join(differences)}): resume with "
                                  f"the checkpoint's values, or {FRESH.format(run_dir=run_dir)}")
        return (directory, state), unreadable
    if unreadable:
        raise ResumeError(f"{run_dir / 'checkpoints'}: no checkpoint is readable: "
                          + "; ".join(f"{d / STATE} ({why})" for d, why in unreadable)
                          + f". Nothing was deleted; {FRESH.format(run_dir=run_dir)}")
    return None, []


def read_latest(run_dir: Path, config: dict | None = None, data: dict | None = None) -> tuple[Path, dict] | None:
    """(directory, state) of the newest checkpoint whose state.pt loads; unreadable ones are skipped
    with a warning naming the file, and a run with checkpoints none of which loads is a ResumeError
    naming each. With `config` (the resolved config now, `to_dict(cfg)`) and `data` (the dataset's
    identity: Checkpointer's), a checkpoint whose MEANING settings differ is refused (ResumeError naming
    the file, the keys and both values)."""
    return _scan(run_dir, config, data)[0]


def load_model_weights(run_dir: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """The run's config and the method's state_dict from its latest valid checkpoint (any engine)."""
    run_dir = Path(run_dir)
    found = read_latest(run_dir)
    if found is None:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'}: no checkpoint")
    return load_config(run_dir / "config.yaml"), found[1]["model"]


def load_probe_head(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The online linear probe's head (`weight` [C, D], `bias` [C]) of the latest valid checkpoint; {} when
    the run trained none (train.online_probe off, or unlabelled data)."""
    found = read_latest(Path(run_dir))
    if found is None:
        raise FileNotFoundError(f"{Path(run_dir) / 'checkpoints'}: no checkpoint")
    return found[1]["probe"].get("head", {})


def _intact(file: Path) -> bool:
    """Whether `file` is a whole torch.save archive: a zip whose central directory (written last) reads.
    Cheap (the end of the file), so rotation can check every checkpoint it keeps."""
    try:
        with zipfile.ZipFile(file) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def rotate(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` intact checkpoints, delete older intact ones; a damaged one is never
    kept in a readable one's place nor deleted: it is moved aside to `unreadable-step_*`."""
    kept = 0
    for directory in checkpoints(run_dir):
        if not _intact(directory / STATE):
            aside = _free_name(directory.with_name(f"unreadable-{directory.name}"))
            os.replace(directory, aside)
            warnings.warn(f"{directory / STATE} is damaged: moved to {aside}, kept for inspection", stacklevel=2)
        elif kept < keep_last:
            kept += 1
        else:
            shutil.rmtree(directory)


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ...: the first that does not exist (a step broken a second time)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


class Checkpointer:
    """Saves every train.ckpt_every steps (and on demand), keeps the last train.keep_last, resumes the latest."""

    def __init__(self, run_dir: Path, train: TrainConfig, ctx: DistContext, *, config: dict, data: dict,
                 engine: str):
        """`config`: the run's resolved config (`to_dict(cfg)`), saved and its MEANING settings compared on
        resume, as is `data`, the dataset's identity (name, sample count, view sizes); `engine`: engine.name."""
        self.dir, self.ctx, self.config, self.data, self.engine = run_dir / "checkpoints", ctx, config, data, engine
        self.every, self.keep_last, self.global_batch = train.ckpt_every, train.keep_last, train.global_batch_size
        if ctx.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-*"):  # a save killed midway
                shutil.rmtree(stale)
        _barrier()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, position: Position, engine, probe=None) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory."""
        final = self.dir / f"step_{position.step:08d}"
        tmp = self.dir / f".tmp-{final.name}"
        if self.ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier()
        engine.save_shards(tmp)
        model = engine.model_state_dict()  # collective under FSDP2 (gathers the full weights to rank 0)
        rngs = [None] * self.ctx.world_size if self.ctx.is_main else None
        if dist.is_initialized():
            dist.gather_object(rng_state(), rngs, dst=0)
        else:
            rngs = [rng_state()]
        if self.ctx.is_main:
            state = {
                "model": model,
                "engine": engine.state_dict(),
                "probe": probe.state_dict() if probe is not None else {},
                "step": position.step, "epoch": position.epoch,
                # the data position by global sample index: the epoch's permutation up to here is consumed
                # (trainer/data/sampling.py), whatever the world size that consumed it
                "samples_in_epoch": position.step_in_epoch * self.global_batch,
                "rng": rngs,
                "config": self.config,
                "data": self.data,
            }
            self._write(state, tmp, final)
        _barrier()
        if self.ctx.is_main:
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (a preemption right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_tree(self.dir)
            rotate(self.dir.parent, self.keep_last)
        _barrier()
        return final

    @staticmethod
    def _write(state: dict, tmp: Path, final: Path) -> None:
        """torch.save through a Python file, so a failed write keeps its OSError (ENOSPC, EFBIG):
        torch's own writer reports only "basic_ios::clear: iostream error"."""
        try:
            with open(tmp / STATE, "wb") as f:
                torch.save(state, f)
        except (OSError, RuntimeError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            cause = next((e for e in (err, err.__cause__, err.__context__) if isinstance(e, OSError) and e.errno), None)
            reason = os.strerror(cause.errno) if cause is not None else f"{type(err).__name__}: {err}"
            message = f"{final}: saving the checkpoint failed ({reason}); the previous checkpoint is kept"
            raise (OSError(cause.errno, message) if cause is not None else OSError(message)) from err

    def resume(self, engine, probe=None) -> Position:
        """Load the latest valid checkpoint into engine / probe / RNG; Position() when there is none.

        Rank 0 chooses the checkpoint and every rank loads that one, or raises rank 0's ResumeError.
        Unreadable checkpoints newer than the one chosen are moved aside to `unreadable-step_*`: left
        in place they would sort newest, and `keep_last` rotation would delete the readable ones."""
        found, error = None, None
        if self.ctx.is_main:
            try:
                found, unreadable = _scan(self.dir.parent, self.config, self.data)
            except ResumeError as err:
                error = str(err)
            else:
                for directory, why in unreadable:
                    aside = _free_name(directory.with_name(f"unreadable-{directory.name}"))
                    os.replace(directory, aside)
                    warnings.warn(f"{directory / STATE} ({why}) moved to {aside}: kept, never resumed from or "
                                  "rotated; delete it once inspected", stacklevel=2)
        choice = [str(found[0]) if found else None, error]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        if choice[1] is not None:
            raise ResumeError(choice[1])
        if choice[0] is None:
            return Position()
        directory = Path(choice[0])
        state = found[1] if found else torch.load(directory / STATE, map_location="cpu", weights_only=True)
        if len(state["rng"]) != self.ctx.world_size and self.engine == "deepspeed":
            raise ResumeError(f"{directory}: saved by {len(state['rng'])} ranks, now {self.ctx.world_size}: DeepSpeed's "
                              "ZeRO partitions load only on the world size that wrote them; relaunch with "
                              f"{len(state['rng'])} processes, or train with engine.name = ddp or fsdp2, which reshard")
        engine.load_model_state_dict(state["model"])
        engine.load_state_dict(state["engine"])
        engine.load_shards(directory)
        if probe is not None and state["probe"]:
            probe.load_state_dict(state["probe"])
        saved_world = len(state["rng"])
        if saved_world == self.ctx.world_size:
            set_rng_state(state["rng"][self.ctx.global_rank])
        else:
            warnings.warn(f"{directory}: saved by {saved_world} ranks, resumed on {self.ctx.world_size}, global "
                          f"batch {self.global_batch} on both; the rest of the epoch's samples follow "
                          "as they would have. Per-rank RNG states not restored: not bit-exact", stacklevel=2)
        return Position(state["step"], state["epoch"], self._step_in_epoch(state, directory))

    def _step_in_epoch(self, state: dict, directory: Path) -> int:
        """Optimizer steps of the epoch already done, from the global sample index (older checkpoints: the step)."""
        if "samples_in_epoch" not in state:
            return state["step_in_epoch"]
        steps, rest = divmod(state["samples_in_epoch"], self.global_batch)
        assert rest == 0, f"{directory}: samples_in_epoch is not a whole number of global batches"
        return steps


class Preemption:
    """SIGUSR1 / SIGTERM / SIGINT (Ctrl-C) set a flag; `agreed()` is True on every rank once any rank got one.

    The flag is all-reduced every step over a CPU (gloo) group: a few microseconds on one node, and
    no GPU sync, so a rank learns of the signal within one step of the grace period.
    """

    def __init__(self, ctx: DistContext):
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.group = None
        if dist.is_initialized() and dist.get_backend() != "gloo":
            self.group = dist.new_group(backend="gloo")
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.flag.fill_(1)

    def agreed(self) -> bool:
        flag = self.flag.clone()
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())  # a CPU tensor: no device sync
