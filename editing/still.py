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


def still_masks(frames: np.ndarray, backward: np.ndarray, forward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, H, W) bool stacks: each frame's still background (the camera judged by the frame's flows
    both ways) less its rim beside what moves, and that rim (`rim`), which keeps its own flow and so
    moves with the object."""
    count = len(frames)
    held, rims = [], []
    for t in range(count):
        flows = [*([backward[t - 1]] if t > 0 else []), *([forward[t]] if t < count - 1 else [])]
        still = still_background(frames[t], flows)
        moving = ~still & (np.max([np.hypot(f[..., 0], f[..., 1]) for f in flows], axis=0) >= CAMERA_STILL)
        beside = rim(~moving) & still
        held.append(still & ~beside)
        rims.append(beside)
    return np.stack(held), np.stack(rims)


def hold_still(backward: np.ndarray, forward: np.ndarray, still: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flows (N-1, H, W, 2) with zero vectors on each frame's still background: the backward flow of
    pair t on frame t+1's, the forward flow on frame t's."""
    backward, forward = backward.copy(), forward.copy()
    backward[still[1:]] = 0.0
    forward[still[:-1]] = 0.0
    return backward, forward


REPEAT_SHIFT = 6  # px: the longest shift `repeat_shift` tries
REPEAT_BAND = 8  # px of known pixels around the hole that a shift must explain
REPEAT_LEVELS = 6.0  # mean RGB error (8-bit) under which a shift explains them


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`image` read at (x + dx, y + dy), edges repeated."""
    height, width = image.shape[:2]
    rows = np.clip(np.arange(height) + dy, 0, height - 1)
    columns = np.clip(np.arange(width) + dx, 0, width - 1)
    return image[rows][:, columns]


def _reach(have: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(H, W) bool: pixels whose (x + dx, y + dy) lies inside the image and in `have`."""
    height, width = have.shape
    inside = np.zeros_like(have)
    inside[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = True
    return inside & _shifted(have, dx, dy)


def repeat_shift(frame: np.ndarray, fill: np.ndarray, known: np.ndarray) -> tuple[int, int] | None:
    """The shortest shift (dx, dy), at most REPEAT_SHIFT px, under which the `known` pixels within
    REPEAT_BAND px of the `fill` pixels repeat (mean RGB error under REPEAT_LEVELS): stripes repeat along
    themselves, a plain colour under any shift; None where none does (an irregular texture)."""
    kernel = np.ones((2 * REPEAT_BAND + 1, 2 * REPEAT_BAND + 1), np.uint8)
    have = known & ~fill
    band = have & cv2.dilate(fill.astype(np.uint8), kernel).astype(bool)
    image = frame.astype(np.float32)
    best, best_error = None, REPEAT_LEVELS
    shifts = [(dx, dy) for dx in range(-REPEAT_SHIFT, REPEAT_SHIFT + 1) for dy in range(-REPEAT_SHIFT, REPEAT_SHIFT + 1)]
    for dx, dy in sorted(shifts, key=lambda d: (d[0] ** 2 + d[1] ** 2, d))[1:]:  # (0, 0) first, left out
        pairs = band & _reach(have, dx, dy)
        if pairs.sum() < 0.5 * band.sum() or not pairs.any():
            continue
        error = float(np.abs(image - _shifted(image, dx, dy)).mean(-1)[pairs].mean())
        if error < best_error - 0.5:  # a longer shift must explain them clearly better than a shorter one
            best, best_error = (dx, dy), error
    return best


def _copy_along(frame: np.ndarray, todo: np.ndarray, have: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Fill `todo` pixels (in place) from `have` pixels one shift away, either way, layer by layer; returns
    what is left unfilled."""
    directions = (shift, (-shift[0], -shift[1]))
    while todo.any():
        progressed = False
        for dx, dy in directions:
            take = todo & _reach(have, dx, dy)
            if take.any():
                frame[take] = _shifted(frame, dx, dy)[take]
                have, todo, progressed = have | take, todo & ~take, True
        if not progressed:
            break
    return todo


def fill_still(frame: np.ndarray, fill: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`frame` (H, W, 3 uint8) with its `fill` pixels made from the `known` pixels only (a still region's
    seen pixels: not the object beside them, whose colour would bleed in): copied along the shift under
    which the background around them repeats (`repeat_shift`: stripes carry on through the hole), and what
    that leaves, or all of it where nothing repeats, inpainted (Telea 2004). Works in the box around the
    hole."""
    have = known & ~fill
    if not fill.any() or not have.any():
        return frame
    rows, columns = np.nonzero(fill)
    margin = REPEAT_BAND + REPEAT_SHIFT
    box = (
        slice(max(0, rows.min() - margin), rows.max() + margin + 1),
        slice(max(0, columns.min() - margin), columns.max() + margin + 1),
    )
    frame = frame.copy()
    crop, todo, have = frame[box], fill[box].copy(), have[box]
    shift = repeat_shift(crop, todo, have)
    if shift is not None:
        todo = _copy_along(crop, todo, have, shift)
    if todo.any():
        unknown = (~(have | (fill[box] & ~todo)) | todo).astype(np.uint8)
        painted = cv2.inpaint(np.ascontiguousarray(crop), unknown, 3, cv2.INPAINT_TELEA)
        crop[todo] = painted[todo]
    return frame


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
    return flow.reshape(-1, 2)[nearest_of(~still)].reshape(flow.shape)


def nearest_of(pixels: np.ndarray) -> np.ndarray:
    """(H, W) int: for each pixel, the flat index of its nearest `pixels` pixel (some must be set)."""
    _, nearest = cv2.distanceTransformWithLabels((~pixels).astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    sources = np.zeros(int(nearest.max()) + 1, np.int64)  # label of each `pixels` pixel -> its flat index
    sources[nearest[pixels]] = np.flatnonzero(pixels)
    return sources[nearest]


RIM = 3  # px of a still background beside what moves, where an edited keyframe's object bleeds into it


def rim(still: np.ndarray, width: int = RIM) -> np.ndarray:
    """(H, W) bool: the pixels of `still` within `width` px of anything not in it. Beside a moving object
    an edited keyframe's object bleeds a little into the background: held still after the object has
    moved on, that bleed would stay behind as a ghost of its outline, so the rim keeps its own flow."""
    if not still.any() or still.all():
        return np.zeros_like(still)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return still & cv2.dilate((~still).astype(np.uint8), kernel).astype(bool)


BLEED_SHARE = 0.5  # a rim pixel this far (or more) from the background's colour towards the object's is the object's bleed


def bleed(edited: np.ndarray, still: np.ndarray, rim_pixels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the `rim_pixels` of an edited frame that show what moves rather than the background:
    each lies at least BLEED_SHARE of the way from the background's colour (inpainted over the rim from the
    `still` pixels, Telea 2004) to its nearest moving pixel's (off `still` and the rim), measured as mean
    RGB distances to each."""
    moving = ~(still | rim_pixels)
    if not rim_pixels.any() or not moving.any() or not still.any():
        return rim_pixels.copy()
    image = np.ascontiguousarray(edited)
    background = cv2.inpaint(image, (~still).astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32)
    near_object = image.reshape(-1, 3)[nearest_of(moving)].reshape(image.shape).astype(np.float32)
    pixels = image.astype(np.float32)
    to_object = np.abs(pixels - near_object).mean(-1)
    to_background = np.abs(pixels - background).mean(-1)
    return rim_pixels & (to_background > BLEED_SHARE * (to_background + to_object))


TEXTURED_SHARE = 0.1  # share of a still background's pixels that must be textured in an edited frame for it to count as textured


def textured(edited: np.ndarray, still: np.ndarray) -> bool:
    """Whether the edited frame's still background is textured (an edit added stripes or grain to it):
    at least TEXTURED_SHARE of its `still` pixels are not flat. On a background the edit left plain,
    holding the rim still or moving it shows the same colour but for the object's bleed."""
    return bool(still.any()) and float((~flat_pixels(np.ascontiguousarray(edited)))[still].mean()) >= TEXTURED_SHARE
