"""Keyframes, then propagation, above the core: choose the keyframes, edit them jointly in one pass of
the core (editing.core), then make the other frames from them along the source's flow (editing.keyframes).

`edit_clip` is the clip's edit: staged when the request asks for keyframes, one pass of the core otherwise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .compat import check as check_combination
from .config import parse_keyframes
from .context import EditParts, ProgressFn, StageTimer, no_progress, prefixed
from .core import EditedFrames, decoded_indices, edit_frames
from .errors import ConfigError
from .frames import check_frames
from .keyframes import Keyframes, choose_keyframes, clip_flows, propagate
from .models import Backbone
from .pinned import guided_start, pinned_frames


def edit_clip(
    frames: np.ndarray,
    parts: EditParts,
    backbone: Backbone,
    progress: ProgressFn = no_progress,
    timer: StageTimer | None = None,
) -> EditedFrames:
    """Edit (N, H, W, 3) uint8 RGB frames: with keyframes, edit the keyframes jointly, then make the other
    frames from them; without, one pass of the core over every frame."""
    if not parts.engine.keyframes_every:
        return edit_frames(frames, parts, backbone, progress, timer)
    frames = check_frames(frames)
    check_combination(parts)
    timer = timer or StageTimer(backbone.device)
    timer.device = backbone.device
    if parts.masking is not None:  # region edit or removal run above this and come back here without it
        raise ConfigError("an edit with a mask (region or removal) runs through editing.region.masked_edit")
    keyframes = edit_keyframes(frames, parts, backbone, progress, timer)
    wanted = decoded_indices(parts.decode_frames, len(frames))
    if wanted is not None and set(wanted) <= set(keyframes.indices):  # a preview of keyframes: nothing to propagate
        edited = keyframes.frames[[keyframes.indices.index(index) for index in wanted]]
    else:
        edited = propagate(frames, keyframes, parts, backbone, progress, timer)
        if wanted is not None:
            edited = edited[list(wanted)]
    return EditedFrames(edited, keyframes.inversion_cached, None, timer.seconds, keyframes.warnings, keyframes.indices)


def plan_keyframes(frames: np.ndarray, parts: EditParts, keys: tuple[int, ...] | None = None) -> Keyframes:
    """The keyframes to edit (chosen unless given; every supplied keyframe image is one) and the source's
    flows when they were needed to choose them or to warp the supplied images; no frame edited yet."""
    every = parse_keyframes(parts.engine.keyframes)
    supplied = parts.engine.keyframe_images
    for image in supplied:
        if image.index >= len(frames):
            raise ConfigError(
                f"keyframe_image {image.index} names frame {image.index}, but the clip has frames 0 to {len(frames) - 1}"
            )
    flows = (
        clip_flows(frames) if keys is None or supplied else None
    )  # once, for the choice (cuts), the supplied frames' warps and propagation
    if keys is None:
        keys = choose_keyframes(len(frames), every or 8, flows)
        keys = tuple(sorted(set(keys) | {image.index for image in supplied}))  # a supplied frame is a keyframe
    if any(not 0 <= k < len(frames) for k in keys) or list(keys) != sorted(set(keys)) or not keys:
        raise ConfigError(f"keyframes must be distinct frames 0 to {len(frames) - 1} in order, got {list(keys)}")
    if any(image.index not in keys for image in supplied):
        raise ConfigError(f"every keyframe_image must be one of the keyframes {list(keys)}")
    return Keyframes(tuple(keys), frames[:0], flows=flows)


def keyframe_parts(parts: EditParts, keys: tuple[int, ...]) -> EditParts:
    """The request's parts for one pass over the keyframes only: keyframes off, supplied images renumbered
    to their place among the keyframes, the held region cut to them, every keyframe decoded."""
    remapped = tuple(
        dataclasses.replace(image, index=keys.index(image.index), given_index=image.index)
        for image in parts.engine.keyframe_images
    )
    engine = dataclasses.replace(parts.engine, keyframes=None, keyframe_images=remapped)
    held = None if parts.held is None else parts.held.subset(keys)
    return dataclasses.replace(parts, engine=engine, decode_frames=None, held=held)


def edit_keyframes(
    frames: np.ndarray,
    parts: EditParts,
    backbone: Backbone,
    progress: ProgressFn | None = None,
    timer: StageTimer | None = None,
    keys: tuple[int, ...] | None = None,
) -> Keyframes:
    """Stage 1: choose the keyframes (unless given) and edit them jointly in one pass of the core."""
    planned = plan_keyframes(frames, parts, keys)
    keys = planned.indices
    start = None
    if parts.engine.keyframe_images:  # the supplied frames warped onto the other keyframes through every frame between
        start = guided_start(frames, pinned_frames(parts.engine, frames)[0], planned.flows)[list(keys)]
    sub = keyframe_parts(parts, keys)
    edited = edit_frames(frames[list(keys)], sub, backbone, prefixed(progress, "keyframes"), timer, start=start)
    return Keyframes(keys, edited.frames, edited.inversion_cached, edited.warnings, planned.flows)
