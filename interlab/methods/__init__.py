"""Method registry: name -> class.

Methods compose the core's shared pieces and never import `interlab.config`: a method gets its
options, a `MethodSetup` (batch size, epochs, seed, data size, backbone builder) and the
augmentation. `config` imports this registry to check each method's options.
"""

from __future__ import annotations

import importlib
from typing import Any

from interlab.augment import AugmentConfig

METHOD_MODULES = {
    "moco": ("interlab.methods.moco", "MoCo"),
    "simclr": ("interlab.methods.simclr", "SimCLR"),
    "interclr": ("interlab.methods.interclr", "InterCLR"),
    "cyclecontrast": ("interlab.methods.cyclecontrast", "CycleContrast"),
    "dino": ("interlab.methods.dino", "DINO"),
    "scfs": ("interlab.methods.scfs", "SCFS"),
}
METHOD_NAMES = tuple(METHOD_MODULES)


def method_class(name: str) -> type:
    """The class of method `name`; imported on first use so the registry stays light."""
    if name not in METHOD_MODULES:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)}")
    module_name, class_name = METHOD_MODULES[name]
    return getattr(importlib.import_module(module_name), class_name)


def method_options_class(name: str) -> type:
    return method_class(name).options_class


def build_method(
    config: Any, augment: AugmentConfig, num_samples: int = 0, num_classes: int = 0
) -> Any:
    """Instantiate `config.method` (a TrainConfig) for a training set of `num_samples` images
    in `num_classes` classes (0 = unknown).

    The method receives its checked options and a `MethodSetup` cut from the config, never the
    config itself; the sizes it fills from the data are in `method.resolved_options()`.
    """
    from interlab.devices import resolve_auto_backbone
    from interlab.methods.base import MethodSetup

    resolve_auto_backbone(config)
    cls = method_class(config.method)
    setup = MethodSetup(
        backbone=config.backbone,
        cifar_stem=config.cifar_stem,
        batch_size=config.batch_size,
        epochs=config.epochs,
        seed=config.seed,
        num_samples=num_samples,
        num_classes=num_classes,
        augment_keys_set=frozenset(config.augment),
    )
    return cls(setup, cls.options_class(**config.method_options), augment)
