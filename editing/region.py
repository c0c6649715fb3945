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
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from .context import EditParts, ProgressFn, StageTimer, no_progress
from .core import EditedFrames, decoded_indices
from .held import HeldRegion
from .masks import MaskInputs, clip_masks, feathered, grown, overlay_frames
from .masks.shape import composite
from .memo import ClipMemo, current_memo, remembering
from .removal import remove_object
from .staging import edit_clip
from .video_io import write_video

if TYPE_CHECKING:
    from .models import Backbone

log = logging.getLogger(__name__)

PREVIEW_FPS = 8  # frames per second of the mask preview written by the library (the app shows its own)


@dataclass(frozen=True, eq=False)
class ClipMask:
    """A clip's mask as the user asked for it, and the region an edit may change."""

    masks: np.ndarray  # (N, H, W) bool, as the source made it
    grown: np.ndarray  # (N, H, W) bool, grown by mask_grow
    weights: np.ndarray  # (N, H, W) float32, the grown mask feathered

    def overlay(self, frames: np.ndarray) -> np.ndarray:
        """The clip with the mask shown over it (its feather tinted lighter)."""
        return overlay_frames(frames, self.grown, self.weights)


def clip_mask(frames: np.ndarray, parts: EditParts, backbone: Backbone | None = None) -> ClipMask:
    """The request's mask of the clip, grown and feathered."""
    config = parts.masking
    masks = clip_masks(MaskInputs(frames, config, backbone, parts.selection, parts.edit.prompt, parts.engine.inversion_prompt))
    bigger = grown(masks, config.mask_grow)
    return ClipMask(masks, bigger, feathered(bigger, config.mask_feather))


def write_preview(path: str, frames: np.ndarray, mask: ClipMask) -> None:
    """Write the mask overlay clip."""

    write_video(path, mask.overlay(frames), Fraction(PREVIEW_FPS))


def masked_edit(
    frames: np.ndarray, parts: EditParts, backbone: Backbone, progress: ProgressFn = no_progress, timer: StageTimer | None = None
):
    """A request with a mask: its preview written if asked, then the object removed (editing.removal) or
    the edit made inside the region and composited over the source; without a mask, the plain edit."""
    if parts.masking is None:
        return edit_clip(frames, parts, backbone, progress, timer)
    memo = current_memo()  # a session's, kept; else one for this edit (an empty memo is falsy: compare with None)
    with remembering(ClipMemo() if memo is None else memo):  # the mask, the keyframes and a removal share the source's flows
        return _masked(frames, parts, backbone, progress, timer or StageTimer(backbone.device))


def _masked(frames: np.ndarray, parts: EditParts, backbone: Backbone, progress: ProgressFn, timer: StageTimer):
    """`masked_edit` of a request with a mask."""
    progress("mask", 0, 1)
    mask = clip_mask(frames, parts, backbone)
    progress("mask", 1, 1)
    config = parts.masking
    if config.mask_preview:
        write_preview(config.mask_preview, frames, mask)
    if config.remove:
        return remove_object(frames, mask, parts, backbone, progress, timer)
    if not config.region:
        return edit_clip(frames, dataclasses.replace(parts, masking=None), backbone, progress, timer)
    wanted = decoded_indices(parts.decode_frames, len(frames)) or tuple(range(len(frames)))
    if not mask.weights.any():  # nothing may change: the source, exactly
        return EditedFrames(
            frames[list(wanted)].copy(), warnings=("the mask is empty in every frame: the source is returned unchanged",)
        )
    edited = edit_clip(
        frames, dataclasses.replace(parts, masking=None, held=HeldRegion(mask.weights, mask.masks)), backbone, progress, timer
    )
    out = composite(frames[list(wanted)], edited.frames, mask.weights[list(wanted)])
    return dataclasses.replace(edited, frames=out)
