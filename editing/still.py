"""Still backgrounds: where the source has no texture its optical flow is unknown, not the neighbour's motion.

DIS fills a flat region's flow in from its edges, so a plain background around a moving object takes
part of the object's motion (on the shapes benchmark's plain clips the background's median flow is 0.2
to 1.7 px a frame where it does not move at all), and propagation along it drags whatever an edit adds
to that background (stripes, grain) in a wake around the object. Colour cannot tell the two apart: in a
flat region every motion explains the colours equally well. What can: a flat region that reaches the
image's edge is background, and the background moves with the camera; where the textured pixels on the
image's edge do not move (or there are none), the camera is still and so is that region. Its flow is set
to zero (the still-background hypothesis), and the pixels the moving object uncovers in it then fail
the flow checks (zero flow finds the object's colour there) and count as unseen, to be filled from the
region's own seen pixels (`fill_still`), instead of being copied from behind the object.

Flat regions enclosed by texture (a plain object's inside) keep their flow: they move with their edges;
so does the background's `rim` beside what moves, where an edited object bleeds into it.
"""

from __future__ import annotations

import cv2
import numpy as np

from .flows import _colour_error

FLAT_LEVELS = 6  # a pixel is flat when each RGB channel varies by at most this over its 3 x 3 neighbourhood (8-bit)
EDGE_BAND = 2  # pixels along the image's edge that decide whether a flat region reaches it, and the camera's motion
MIN_REGION = 0.25  # a flat region smaller than this share of the frame is left alone (a stripe of a striped background is one)
CAMERA_STILL = 0.5  # px a frame: the textured edge pixels' median flow below which the camera is taken to be still
CAMERA_EVIDENCE = 0.05  # share of the edge band that must vary for its flow to say whether the camera moves
CAMERA_SPREAD = (
    2  # an edge pixel varying by this much over its 3 x 3 neighbourhood (a gradient's slope too) is the camera's evidence
)
BAND_LEVELS = 12.0  # a textured pixel beside a still region joins it when its colour is this close to the region's (mean RGB)


def spread(frame: np.ndarray) -> np.ndarray:
    """(H, W) int: the largest range of an RGB channel over each pixel's 3 x 3 neighbourhood."""
    kernel = np.ones((3, 3), np.uint8)
    high = cv2.dilate(frame, kernel, borderType=cv2.BORDER_REPLICATE).astype(np.int16)
    return (high - cv2.erode(frame, kernel, borderType=cv2.BORDER_REPLICATE)).max(-1)


