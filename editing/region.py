"""Edit inside a mask, keep the rest: blended latent diffusion with the source's inversion, then a pixel composite.

Blended Latent Diffusion (Avrahami et al., 2023): after every denoising step the latents outside the
(grown, feathered) mask are replaced by the source's latents at the same timestep: the DDIM inversion's
state (or, without inversion, the source noised with the edit's noise), so the edit is made in the
context of the source and meets it at the mask's edge. At the end the decoded frames are composited
with the source in pixel space: the feathered weights mix the two, and every pixel outside the mask plus
its feather is the source's own, exactly (the autoencoder does not give pixels back exactly; the
composite does). Attention modes, ControlNets, keyframes and supplied keyframes run as in any edit:
the hold is one more step callback of the one loop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .masks import MaskInputs, clip_masks, feathered, grown, latent_mask, overlay_frames
from .masks.shape import composite

log = logging.getLogger(__name__)

PREVIEW_FPS = 8  # frames per second of the mask preview written by the library (the app shows its own)


@dataclass(frozen=True, eq=False)
class HeldRegion:
    """Where an edit may change the clip: (N, H, W) float32 weights, 1 inside the grown mask, fading to 0 over the feather."""

    weights: np.ndarray

    def subset(self, indices) -> HeldRegion:
        """The region of some frames of the clip (the keyframes)."""
        return HeldRegion(self.weights[list(indices)])

    def latent(self, scale: int) -> torch.Tensor:
        """(N, 1, h, w) bool: latent pixels the edit may change (any image pixel under them has weight)."""
        return torch.from_numpy(latent_mask(self.weights, scale))[:, None]


@dataclass(frozen=True, eq=False)
class ClipMask:
    """A clip's mask as the user asked for it, and the region an edit may change."""

    masks: np.ndarray  # (N, H, W) bool, as the source made it
    grown: np.ndarray  # (N, H, W) bool, grown by mask_grow
    weights: np.ndarray  # (N, H, W) float32, the grown mask feathered

    def overlay(self, frames: np.ndarray) -> np.ndarray:
        """The clip with the mask shown over it (its feather tinted lighter)."""
        return overlay_frames(frames, self.grown, self.weights)


def clip_mask(frames: np.ndarray, parts, backbone=None) -> ClipMask:
    """The request's mask of the clip, grown and feathered."""
    config = parts.masking
    masks = clip_masks(MaskInputs(frames, config, backbone, parts.selection, parts.edit.prompt, parts.engine.inversion_prompt))
    bigger = grown(masks, config.mask_grow)
    return ClipMask(masks, bigger, feathered(bigger, config.mask_feather))


def write_preview(path: str, frames: np.ndarray, mask: ClipMask) -> None:
    """Write the mask overlay clip."""
    from fractions import Fraction

    from .video_io import write_video

    write_video(path, mask.overlay(frames), Fraction(PREVIEW_FPS))


def masked_edit(frames: np.ndarray, parts, backbone, progress, timer):
    """A request with a mask: its preview written if asked, then the object removed (editing.removal) or
    the edit made inside the region and composited over the source."""
    from .core import decoded_indices, edit_frames

    progress("mask", 0, 1)
    mask = clip_mask(frames, parts, backbone)
    progress("mask", 1, 1)
    config = parts.masking
    if config.mask_preview:
        write_preview(config.mask_preview, frames, mask)
    if config.remove:
        from .removal import remove_object

        return remove_object(frames, mask, parts, backbone, progress, timer)
    if not config.region:
        return edit_frames(frames, dataclasses.replace(parts, masking=None), backbone, progress, timer)
    wanted = decoded_indices(parts.decode_frames, len(frames)) or tuple(range(len(frames)))
    if not mask.weights.any():  # nothing may change: the source, exactly
        from .core import EditedFrames

        return EditedFrames(
            frames[list(wanted)].copy(), warnings=("the mask is empty in every frame: the source is returned unchanged",)
        )
    edited = edit_frames(
        frames, dataclasses.replace(parts, masking=None, held=HeldRegion(mask.weights)), backbone, progress, timer
    )
    out = composite(frames[list(wanted)], edited.frames, mask.weights[list(wanted)])
    return dataclasses.replace(edited, frames=out)


StateAt = Callable[[int], torch.Tensor]  # step index -> the source's latents after that step (variance-preserving)


def trajectory_states(trajectory) -> StateAt:
    """After edit step k the latents are at the inversion's state n - 1 - k (editing.prompt_edit.blend_callback)."""
    steps = len(trajectory.timesteps)
    return lambda index: trajectory.states[steps - 1 - index]


def noised_states(scheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps) -> StateAt:
    """Without inversion: the source noised with the edit's own noise to the timestep after step k (clean after the last)."""
    from .sampling import noise_to_timestep

    following = [*(int(t) for t in timesteps[1:]), None]

    def at(index: int) -> torch.Tensor:
        after = following[index]
        return clean if after is None else noise_to_timestep(scheduler, clean, noise, after)

    return at


def hold_callback(region: HeldRegion, scale: int, source_at: StateAt, inner=None):
    """The step callback `inner` followed by the hold: outside the region the latents become the source's
    at the same timestep. With a region covering every latent pixel it is `inner` itself."""
    inside = region.latent(scale)
    if bool(inside.all()):
        return inner

    def on_step(index: int, timestep: int, latents: torch.Tensor):
        if inner is not None:
            replaced = inner(index, timestep, latents)
            latents = latents if replaced is None else replaced
        source = source_at(index).to(latents.device, latents.dtype)
        return torch.where(inside.to(latents.device), latents, source)

    return on_step
