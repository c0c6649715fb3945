"""Step caches: cheaper UNet evaluations, `--step-cache KIND[:VALUE][,KIND[:VALUE]...]`.

A step cache is one file here plus a `register_step_cache` call. Each kind names its one number (an
interval, a ratio), checks it, and builds a `StepCache`: an object the denoising loop installs on the UNet
for the loop (a context manager that restores the UNet in `finally`) and tells, before each UNet call of
a planned batch, the step index and which frames the call holds (`begin_call`). Calls the loop does not
announce (a control's own pass, null-text fitting) run the UNet as it is. Kinds compose: each one's
`installed` nests inside the previous one's. Inversion runs without them (its result is cached and shared
by edits with and without a step cache).

Built in: `deepcache` (editing.stepcache.deepcache) and `tome` (editing.stepcache.tome).
This module imports nothing heavy (no torch), so config validation and the CLI can read kind names.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

STEP_CACHE_HELP = "cheaper UNet evaluations, comma-separated KIND[:VALUE]: {kinds}; none = off"


class StepCache:
    """What the loop calls on a step cache; every hook is a no-op by default."""

    @contextlib.contextmanager
    def installed(self, unet: torch.nn.Module) -> Iterator[None]:
        """Change the UNet for the duration of one denoising loop; restore it in `finally`."""
        yield

    def begin_call(self, index: int, key: tuple) -> None:
        """The next UNet call is step `index`'s call for the frames `key` (the same key every step)."""


@dataclass(frozen=True)
class StepCacheKind:
    """One kind: its name, its number's default and check, and how to build it (a callable or "module:function")."""

    name: str
    build: Callable[[float], StepCache] | str
    default: float
    check: Callable[[float], str | None]  # a sentence saying what is wrong with a value, or None
    value: str = field(default="VALUE", compare=False)  # what the number is, for help texts
    excludes: tuple[tuple[str, str], ...] = ()  # (feature, why) it cannot be combined with (editing.compat)
    help: str = field(default="", compare=False)

    def make(self, value: float) -> StepCache:
        build = self.build
        if isinstance(build, str):
            module, _, function = build.partition(":")
            build = getattr(importlib.import_module(module), function)
        return build(value)


STEP_CACHES: dict[str, StepCacheKind] = {}


def register_step_cache(kind: StepCacheKind) -> StepCacheKind:
    """Add a kind to the registry; a name can be registered only once."""
    if not kind.name or kind.name != kind.name.strip() or any(c in kind.name for c in ",:") or kind.name == "none":
        raise ValueError(f"a step cache needs a plain name (no ',' or ':', not 'none'), got {kind.name!r}")
    if kind.name in STEP_CACHES:
        raise ValueError(f"a step cache named '{kind.name}' is already registered")
    if kind.check(kind.default) is not None:
        raise ValueError(f"step cache {kind.name}: its default {kind.default:g} fails its own check")
    STEP_CACHES[kind.name] = kind
    return kind


def step_cache_names() -> tuple[str, ...]:
    return tuple(STEP_CACHES)


def step_cache_help() -> str:
    return STEP_CACHE_HELP.format(
        kinds="; ".join(f"{k.name}[:{k.value}] ({k.help}, default {k.default:g})" for k in STEP_CACHES.values())
    )


@dataclass(frozen=True)
class StepCacheSpec:
    """One step cache asked for: its kind and number."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_step_caches(text: str | None) -> tuple[StepCacheSpec, ...]:
    """`deepcache:3,tome:0.5` -> specs; None, "" and "none" -> (). Bad input: one sentence naming the field."""
    if text is None or str(text).strip() in ("", "none"):
        return ()
    specs = []
    for part in str(text).split(","):
        name, sep, number = part.strip().partition(":")
        if name not in STEP_CACHES:
            raise ConfigError(f"step_cache must name kinds among {', '.join(STEP_CACHES)} (or none); got {name!r}")
        kind = STEP_CACHES[name]
        value = kind.default
        if sep:
            try:
                value = float(number)
            except ValueError:
                raise ConfigError(f"step_cache {name}: {number!r} is not a number ({kind.value})") from None
        problem = kind.check(value)
        if problem is not None:
            raise ConfigError(f"step_cache {name}: {problem}")
        specs.append(StepCacheSpec(name, value))
    names = [s.kind for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"step_cache: each kind may appear once, got {text!r}")
    return tuple(specs)


class StepCaches(StepCache):
    """Several step caches as one: installed in order (each over the previous), every call announced to all."""

    def __init__(self, caches: list[StepCache]):
        self.caches = caches

    @contextlib.contextmanager
    def installed(self, unet: torch.nn.Module) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for cache in self.caches:
                stack.enter_context(cache.installed(unet))
            yield

    def begin_call(self, index: int, key: tuple) -> None:
        for cache in self.caches:
            cache.begin_call(index, key)


def build_step_caches(specs: tuple[StepCacheSpec, ...] | str | None) -> StepCache:
    """The step caches of `specs` (or of their text) as one StepCache; a no-op one when none is asked for."""
    if specs is None or isinstance(specs, str):
        specs = parse_step_caches(specs)
    return StepCaches([STEP_CACHES[s.kind].make(s.value) for s in specs])


def _interval(value: float) -> str | None:
    if value != int(value) or not 1 <= value <= 50:
        return f"the interval must be a whole number of steps from 1 to 50, got {value:g}"
    return None


def _ratio(value: float) -> str | None:
    if not 0 <= value < 1:
        return f"the merge ratio must be in [0, 1), got {value:g}"
    return None


register_step_cache(
    StepCacheKind(
        "deepcache", "editing.stepcache.deepcache:make_deepcache", 3, _interval, "N",
        excludes=(("motion-adapter", "its shallow path is the image UNet's, and a motion UNet's blocks hold temporal layers"),),
        help="DeepCache: the whole UNet every N steps, in between only its shallowest layers over the cached deep features",
    )
)  # fmt: skip
register_step_cache(
    StepCacheKind(
        "tome", "editing.stepcache.tome:make_tome", 0.5, _ratio, "RATIO",
        help="ToMe for SD: a RATIO share of each frame's tokens merged into similar ones inside self-attention "
        "at the finest attention level",
    )
)  # fmt: skip
