"""Run configuration: one flat namespace of typed keys, checked before anything runs.

A run is described by `TrainConfig` (trainer, data, network), the augmentation's fields
(prefixed `aug.`) and the chosen method's options (plain names). The same keys are used by
`--set key=value`, by named YAML configs in `interlab/configs/` and by notebook parameters, so a
typo or a wrong type is caught early with the list of valid keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from interlab.augment import AugmentConfig
from interlab.methods import method_options_class
from interlab.nets import BACKBONES

CONFIG_DIR = Path(__file__).parent / "configs"
AUG_PREFIX = "aug."


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the method's own options."""

    method: str = "moco"
    data: str = "cifar10-mini"
    data_root: str | None = None
    epochs: int = 200
    batch_size: int = 512
    optimizer: str = "sgd"  # sgd | lars
    lr: float = 0.06
    sgd_momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    backbone: str = "auto"  # auto: convnet on a CPU, the cifar-stem resnet18 on a GPU
    cifar_stem: bool = True
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast: None (auto) where the device runs bf16 natively (CUDA, CPUs with
    # AVX512-BF16/AMX), true on any device, false = fp32 (the exact path tests use)
    amp: bool | None = None
    channels_last: bool = True  # on every device (false = contiguous NCHW)
    compile: bool = False  # torch.compile every network a step calls (see Method)
    # CUDA: capture the whole training step once as a CUDA graph and replay it (methods
    # marked graph_safe, SGD, one process); the first steps run eagerly
    cuda_graph: bool = False
    # CUDA runs repeatable bit for bit: no cuDNN autotune, no TF32, deterministic kernels
    # (slower). CPU runs are repeatable anyway.
    deterministic: bool = False
    eval_every: int = 10  # kNN every N epochs (and always after the last one); 0 = last only
    knn_k: int = 200
    knn_temperature: float = 0.1
    # Extra (k, temperature) kNN protocols on the backbone, each recorded as
    # knn_top1_k{k}_t{t}: a published figure's own protocol (DINO and SCFS: [[20, 0.07]]).
    knn_protocols: tuple[tuple[int, float], ...] = ()
    max_steps_per_epoch: int | None = None  # cut every epoch short (smoke runs); None = all
    checkpoint_every: int = 10
    snapshot_every: int = 10  # epochs between memory-bank snapshots (bank methods); 0 = none
    log_every: int = 50  # steps between loss checks and progress-bar updates
    # Warm start: a trained run's checkpoint (or its run folder) whose query encoder a fresh
    # run starts from (key encoder too); ignored when the run resumes its own checkpoint
    init_from: str | None = None
    out: str = "runs/default"
    augment: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)

    def augment_config(self, image_size: int) -> AugmentConfig:
        """The training augmentation: the recipe's defaults at the data's size, then overrides."""
        base = {"size": image_size}
        base.update(self.augment)
        return AugmentConfig(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def coerce_value(key: str, value: Any, annotation: Any) -> Any:
    """Convert `value` (often parsed from YAML text) to `annotation`, or raise naming `key`."""
    inner, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{key}: None is not allowed (expected {_type_name(inner)})")
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list like [a, b]; got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values; got {value!r}")
        return tuple(coerce_value(key, v, a) for v, a in zip(value, args, strict=True))
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping; got {value!r}")
        return dict(value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false; got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key}: expected an integer; got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number; got {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string; got {value!r}")
    return value


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (so 0.1, true, [0.08, 1.0] get their types)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value; got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_named_config(name: str) -> dict[str, Any]:
    """A YAML file path, or the name of one shipped in `interlab/configs/`."""
    path = Path(name)
    if not path.suffix:
        path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(
            f"unknown config {name!r}; shipped configs: {shipped}, or give a YAML path"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping of key: value")
    return _flatten(data)


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Accept nested `aug:` / `method_options:` sections as well as flat keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("aug", "augment") and isinstance(value, dict):
            flat.update({AUG_PREFIX + k: v for k, v in value.items()})
        elif key == "method_options" and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def valid_keys(method_options_cls: type | None) -> list[str]:
    keys = [k for k in field_types(TrainConfig) if k not in ("augment", "method_options")]
    keys += [AUG_PREFIX + k for k in field_types(AugmentConfig)]
    if method_options_cls is not None:
        keys += list(field_types(method_options_cls))
    return keys


def build_config(overrides: dict[str, Any]) -> TrainConfig:
    """A checked TrainConfig from flat overrides (named config, CLI flags and --set merged).

    Unknown keys, wrong types and unknown methods raise ValueError naming the key and listing
    the valid choices; method options are validated by the method's own dataclass.
    """
    overrides = dict(overrides)
    method = overrides.get("method", TrainConfig.method)
    options_cls = method_options_class(method)
    train_types = field_types(TrainConfig)
    aug_types = field_types(AugmentConfig)
    option_types = field_types(options_cls)
    config = TrainConfig()
    for key, value in overrides.items():
        if key in train_types and key not in ("augment", "method_options"):
            setattr(config, key, coerce_value(key, value, train_types[key]))
        elif key.startswith(AUG_PREFIX) and key[len(AUG_PREFIX) :] in aug_types:
            name = key[len(AUG_PREFIX) :]
            config.augment[name] = coerce_value(key, value, aug_types[name])
        elif key in option_types:
            config.method_options[key] = coerce_value(key, value, option_types[key])
        else:
            raise ValueError(
                f"unknown key {key!r} for method {method!r}; valid keys: "
                + ", ".join(valid_keys(options_cls))
            )
    _check_ranges(config)
    options_cls(**config.method_options)  # the method's own range checks
    return config


def _check_ranges(config: TrainConfig) -> None:
    positive = ("epochs", "batch_size", "knn_k", "checkpoint_every", "log_every")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be > 0; got {getattr(config, name)}")
    if config.lr <= 0:
        raise ValueError(f"lr must be > 0; got {config.lr}")
    if config.backbone not in (*BACKBONES, "auto"):
        raise ValueError(
            f"unknown backbone {config.backbone!r}; valid: auto, {', '.join(BACKBONES)}"
        )
    if config.optimizer not in ("sgd", "lars"):
        raise ValueError(f"optimizer must be 'sgd' or 'lars'; got {config.optimizer!r}")
    if config.snapshot_every < 0:
        raise ValueError(f"snapshot_every must be >= 0; got {config.snapshot_every}")
    if config.eval_every < 0:
        raise ValueError(f"eval_every must be >= 0; got {config.eval_every}")
    if config.max_steps_per_epoch is not None and config.max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1; got {config.max_steps_per_epoch}")
    for k, temperature in config.knn_protocols:
        if k < 1 or temperature <= 0:
            raise ValueError(
                f"knn_protocols: each entry is [k >= 1, temperature > 0]; got {[k, temperature]}"
            )
    if not 0 <= config.warmup_epochs <= config.epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs]; got {config.warmup_epochs}")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig saved with `to_dict` (a checkpoint's or a run's config.yaml)."""
    flat = {k: v for k, v in data.items() if k not in ("augment", "method_options")}
    flat.update({AUG_PREFIX + k: v for k, v in (data.get("augment") or {}).items()})
    flat.update(data.get("method_options") or {})
    return build_config(flat)
