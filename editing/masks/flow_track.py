"""Mask source `flow`: one frame's mask (IMAGE@FRAME) carried through the clip along the source's own
optical flow (the DIS flow and validity keyframe propagation uses, editing.keyframes.clip_flows).

Each frame's mask is the neighbouring frame's, followed back along the flow where the flow is trusted
and the colour is the one the flow points at in the neighbour. Where it is not (a region revealed from
behind an occluder) the pixel is given to whichever it looks like: the object's colours, seen on the
given frame, or the colours around the object in the neighbour, as far out as such a pixel may be,
nearest colour wins; only pixels near the object can join it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import ConfigError
from ..images import read_image
from ..keyframes import clip_flows
from .options import parse_mask_file
from .registry import MaskInputs, MaskSource, register_mask_source
from .video import binary

if TYPE_CHECKING:
    from ..flows import ClipFlows

SAMPLES = 256  # colour samples kept of the object and of its surroundings
REACH = 2  # pixels beyond the farthest flow vector that a revealed pixel may be from the object
CARRY_LEVELS = 24.0  # a carried pixel whose colour differs from its source's by more (mean of RGB, 8-bit) is doubtful


def frame_mask(inputs: MaskInputs) -> tuple[np.ndarray, int]:
    """The (H, W) bool mask of IMAGE@FRAME, at the clip's size, and its frame."""
    path, index = parse_mask_file(inputs.config.mask)
    frames = inputs.frames
    if index is None or not 0 <= index < len(frames):
        raise ConfigError(f"mask frame must be one of the clip's frames 0 to {len(frames) - 1}, got {index}")
    image = read_image(path, "mask")
    height, width = frames.shape[1:3]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
    return binary(image), index


def _samples(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(pixels) > SAMPLES:
        pixels = pixels[rng.choice(len(pixels), SAMPLES, replace=False)]
    return pixels


def _nearest_is_object(colours: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """For each colour, whether its nearest sample is an object sample."""
    if len(inside) == 0:
        return np.zeros(len(colours), bool)
    if len(outside) == 0:
        return np.ones(len(colours), bool)
    near_in = ((colours[:, None] - inside[None]) ** 2).sum(-1).min(1)
    near_out = ((colours[:, None] - outside[None]) ** 2).sum(-1).min(1)
    return near_in < near_out


def _warped(image: np.ndarray, back: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """`image` (float32) sampled at x + back(x), zero outside it."""
    return cv2.remap(image, xs + back[..., 0], ys + back[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def step_mask(
    previous: np.ndarray,
    neighbour: np.ndarray,
    frame: np.ndarray,
    back: np.ndarray,
    valid: np.ndarray,
    object_colours: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The mask of `frame` from the `neighbour` frame's mask `previous`, `back` (frame(x) ~ neighbour(x +
    back(x))) and where that flow is trusted (`valid`). A pixel whose colour is not its source's is
    doubtful even where the flow passes its checks: a part of the object uncovered by an occluder that the
    flow smoothed over has the occluder as its source."""
    height, width = previous.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    carried = _warped(previous.astype(np.float32), back, xs, ys) >= 0.5
    source = _warped(neighbour.astype(np.float32), back, xs, ys)
    valid = valid & (np.abs(source - frame.astype(np.float32)).mean(-1) <= CARRY_LEVELS)
    mask = carried & valid
    reach = int(np.ceil(np.abs(back).max())) + REACH
    near = cv2.dilate(previous.astype(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0
    doubtful = ~valid & near
    if doubtful.any():
        lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB).astype(np.float32)
        ring = near & ~previous  # as far out as a doubtful pixel may be
        outside = _samples(cv2.cvtColor(neighbour, cv2.COLOR_RGB2LAB).astype(np.float32)[ring], rng)
        mask[doubtful] = _nearest_is_object(lab[doubtful], object_colours, outside)
    return mask


def track_by_flow(frames: np.ndarray, mask: np.ndarray, index: int, flows: ClipFlows | None = None) -> np.ndarray:
    """(N, H, W) bool: `mask` of frame `index` carried forward and backward through the clip."""
    frames = np.asarray(frames)
    out = np.zeros(frames.shape[:3], bool)
    out[index] = mask
    if len(frames) < 2:
        return out
    flows = flows or clip_flows(frames)
    rng = np.random.default_rng(0)
    lab = lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2LAB).astype(np.float32)  # noqa: E731
    colours = _samples(lab(frames[index])[mask], rng)
    for t in range(index + 1, len(frames)):  # pixel of t came from t - 1 at x + backward[t - 1](x)
        out[t] = step_mask(out[t - 1], frames[t - 1], frames[t], flows.backward[t - 1], flows.backward_valid[t - 1], colours, rng)
    for t in range(index - 1, -1, -1):  # pixel of t goes to t + 1 at x + forward[t](x)
        out[t] = step_mask(out[t + 1], frames[t + 1], frames[t], flows.forward[t], flows.forward_valid[t], colours, rng)
    return out


def flow_masks(inputs: MaskInputs) -> np.ndarray:
    mask, index = frame_mask(inputs)
    return track_by_flow(inputs.frames, mask, index)


register_mask_source(MaskSource("flow", flow_masks, help="one frame's mask carried along the source's optical flow"))