def flat_pixels(frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3 x 3 neighbourhood varies by at most FLAT_LEVELS in every RGB channel."""
    return spread(frame) <= FLAT_LEVELS


def _edge_band(height: int, width: int) -> np.ndarray:
    band = np.zeros((height, width), bool)
    band[:EDGE_BAND], band[-EDGE_BAND:], band[:, :EDGE_BAND], band[:, -EDGE_BAND:] = True, True, True, True
    return band


def camera_still(varies: np.ndarray, flows: list[np.ndarray]) -> bool:
    """Whether the frame's edge pixels that vary (`varies`: texture, or a gradient's slope; the camera's
    evidence) stay put under each of its `flows` (median magnitude below CAMERA_STILL); True when too few
    edge pixels vary to tell (a plain background all round)."""
    band = _edge_band(*varies.shape)
    evidence = band & varies
    if evidence.sum() < CAMERA_EVIDENCE * band.sum():
        return True
    return all(float(np.median(np.hypot(flow[..., 0], flow[..., 1])[evidence])) < CAMERA_STILL for flow in flows)


def still_background(frame: np.ndarray, flows: list[np.ndarray]) -> np.ndarray:
    """(H, W) bool: the frame's still background: its flat regions (at least MIN_REGION of the frame) that
    reach the image's edge, with the textured pixels beside them of their colour, when the camera is
    still under the frame's `flows`; nothing when it moves."""
    height, width = frame.shape[:2]
    ranges = spread(frame)
    flat = ranges <= FLAT_LEVELS
    if not camera_still(ranges >= CAMERA_SPREAD, flows):
        return np.zeros((height, width), bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(flat.astype(np.uint8), connectivity=4)
    touching = np.unique(labels[_edge_band(height, width) & flat])
    keep = [label for label in touching if stats[label, cv2.CC_STAT_AREA] >= MIN_REGION * height * width]
    still = np.isin(labels, keep) & flat
    if not still.any():
        return still
    # The edge's pixels on the background's side are not flat (their 3 x 3 window sees the object) but
    # belong to the background when they have its colour: so the object's outline stays the source's own.
    weight = cv2.blur(still.astype(np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)
    colour = (
        cv2.blur(frame.astype(np.float32) * still[..., None], (3, 3), borderType=cv2.BORDER_REPLICATE)
        / np.maximum(weight, 1e-6)[..., None]
    )
    beside = (weight > 0) & ~still & (np.abs(frame.astype(np.float32) - colour).mean(-1) <= BAND_LEVELS)
    return still | beside


def still_masks(frames: np.ndarray, backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: each frame's still background (the camera judged by the frame's flows both ways)
    less its rim beside what moves (`rim`), which keeps its own flow and so moves with the object."""
    count = len(frames)
    held = []
    for t in range(count):
        flows = [*([backward[t - 1]] if t > 0 else []), *([forward[t]] if t < count - 1 else [])]
        still = still_background(frames[t], flows)
        moving = ~still & (np.max([np.hypot(f[..., 0], f[..., 1]) for f in flows], axis=0) >= CAMERA_STILL)
        held.append(still & ~(rim(~moving) & still))
    return np.stack(held)


def hold_still(backward: np.ndarray, forward: np.ndarray, still: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flows (N-1, H, W, 2) with zero vectors on each frame's still background: the backward flow of
    pair t on frame t+1's, the forward flow on frame t's."""
    backward, forward = backward.copy(), forward.copy()
    backward[still[1:]] = 0.0
    forward[still[:-1]] = 0.0
    return backward, forward


def fill_still(frame: np.ndarray, fill: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`frame` (H, W, 3 uint8) with its `fill` pixels inpainted (Telea 2004) from the `known` pixels only
    (a still region's seen pixels: not the object beside them, whose colour would bleed in)."""
    if not fill.any() or not (known & ~fill).any():
        return frame
    unknown = (~known | fill).astype(np.uint8)
    painted = cv2.inpaint(np.ascontiguousarray(frame), unknown, 3, cv2.INPAINT_TELEA)
    return np.where(fill[..., None], painted, frame)


MEND_RADIUS = 3  # px: how far `mend_edges` looks for a moving neighbour's vector


def mend_edges(
    flow: np.ndarray, frame: np.ndarray, other: np.ndarray, still: np.ndarray, bad: np.ndarray, tolerance: float
) -> np.ndarray:
    """`flow` (frame(x) ~ other(x + flow(x))) with each `bad` pixel off the still background taking the
    vector of the neighbour (within MEND_RADIUS, itself off the still background) that best explains its
    colour, where one does within `tolerance` (mean RGB, 8-bit). DIS shortens the vectors at a moving
    object's edge, which the background's own motion made up for; held still, that background no longer does."""
    mend = bad & ~still
    if not mend.any():
        return flow
    height, width = still.shape
    pad = MEND_RADIUS
    padded_flow = np.pad(flow, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    padded_still = np.pad(still, pad, mode="constant", constant_values=True)
    best, best_error = flow.copy(), np.full((height, width), np.inf, np.float32)
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            candidate = padded_flow[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            error = _colour_error(other, frame, np.ascontiguousarray(candidate))
            error[padded_still[pad + dy : pad + dy + height, pad + dx : pad + dx + width]] = np.inf
            better = mend & (error < best_error)
            best[better], best_error[better] = candidate[better], error[better]
    return np.where((mend & (best_error <= tolerance))[..., None], best, flow)


def extend_moving(flow: np.ndarray, still: np.ndarray) -> np.ndarray:
    """`flow` with each still pixel's vector replaced by its nearest moving pixel's: the field to sample
    a moving point's flow from between pixels, so a point on a moving object's edge does not take a share
    of the still background's zero (and fall behind onto it)."""
    if not still.any() or still.all():
        return flow
    _, nearest = cv2.distanceTransformWithLabels(still.astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    moving = ~still
    sources = np.zeros(int(nearest.max()) + 1, np.int64)  # label of each moving pixel -> its flat index
    sources[nearest[moving]] = np.flatnonzero(moving)
    return flow.reshape(-1, 2)[sources[nearest]].reshape(flow.shape)


RIM = 3  # px of a still background beside what moves, where an edited keyframe's object bleeds into it


def rim(still: np.ndarray, width: int = RIM) -> np.ndarray:
    """(H, W) bool: the pixels of `still` within `width` px of anything not in it. Beside a moving object
    an edited keyframe's object bleeds a little into the background: held still after the object has
    moved on, that bleed would stay behind as a ghost of its outline, so the rim keeps its own flow."""
    if not still.any() or still.all():
        return np.zeros_like(still)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return still & cv2.dilate((~still).astype(np.uint8), kernel).astype(bool)
