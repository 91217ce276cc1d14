"""Method registry: name -> class. Methods compose shared pieces; shared pieces never import them."""

from __future__ import annotations

import dataclasses
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
    if name not in METHOD_MODULES:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)}")
    import importlib

    module_name, class_name = METHOD_MODULES[name]
    return getattr(importlib.import_module(module_name), class_name)


def method_options_class(name: str) -> type:
    return method_class(name).options_class


def build_method(config: Any, augment: AugmentConfig, num_samples: int = 0) -> Any:
    """Instantiate `config.method` with its checked options for a training set of `num_samples`."""
    from interlab.devices import resolve_auto_backbone

    resolve_auto_backbone(config)
    cls = method_class(config.method)
    options = cls.options_class(**config.method_options)
    return cls(config, options, augment, num_samples)


def method_defaults(name: str) -> dict[str, Any]:
    return dataclasses.asdict(method_options_class(name)())
