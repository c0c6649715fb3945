"""The region an edit may change, and the step callback that holds every latent outside it to the source's
latents at the same timestep (Blended Latent Diffusion's per-step blend; editing.region composites the pixels)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .masks.shape import latent_mask
from .sampling import noise_to_timestep

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from .inversion import Trajectory
    from .sampling import StepCallback


@dataclass(frozen=True, eq=False)
class HeldRegion:
    """Where an edit may change the clip: (N, H, W) float32 weights, 1 inside the grown mask, fading to 0 over
    the feather; and the mask itself, when known (propagation then follows the region's own motion)."""

    weights: np.ndarray
    inside: np.ndarray | None = None  # (N, H, W) bool: the mask before growing and feathering

    def subset(self, indices: Sequence[int]) -> HeldRegion:
        """The region of some frames of the clip (the keyframes)."""
        return HeldRegion(self.weights[list(indices)], None if self.inside is None else self.inside[list(indices)])

    def latent(self, scale: int) -> torch.Tensor:
        """(N, 1, h, w) bool: latent pixels the edit may change (any image pixel under them has weight)."""
        return torch.from_numpy(latent_mask(self.weights, scale))[:, None]


FREE_SHARE = 0.25  # share of a region edit's first steps left unheld, as Prompt-to-Prompt's local blend starts late


def first_held(steps: int) -> int:
    """The first step of `steps` a region edit holds. Left free, the first quarter lays out the whole frame
    under the edit prompt; held from the first step, a small region can be filled with background instead
    of the object the prompt names (docs/regions.md)."""
    return round(FREE_SHARE * steps)


StateAt = Callable[[int], torch.Tensor]  # step index -> the source's latents after that step (variance-preserving)


def trajectory_states(trajectory: Trajectory) -> StateAt:
    """After edit step k the latents are at the inversion's state n - 1 - k (editing.prompt_edit.blend_callback)."""
    steps = len(trajectory.timesteps)
    return lambda index: trajectory.states[steps - 1 - index]


def noised_states(scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> StateAt:
    """Without inversion: the source noised with the edit's own noise to the timestep after step k (clean after the last)."""
    following = [*(int(t) for t in timesteps[1:]), None]

    def at(index: int) -> torch.Tensor:
        after = following[index]
        return clean if after is None else noise_to_timestep(scheduler, clean, noise, after)

    return at


def hold_callback(region: HeldRegion, scale: int, source_at: StateAt, inner: StepCallback | None = None, first: int = 0):
    """The step callback `inner` followed by the hold from step `first` on: outside the region the latents
    become the source's at the same timestep. With a region covering every latent pixel it is `inner` itself."""
    inside = region.latent(scale)
    if bool(inside.all()):
        return inner

    def on_step(index: int, timestep: int, latents: torch.Tensor):
        if inner is not None:
            replaced = inner(index, timestep, latents)
            latents = latents if replaced is None else replaced
        if index < first:
            return latents
        source = source_at(index).to(latents.device, latents.dtype)
        return torch.where(inside.to(latents.device), latents, source)

    return on_step
