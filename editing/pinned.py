"""Edited frames the user supplies (AnyV2V's workflow): edit a frame with any image tool, the video follows.

Three things make the other frames agree with a supplied image:
1. what is inverted (or noised) is not the source but `guided_start`: each frame with its nearest
   supplied image warped onto it along the source's chained optical flow, where the path is trusted;
2. the supplied frame anchors every other frame's cross-frame attention: its latents follow the
   supplied image's own DDIM inversion path (or, from an SDEdit start, its forward-noised path) at
   every step, so the keys and values the others attend to are the edited frame's;
3. the edit runs with `keyframe_guidance` (default 1: no classifier-free guidance), because a prompt
   that still describes the source pulls the frames back to it: measured with the shapes model, a
   colour changed only in the supplied frame 0 reaches 0 of the other 7 frames at guidance 5 (even
   from strength 0.3), and all 7 at guidance 1.
The supplied image is the output frame, exactly. With `--keyframes`, the supplied frames are
keyframes; the other keyframes are edited this way, then propagation runs as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import sampling
from .errors import ConfigError
from .images import fit_image, read_image
from .inversion import ddim_invert, inverse_schedule
from .keyframes import chain, clip_flows, remap

if TYPE_CHECKING:
    from .config import EngineConfig
    from .context import EditParts
    from .flows import ClipFlows
    from .models import Backbone
    from .sampling import StepCallback


def pinned_frames(engine: EngineConfig, frames: np.ndarray) -> tuple[tuple[tuple[int, np.ndarray], ...], tuple[str, ...]]:
    """The supplied frames as (index, (H, W, 3) uint8) at the clip's size, and how each was fitted."""
    count, height, width = frames.shape[:3]
    pins, notes = [], []
    for image in sorted(engine.keyframe_images, key=lambda i: i.index):
        name = image.name
        if image.index >= count:
            raise ConfigError(f"{name} names frame {image.index}, but the clip has frames 0 to {count - 1}")
        fitted, note = fit_image(read_image(image.path, name), width, height, engine.keyframe_fit, name)
        pins.append((image.index, fitted))
        if note:
            notes.append(note)
    return tuple(pins), tuple(notes)


def guided_start(frames: np.ndarray, pins: Sequence[tuple[int, np.ndarray]], flows: ClipFlows | None = None) -> np.ndarray:
    """What to invert instead of the source: each frame with its nearest supplied frame warped onto it
    along the source's chained optical flow, where the path is trusted; the source elsewhere (where the
    supplied frame cannot see). So the inverted latents already carry the supplied edit, and the
    denoising keeps it (Rerender's and AnyV2V's premise: an edited frame says exactly what to make)."""
    if len(frames) < 2:
        return frames
    flows = clip_flows(frames) if flows is None else flows
    start = frames.copy()
    supplied = dict(pins)
    for frame in range(len(frames)):
        if frame in supplied:
            start[frame] = supplied[frame]
            continue
        nearest = min(supplied, key=lambda k: (abs(k - frame), k))
        path = chain(flows, frame, nearest)
        warped = remap(supplied[nearest], path.x, path.y)
        start[frame] = np.where(path.valid[..., None], warped, frames[frame])
    return start


@dataclass
class Pinning:
    """The latents of the supplied frames at every step: `start`, then `after(i)` for step i's result."""

    indices: list[int]
    states: torch.Tensor  # (steps + 1, k, c, h, w): states[0] clean ... states[-1] the start

    @classmethod
    def make(
        cls, pins: Sequence[tuple[int, np.ndarray]], backbone: Backbone, parts: EditParts, timesteps: torch.Tensor
    ) -> Pinning:
        config, engine = parts.edit, parts.engine
        images = np.stack([image for _, image in pins])
        clean = sampling.encode_frames(backbone, images, engine.chunk)
        steps = len(timesteps)
        if engine.inversion == "none":
            noising = backbone.scheduler()
            noise = sampling.shared_noise(tuple(clean.shape), config.seed, clean.device, clean.dtype)
            # states[j] is the latent at the j-th timestep from the end, as an inversion path records it
            path = [clean] + [sampling.noise_to_timestep(noising, clean, noise, t) for t in reversed(timesteps)]
            states = torch.stack([p.cpu() for p in path])
        else:
            prompt = sampling.encode_text(backbone, engine.inversion_prompt, "", guided=False)
            plan = sampling.plan_frames(len(images), engine.chunk, "none")
            states = ddim_invert(backbone, clean, inverse_schedule(backbone, config.steps, config.strength), prompt, plan).states
        if states.shape[0] != steps + 1:
            raise AssertionError(f"pinned path of {states.shape[0]} states for {steps} steps")
        return cls([index for index, _ in pins], states)

    def start(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.clone()
        latents[self.indices] = self.states[-1].to(latents.device, latents.dtype)
        return latents

    def wrap(self, callback: StepCallback):
        """The step callback, then the supplied frames put back on their own path."""

        def pinned(index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
            replaced = callback(index, timestep, latents) if callback is not None else None
            current = (latents if replaced is None else replaced).clone()
            current[self.indices] = self.states[-2 - index].to(current.device, current.dtype)
            return current

        return pinned
