"""Typed configuration: dataclass defaults, YAML layers that override them, dotted CLI overrides.

Every default lives in a dataclass below (paper values, see DESIGN.md); YAML files only override.
A YAML file may list `_base_: [other.yaml, ...]` (paths relative to it) to compose small layers.
The `method` section is typed by the chosen method's own `Config` dataclass. The registries (method name ->
Config dataclass, the backbone check) are handed in by the caller (trainer/registry.py): this module
imports nothing of the rest of the trainer.
Unknown keys, wrong types and invalid choices raise `ConfigError` naming the key and what is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message names the key."""


@dataclass
class DataConfig:
    shards: str = "shards/digits"  # dataset folder holding manifest.json and <split>-NNNNNN.tar
    split: str = "train"  # split pretrained on
    backend: str = "torch"  # torch | dali
    image_size: int = 32  # global view size in px
    workers: int = 2  # DataLoader workers (torch) / DALI CPU threads
    on_corrupt: str = "skip"  # skip | fail: what the torch backend does with an undecodable sample
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class AugConfig:
    """Knobs of the augmentation recipes; each method turns them into its ViewSpecs."""

    min_scale: float = 0.08  # random-resized-crop lower area bound for global views
    flip_prob: float = 0.5  # horizontal flip; 0 for data that is not mirror-symmetric (digits, text)
    jitter_strength: float = 1.0  # multiplies colour jitter (0.4, 0.4, 0.4, 0.1)
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur: str = "auto"  # auto | always | never; auto turns blur off for images of 32 px or less (SimCLR)
    local_crops: int = 0  # multi-crop: extra small views
    local_size: int = 0  # px; 0 means image_size * 96 / 224, rounded
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # resnet18 | resnet50 | mobilenet_v2 | timm:<name>, e.g. timm:vit_tiny_patch16_224
    small_stem: bool = False  # 3x3 conv stem, no max-pool: for 32-96 px inputs (torchvision networks)
    width: int = 64  # ResNet first-stage channels (64 = torchvision); smaller for tiny demo runs
    patch_size: int = 0  # timm patch models (ViT): patch px, e.g. 4 at 32 px; 0 for convolutional networks


@dataclass
class OptimConfig:
    name: str = "lars"  # lars | sgd | adamw
    base_lr: float = 0.3  # effective lr = base_lr x global_batch_size / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # LARS
    trust_clip: bool = False  # LARS: a layer's step at most lr x |d| (apex LARC's clip; solo-learn's clip_lr)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW
    warmup_epochs: float = 10.0  # linear warmup, then cosine to final_lr_ratio x lr
    final_lr_ratio: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 disables


@dataclass
class EngineConfig:
    name: str = "ddp"  # ddp | deepspeed | fsdp2 (sharded, for ViTs; see launch/README)
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-2
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; auto = bf16 on CUDA, fp32 on CPU
    sync_bn: bool = False
    compile: bool = False
    channels_last: bool = True  # the weights' layout on CUDA under DDP (DeepSpeed keeps its weights' layout)
    dist_timeout_s: int = 600  # a rank that stops answering fails the job after this


@dataclass
class TrainConfig:
    name: str = "demo"  # run directory is <run_root>/<name>
    run_root: str = "runs"
    seed: int = 0
    epochs: int = 100
    max_steps: int = 0  # stop after this many optimizer steps; 0 = epochs x steps per epoch
    global_batch_size: int = 256
    per_device_batch_size: int = 0  # 0 = global / world size; smaller means gradient accumulation
    nonfinite: str = "stop"  # stop | skip: policy for a non-finite loss
    log_every: int = 10  # steps; also the cadence of host-device syncs
    ckpt_every: int = 500  # steps
    keep_last: int = 3  # checkpoints kept
    knn_every: int = 0  # epochs between kNN evaluations during training; 0 disables
    online_probe: bool = True  # linear probe on detached features when labels exist
    progress: bool = True  # tqdm bar on a terminal; off one, or false: one plain line per log window


@dataclass
class EvalConfig:
    train_split: str = "train"  # labeled split the kNN bank / probes are fit on
    test_split: str = "test"
    knn_k: int = 200
    knn_temperature: float = 0.07
    batch_size: int = 256


