"""The registries a user picks from by name, listed in one place with how each is extended.

`--help` shows each registered choice with its `help` (editing.requests.add_arguments reads
`choice_help`), and the docs site's registry page is generated from `REGISTRIES` (docs/hooks.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _resolve(path: str) -> Any:
    """The object a "module:attribute" path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Registry:
    """One registry: its title, the function listing its names, its entries and how to add one."""

    title: str
    names: str  # "module:function" returning the registered names (loading built-in entries), or "module:dict"
    entries: str  # "module:attribute": name -> entry with a `help` field, or name -> text
    register: str  # the call that adds an entry
    option: str  # the option (or app control) that picks an entry

    def described(self) -> dict[str, str]:
        """Every registered name with its help, in registration order."""
        names = _resolve(self.names)
        names = names() if callable(names) else tuple(names)
        entries = _resolve(self.entries)
        return {name: _help_of(entries[name]) for name in names}


def _help_of(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(getattr(entry, "help", "") or "")


_MODES, _KINDS = "editing.attention.modes", "editing.control"
REGISTRIES: tuple[Registry, ...] = (
    Registry(
        "attention modes",
        f"{_MODES}:attention_mode_names",
        f"{_MODES}:ATTENTION_MODES",
        f"{_MODES}.register_attention_mode(AttentionMode(...))",
        "--attention",
    ),
    Registry(
        "samplers",
        "editing.samplers:sampler_names",
        "editing.samplers:SAMPLERS",
        "editing.samplers.register_sampler(Sampler(...))",
        "--sampler",
    ),
    Registry(
        "speed presets",
        "editing.presets:preset_names",
        "editing.presets:PRESETS",
        "editing.presets.register_preset(Preset(...))",
        "--preset",
    ),
    Registry(
        "condition kinds",
        f"{_KINDS}:condition_kind_names",
        f"{_KINDS}:CONDITION_KINDS",
        f"{_KINDS}.register_condition_kind(ConditionKind(...)) or @condition_kind(name, controlnets=...)",
        "--control KIND",
    ),
    Registry(
        "mask sources",
        "editing.masks:mask_source_names",
        "editing.masks:MASK_SOURCES",
        "editing.masks.register_mask_source(MaskSource(...))",
        "--mask FILE (video), --mask IMAGE@FRAME with --mask-track flow|sam2, --mask-words",
    ),
    Registry(
        "step caches",
        "editing.stepcache:step_cache_names",
        "editing.stepcache:STEP_CACHES",
        "editing.stepcache.register_step_cache(StepCacheKind(...))",
        "--step-cache KIND[:VALUE],...",
    ),
    Registry(
        "styles",
        "editing.sessions:PRESETS",
        "editing.sessions:PRESETS",
        "an entry of editing.sessions.PRESETS (name -> prompt)",
        "the Style sessions tab",
    ),
)


def choice_help(choices: Callable | Any) -> dict[str, str]:
    """The help of each choice when `choices` is a registry's names function, else {}."""
    if not callable(choices):
        return {}
    for registry in REGISTRIES:
        if _resolve(registry.names) is choices:
            return registry.described()
    return {}
