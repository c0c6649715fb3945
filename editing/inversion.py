"""DDIM inversion of the source frames, and its latent trajectories stored in the on-disk cache.

DDIM inversion runs the deterministic DDIM update backwards (Song et al., 2021, eq. 12 solved for
x_{t+1}): starting from the clean latents, each step predicts the noise and moves to the next, noisier
timestep. Sampling from the last latent with the inversion prompt retraces the path back to the source,
which is what makes edits keep the source's layout. It runs through the same loop as sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from .cache import TensorCache
from .models import Backbone
from .sampling import NO_HOOKS, FramePlan, Guidance, LoopHooks, Schedule, TextConditioning, denoise


@dataclass(frozen=True)
class Trajectory:
    """Latents along the inversion path: states[0] is the clean source, states[-1] the start of sampling."""

    timesteps: torch.Tensor  # (k,) ascending inverse timesteps
    states: torch.Tensor  # (k + 1, frames, channels, h, w)
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # what the inversion's attention control recorded (tokenflow)

    @property
    def final(self) -> torch.Tensor:
        return self.states[-1]

    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


def inverse_schedule(backbone: Backbone, steps: int, strength: float) -> Schedule:
    """The DDIM inverse scheduler set for `steps` steps and the ascending timesteps that invert `strength`
    of them (at least one)."""
    inverse = backbone.inverse_scheduler()
    inverse.set_timesteps(steps)
    return Schedule(inverse, inverse.timesteps[: max(1, round(steps * strength))])


def ddim_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    schedule: Schedule,
    text: TextConditioning,
    plan: FramePlan,
    hooks: LoopHooks = NO_HOOKS,
) -> Trajectory:
    """Invert clean latents along the DDIM path of `schedule` (inverse_schedule) under `text` (no guidance),
    recording every state (and what the hooks' attention control's `recording` records, e.g. TokenFlow's
    source features); the hooks' callback sees every step."""
    timesteps, callback, attention_control = schedule.timesteps, hooks.callback, hooks.attention_control
    states = [latents.detach().to("cpu", copy=True)]

    def record(index: int, timestep: int, current: torch.Tensor) -> None:
        states.append(current.detach().to("cpu", copy=True))
        if callback is not None:
            callback(index, timestep, current)

    recording = (
        contextlib.nullcontext({}) if attention_control is None else attention_control.recording(backbone.unet, len(timesteps))
    )
    with recording as features:
        denoise(
            backbone,
            schedule,
            latents,
            Guidance(TextConditioning(text.positive, None), 1.0),
            plan,
            dataclasses.replace(hooks, callback=record),
        )
    return Trajectory(timesteps.cpu(), torch.stack(states), dict(features))


def load_trajectory(cache: TensorCache, key: str) -> Trajectory | None:
    """The trajectory stored under `key`, or None."""
    data = cache.load(key)
    if data is None:
        return None
    return Trajectory(
        data["timesteps"], data["states"], {name: t for name, t in data.items() if name not in ("timesteps", "states")}
    )


def save_trajectory(cache: TensorCache, key: str, trajectory: Trajectory) -> None:
    """Store a trajectory under `key`."""
    cache.save(key, {"timesteps": trajectory.timesteps, "states": trajectory.states, **trajectory.features})
