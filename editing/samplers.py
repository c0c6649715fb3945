"""Samplers (diffusers schedulers) chosen by name, each bound in one registration.

Every sampler runs on one timeline: the DDIM timesteps of the request's step count (the ones DDIM
inversion walks up), so an inverted clip can be sampled back with any of them. A registration names
the scheduler class, its settings, and whether it works in sigma space (Euler: x = x0 + sigma eps,
the variance-exploding form) rather than on variance-preserving latents like DDIM's. This module
imports nothing heavy; diffusers is imported when a sampler is built.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


@dataclass(frozen=True)
class Sampler:
    """One sampler: its name, the diffusers scheduler class (by name) and the settings it is built with."""

    name: str
    scheduler_class: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    sigma_space: bool = False  # latents are x0 + sigma * eps (Euler family), not sqrt(a) x0 + sqrt(1 - a) eps
    stochastic: bool = False  # draws fresh noise each step (seeded, shared by all frames)
    help: str = field(default="", compare=False)

    def build(self, config: Mapping[str, Any]):
        """A fresh scheduler with the model's noise schedule (`config`) and this sampler's settings."""
        # here, not at the top: diffusers is heavy, and --help imports this module (see above)
        import diffusers

        cls = getattr(diffusers, self.scheduler_class)
        scheduler = cls.from_config({**config, "timestep_spacing": "leading", **self.settings})
        return scheduler


SAMPLERS: dict[str, Sampler] = {}
DEFAULT_SAMPLER = "ddim"


def register_sampler(sampler: Sampler) -> Sampler:
    """Add a sampler to the registry; a name can be registered only once."""
    if not sampler.name or sampler.name != sampler.name.strip():
        raise ValueError(f"a sampler needs a plain name, got {sampler.name!r}")
    if sampler.name in SAMPLERS:
        raise ValueError(f"a sampler named '{sampler.name}' is already registered")
    SAMPLERS[sampler.name] = sampler
    return sampler


def sampler_names() -> tuple[str, ...]:
    return tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return SAMPLERS[name]


def sampler_of(scheduler: SchedulerMixin) -> Sampler | None:
    """The registered sampler a scheduler object was built from (None for e.g. the inverse DDIM scheduler)."""
    return getattr(scheduler, "_editing_sampler", None)


def make_scheduler(name: str, config: Mapping[str, Any]):
    """Build the named sampler's scheduler and remember which sampler it is."""
    sampler = get_sampler(name)
    scheduler = sampler.build(config)
    scheduler._editing_sampler = sampler
    return scheduler


def follows_inversion(name: str) -> bool:
    """Whether a sampler steps along DDIM inversion's (leading) timesteps, so it can sample an inverted clip back."""
    return get_sampler(name).settings.get("timestep_spacing", "leading") == "leading"


def set_timeline(scheduler: SchedulerMixin, timesteps: list[int], steps: int) -> None:
    """Make `scheduler` step along exactly `timesteps` (a tail of the `steps`-step DDIM schedule)."""
    accepts = inspect.signature(scheduler.set_timesteps).parameters
    if "timesteps" in accepts:
        quiet = logging.getLogger(type(scheduler).__module__)
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # LCM and TCD warn about timesteps off their distillation schedule
        try:
            scheduler.set_timesteps(timesteps=list(timesteps))
        finally:
            quiet.setLevel(level)
    else:
        scheduler.set_timesteps(steps)
        skip = len(scheduler.timesteps) - len(timesteps)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip)
        if [int(t) for t in scheduler.timesteps[skip:]] != list(timesteps):
            raise ConfigError(f"sampler {type(scheduler).__name__} cannot follow the DDIM timesteps {list(timesteps)}")


# ---------------------------------------------------------------- the built-in samplers

register_sampler(Sampler("ddim", "DDIMScheduler", help="deterministic DDIM (Song et al., 2021); the default"))
register_sampler(
    Sampler(
        "dpm-solver++",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        help="DPM-Solver++ 2M, multistep",
    )
)
register_sampler(Sampler("euler", "EulerDiscreteScheduler", sigma_space=True, help="Euler (Karras et al., 2022)"))
register_sampler(
    Sampler("euler-ancestral", "EulerAncestralDiscreteScheduler", sigma_space=True, stochastic=True, help="Euler ancestral")
)
register_sampler(Sampler("lcm", "LCMScheduler", stochastic=True, help="latent consistency (for LCM-distilled weights)"))
register_sampler(Sampler("tcd", "TCDScheduler", stochastic=True, help="trajectory consistency distillation"))
register_sampler(
    Sampler(
        "ddim-trailing",
        "DDIMScheduler",
        {"timestep_spacing": "trailing"},
        help="DDIM on trailing timesteps (Hyper-SD's); its own timeline, so SDEdit start only (--inversion none)",
    )
)
register_sampler(
    Sampler(
        "euler-trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, sigma_space=True,
        help="Euler on trailing timesteps (AnimateDiff-Lightning's); its own timeline, so SDEdit start only (--inversion none)",
    )
)  # fmt: skip