@dataclass
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # the chosen method's Config dataclass instance
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.backend": ("torch", "dali"),
    "data.on_corrupt": ("skip", "fail"),
    "aug.blur": ("auto", "always", "never"),
    "optim.name": ("lars", "sgd", "adamw"),
    "engine.name": ("ddp", "deepspeed", "fsdp2"),
    "engine.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.nonfinite": ("stop", "skip"),
}


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML file and the `_base_` files it lists (earlier bases are overridden by later)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    bases = node.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _read_yaml(path.parent / base, seen + (path,)))
    return OmegaConf.merge(merged, node)


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(schema, parent) if parent else schema
    valid = ", ".join(node.keys()) if isinstance(node, DictConfig) else ""
    if "not in" in str(err) or "Key" in type(err).__name__:
        msg = f"{source}: unknown key '{key}'" + (f"; valid keys{' in ' + repr(parent) if parent else ''}: {valid}" if valid else "")
    else:
        msg = f"{source}: bad value for '{key}': {getattr(err, 'msg', str(err)).splitlines()[0]}"
    return ConfigError(msg)


def _merge(schema: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, layer)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, source) from None


def _check_choices(cfg: DictConfig, check_backbone: Callable[[str], None]) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}' = {value!r}: choose one of {', '.join(allowed)}")
    try:
        check_backbone(cfg.model.backbone)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for key in ("global_batch_size", "epochs", "log_every", "ckpt_every", "keep_last"):
        if OmegaConf.select(cfg, f"train.{key}") < 1:
            raise ConfigError(f"'train.{key}' must be >= 1")


# (key, lowest valid value, what the key means): each a user mistake that would otherwise train nothing,
# hang, or fail deep inside torch / the loader with a message naming neither
MINIMUMS = (
    ("data.image_size", 1, "the view size in px"),
    ("data.workers", 0, "DataLoader workers; 0 loads in the main process"),
    ("engine.dist_timeout_s", 1, "seconds a collective may wait"),
    ("optim.base_lr", 0, "the learning rate before batch scaling"),
    ("train.max_steps", 0, "0 means epochs x steps per epoch"),
)


def _check_values(cfg: DictConfig) -> None:
    for key, lowest, meaning in MINIMUMS:
        value = OmegaConf.select(cfg, key)
        if value < lowest:
            raise ConfigError(f"'{key}' = {value}: must be >= {lowest} ({meaning})")
    name = cfg.train.name
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"'train.name' = {name!r}: must be a plain folder name (no '/', not '.' or '..'); "
                          "the run folder is <train.run_root>/<train.name>")


def _refuse_env_interpolation(layer: DictConfig, source: str) -> None:
    """`${oc.env:VAR}` would copy the environment (a token, a password) into config.yaml, every checkpoint
    and the run folder's name: refused, naming the key. The raw (unresolved) values are scanned."""
    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            where = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, where + ".")
            elif isinstance(value, list):
                walk(dict(enumerate(value)), where + ".")
            elif isinstance(value, str) and "oc.env" in value:
                raise ConfigError(f"{source}: '{where}' = {value!r}: environment interpolation is not allowed "
                                  "(it would be saved with the run); write the value itself")

    walk(OmegaConf.to_container(layer, resolve=False), "")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...], *, methods: Mapping[str, type],
                check_backbone: Callable[[str], None]) -> Config:
    """Defaults <- YAML file (with its `_base_` layers) <- `key=value` overrides, checked.

    `methods`: method name -> its Config dataclass; `check_backbone(name)` raises ValueError for a
    backbone the registry cannot build. Returns plain dataclass instances (`cfg.method` is the chosen
    method's Config). Callers use trainer.registry.load_config, which hands in the trainer's registries.
    """
    file_layer = _read_yaml(Path(path)) if path else OmegaConf.create()
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    try:
        cli_layer = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"command line: cannot parse overrides: {e}") from None

    name = OmegaConf.select(cli_layer, "method.name") or OmegaConf.select(file_layer, "method.name") or "simclr"
    if name not in methods:
        raise ConfigError(f"'method.name' = {name!r}: choose one of {', '.join(methods)}")
    schema = OmegaConf.structured(Config(method=methods[name]()))
    _refuse_env_interpolation(file_layer, str(path) if path else "defaults")
    _refuse_env_interpolation(cli_layer, "command line")
    cfg = _merge(schema, file_layer, str(path) if path else "defaults")
    cfg = _merge(cfg, cli_layer, "command line")
    _check_choices(cfg, check_backbone)
    _check_values(cfg)
    return OmegaConf.to_object(cfg)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved in the run directory; loadable by `load_config`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))

