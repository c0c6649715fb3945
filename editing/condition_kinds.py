"""Condition kinds, each bound in one registration to what it needs: its name, its extractor and its
default ControlNet for each backbone family.

Config validation, the CLI and the engine read only this registry, so a new kind is one
`register_condition_kind` call (or the `condition_kind` decorator on its extractor; see
tests/test_registries.py). This module imports nothing heavy: the built-in extractors are named as
`module:function` and imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# extractor(frames (N, H, W, 3) uint8 RGB, **options) -> condition images of the same shape and dtype
Extractor = Callable[..., Any]


@dataclass(frozen=True)
class ConditionKind:
    """One ControlNet condition: name, extractor (a callable or "module:function"), default ControlNets."""

    name: str
    extractor: Extractor | str
    controlnets: Mapping[str, str] = field(default_factory=dict)  # backbone family (e.g. "sd15") -> ControlNet spec
    help: str = field(default="", compare=False)

    def load_extractor(self) -> Extractor:
        if callable(self.extractor):
            return self.extractor
        module, _, name = self.extractor.partition(":")
        return getattr(importlib.import_module(module), name)

    def default_controlnet(self, family: str) -> str:
        if family not in self.controlnets:
            raise ConfigError(
                f"the {self.name} condition has no default ControlNet for {family} models; name one with --control-model {self.name}=SPEC"
            )
        return self.controlnets[family]


CONDITION_KINDS: dict[str, ConditionKind] = {}


def register_condition_kind(kind: ConditionKind) -> ConditionKind:
    """Add a kind to the registry; a name can be registered only once."""
    if not kind.name or kind.name != kind.name.strip() or any(c in kind.name for c in ":=,"):
        raise ValueError(f"a condition kind needs a plain name (no ':', '=' or ','), got {kind.name!r}")
    if kind.name in CONDITION_KINDS:
        raise ValueError(f"a condition kind named '{kind.name}' is already registered")
    CONDITION_KINDS[kind.name] = kind
    return kind


def condition_kind(name: str, controlnets: Mapping[str, str] | None = None, help: str = "") -> Callable[[Extractor], Extractor]:
    """Decorator form: register the decorated extractor as the condition kind `name`."""

    def register(function: Extractor) -> Extractor:
        register_condition_kind(ConditionKind(name, function, dict(controlnets or {}), help))
        return function

    return register


def unregister_condition_kind(name: str) -> None:
    CONDITION_KINDS.pop(name, None)


def condition_kind_names() -> tuple[str, ...]:
    return tuple(CONDITION_KINDS)


def get_condition_kind(name: str) -> ConditionKind:
    if name not in CONDITION_KINDS:
        raise ConfigError(f"control must be one of {', '.join(CONDITION_KINDS)}; got {name!r}")
    return CONDITION_KINDS[name]


# ---------------------------------------------------------------- the built-in kinds (SD-1.5 ControlNet 1.1)

_EXTRACTORS = "editing.control.extractors"
register_condition_kind(
    ConditionKind("canny", f"{_EXTRACTORS}:canny", {"sd15": "lllyasviel/control_v11p_sd15_canny"}, "OpenCV Canny edges")
)
register_condition_kind(
    ConditionKind(
        "pose", f"{_EXTRACTORS}:pose", {"sd15": "lllyasviel/control_v11p_sd15_openpose"}, "mediapipe BlazePose skeleton"
    )
)
register_condition_kind(
    ConditionKind("depth", f"{_EXTRACTORS}:depth", {"sd15": "lllyasviel/control_v11f1p_sd15_depth"}, "MiDaS depth")
)
register_condition_kind(
    ConditionKind("softedge", f"{_EXTRACTORS}:softedge", {"sd15": "lllyasviel/control_v11p_sd15_softedge"}, "HED soft edges")
)
