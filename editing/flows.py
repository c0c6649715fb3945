"""Optical flow of a source clip: DIS flow both ways between consecutive frames, with validity masks.

Flow convention (for the pair t-1 -> t, stored at index t-1): the backward flow b_t gives, for each
pixel x of frame t, where it came from in frame t-1, so frame_t(x) ~ frame_{t-1}(x + b_t(x)) and
`editing.temporal.warp(frame_{t-1}, b_t)` lines frame t-1 up with frame t. The forward flow f_t is the
same for the pixels of frame t-1. Vectors are (dx, dy) in pixels of the field's own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import require
from .frames import check_frames


@dataclass(frozen=True, eq=False)
class Flows:
    """Optical flow between consecutive frames of a clip; index i holds the pair (i, i + 1)."""

    backward: np.ndarray  # (N-1, H, W, 2) float32: frame i+1 at x came from frame i at x + backward[i](x)
    forward: np.ndarray  # (N-1, H, W, 2) float32: frame i at x moves to frame i+1 at x + forward[i](x)
    valid: np.ndarray  # (N-1, H, W) bool: pixels of frame i+1 whose backward flow is trustworthy

    def __post_init__(self):
        pairs, height, width = self.valid.shape
        expected = (pairs, height, width, 2)
        if self.backward.shape != expected or self.forward.shape != expected:
            raise ValueError(
                f"flow fields must be {expected} to match the mask, got {self.backward.shape} and {self.forward.shape}"
            )

    @property
    def num_frames(self) -> int:
        return int(self.valid.shape[0]) + 1

    @property
    def height(self) -> int:
        return int(self.valid.shape[1])

    @property
    def width(self) -> int:
        return int(self.valid.shape[2])

    def resized(self, height: int, width: int, min_valid: float = 0.5) -> Flows:
        """The same flows at another resolution; a resized pixel is valid when >= `min_valid` of it was."""
        if (height, width) == (self.height, self.width):
            return self
        share = _resize_fields(self.valid.astype(np.float32)[..., None], height, width)[..., 0]
        return Flows(
            resize_flow(self.backward, height, width),
            resize_flow(self.forward, height, width),
            share >= min_valid - 1e-6,
        )


@dataclass(frozen=True)
class ClipFlows:
    """Optical flow of each consecutive pair, both ways, each with its own validity mask."""

    backward: np.ndarray  # (N-1, H, W, 2): frame i+1 at x came from frame i at x + backward[i](x)
    forward: np.ndarray  # (N-1, H, W, 2): frame i at x moves to frame i+1 at x + forward[i](x)
    backward_valid: np.ndarray  # (N-1, H, W) bool, pixels of frame i+1
    forward_valid: np.ndarray  # (N-1, H, W) bool, pixels of frame i
    still: np.ndarray | None = None  # (N, H, W) bool: each frame's still background (editing.still), its flow held at zero
    rim: np.ndarray | None = None  # (N, H, W) bool: the still background's rim beside what moves, its own flow kept


def _resize_fields(fields: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (N, H, W, C) float fields: area average when shrinking, bilinear when enlarging."""
    shrinking = height * width < fields.shape[1] * fields.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = [cv2.resize(item, (width, height), interpolation=interpolation) for item in fields]
    return np.stack([item.reshape(height, width, fields.shape[-1]) for item in resized])


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flow field (H, W, 2) or (N, H, W, 2) resampled to (height, width), its vectors scaled to match."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim not in (3, 4) or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (H, W, 2) or (N, H, W, 2), got {flow.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"flow size must be positive, got {height}x{width}")
    fields = flow[None] if flow.ndim == 3 else flow
    source_height, source_width = fields.shape[1:3]
    resized = _resize_fields(fields, height, width)
    # A displacement of d pixels at the source size is d * (new size / old size) pixels at the new size.
    resized = resized * np.array([width / source_width, height / source_height], dtype=np.float32)
    return resized[0] if flow.ndim == 3 else resized


def landing_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each pixel's flow lands (columns, rows) and whether that lies inside the frame."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    return map_x, map_y, inside


MATCH_LEVELS = 8.0  # a pixel failing the forward-backward check is still valid where its source colour and the one its flow points at differ by at most this (mean of RGB, 8-bit)
SAMPLE_ROW = 4096  # points per row of the map handed to cv2.remap (it takes maps under 32767 wide)


def sample_points(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, C) float colours (or vectors) of `image` at points (x, y), bilinear, edges repeated. The points
    go to OpenCV as rows of SAMPLE_ROW, so any number of them can be sampled."""
    x, y = np.asarray(x, np.float32).ravel(), np.asarray(y, np.float32).ravel()
    count = len(x)
    if count == 0:
        return np.zeros((0, image.shape[2] if image.ndim == 3 else 1), np.float32)
    width = min(count, SAMPLE_ROW)
    rows = -(-count // width)
    pad = rows * width - count
    map_x, map_y = np.pad(x, (0, pad)).reshape(rows, width), np.pad(y, (0, pad)).reshape(rows, width)
    points = cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return points.reshape(rows * width, -1)[:count]


def motion_at(coefficients: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 2) flow of an affine motion ((3, 2) coefficients: flow = [x, y, 1] @ coefficients) at points (x, y)."""
    return np.stack([x, y, np.ones_like(x)], -1).astype(np.float64) @ coefficients


def nearest_in(region: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether the nearest pixel of points (x, y) (clipped to the frame) lies in `region`."""
    height, width = region.shape
    return region[np.clip(np.rint(y), 0, height - 1).astype(int), np.clip(np.rint(x), 0, width - 1).astype(int)]


def lands_in(region: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether points (x, y) lie inside the frame (as `landing_points` bounds it) on a pixel of `region`."""
    height, width = region.shape
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    return inside & nearest_in(region, x, y)


def consistent(
    backward: np.ndarray,
    forward: np.ndarray,
    occlusion_rel: float = 0.01,
    occlusion_abs: float = 0.5,
) -> np.ndarray:
    """Pixels of frame t whose backward flow, followed back by the forward flow, returns to where it
    started (swap the arguments for the pixels of frame t-1 and their forward flow)."""
    map_x, map_y, inside = landing_points(backward)
    forward_there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Forward-backward check (Sundaram, Brox and Keutzer 2010; Ruder et al. 2016, eq. 2):
    # |b + f(x + b)|^2 < rel (|b|^2 + |f(x + b)|^2) + abs.
    round_trip = np.square(backward + forward_there).sum(-1)
    magnitude = np.square(backward).sum(-1) + np.square(forward_there).sum(-1)
    consistent = round_trip < occlusion_rel * magnitude + occlusion_abs
    # A pixel that came from outside frame t-1 has nothing to be warped from.
    return consistent & inside


def _colour_error(
    previous: np.ndarray, current: np.ndarray, backward: np.ndarray, landing: np.ndarray | None = None
) -> np.ndarray:
    """Mean absolute RGB difference between frame t and frame t-1 warped onto it by the backward flow
    (`landing`: the flow's `landing_points`, where the caller has it already)."""
    map_x, map_y, _ = landing_points(backward) if landing is None else landing
    warped = cv2.remap(previous.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.abs(warped - current.astype(np.float32)).mean(-1)


def colour_match(source: np.ndarray, target: np.ndarray, flow: np.ndarray, tolerance: float) -> np.ndarray:
    """(H, W) bool, pixels of `target`: its flow into `source` stays inside the frame and the colour found
    there differs from the pixel's own by at most `tolerance` (mean absolute RGB, 8-bit)."""
    landing = landing_points(flow)
    return landing[2] & (_colour_error(source, target, flow, landing) <= tolerance)


FLOW_MIN_SIDE = 256  # DIS runs on frames whose short side is at least this: smaller clips are upscaled for the flow


def flow_upscale(height: int, width: int) -> int:
    """The integer factor small frames are enlarged by before DIS flow: its 8-pixel patches on 4-pixel
    strides see too little of a 64 px frame (on the shapes benchmark, propagating the source's own frame 0
    along the chained flow misses the true motion by 16.2 levels on striped clips at 64 px, 9.4 upscaled
    4x; 4.2 against 2.7 on plain ones). Frames of FLOW_MIN_SIDE px and more are used as they are."""
    return max(1, math.ceil(FLOW_MIN_SIDE / max(1, min(height, width))))


ENLARGED_PATCH_STRIDE = 1  # DIS patch stride on enlarged small frames (the medium preset's is 3)
ENLARGED_SMOOTHNESS = 10.0  # DIS variational refinement alpha on enlarged small frames (the preset's is 20)


def dis_flow(enlarged: bool) -> cv2.DISOpticalFlow:
    """OpenCV's DIS at its medium preset; on enlarged small frames, a patch at every pixel and half of the
    preset's smoothness, so the flow keeps to the motion boundaries of objects a few dozen pixels wide. On
    the shapes benchmark (16 clips, each edit's ideal frame 0 propagated along the chained flow, true-motion
    warp error) this took the mean from 4.21 to 3.81 (textured clips 10.1 to 8.47, occlusion 4.38 to 3.71,
    plain 3.42 to 3.49). A quarter of the smoothness scored 3.74 but let a few border pixels of a pan keep a
    path to content outside the frame. At 512 px the dense setting would cost 0.11 s a pair against 0.027 s,
    so frames large enough to need no enlarging keep the preset."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if enlarged:
        dis.setPatchStride(ENLARGED_PATCH_STRIDE)
        dis.setVariationalRefinementAlpha(ENLARGED_SMOOTHNESS)
    return dis


def flow_channels(frame: np.ndarray, colour: bool) -> list[np.ndarray]:
    """The single-channel images DIS runs on: grey, and with `colour` also Lab's two chroma channels."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if not colour:
        return [grey]
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
    return [grey, np.ascontiguousarray(lab[..., 1]), np.ascontiguousarray(lab[..., 2])]


def pick_per_pixel(candidates: list[np.ndarray], frame: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Of candidate flows u (frame(x) ~ other(x + u(x))), each pixel's whose warp of `other` explains
    `frame` best: the least RGB error, averaged over the pixel's 3 x 3 neighbourhood so one noisy match
    does not win (the fusion of flow candidates by their data cost)."""
    if len(candidates) == 1:
        return candidates[0]
    errors = np.stack([cv2.blur(_colour_error(other, frame, flow), (3, 3)) for flow in candidates])
    return np.take_along_axis(np.stack(candidates), errors.argmin(0)[None, ..., None], 0)[0]


def source_flows(
    frames: np.ndarray,
    occlusion_rel: float = 0.01,
    occlusion_abs: float = 0.5,
    max_color_error: float | None = None,
    colour_candidates: bool = False,
) -> Flows:
    """DIS optical flow (Kroeger et al. 2016) of each consecutive pair of RGB frames, both ways, with validity masks.

    A pixel is valid when the forward-backward check passes with the given relative and absolute
    thresholds and, if `max_color_error` (0..255) is set, when warping frame t-1 onto it changes the
    colour by at most that much. With `colour_candidates` DIS also runs on the Lab chroma channels and
    each pixel takes the candidate that explains its colour best (`pick_per_pixel`): grey alone loses
    objects whose grey level is close to what they move over (a green circle on red and pink stripes).
    """
    frames = check_frames(frames, minimum=2)
    require(occlusion_rel >= 0 and math.isfinite(occlusion_rel), f"occlusion_rel must be >= 0, got {occlusion_rel}")
    require(occlusion_abs >= 0 and math.isfinite(occlusion_abs), f"occlusion_abs must be >= 0, got {occlusion_abs}")
    require(max_color_error is None or max_color_error >= 0, f"max_color_error must be >= 0, got {max_color_error}")
    height, width = frames.shape[1:3]
    scale = flow_upscale(height, width)
    dis = dis_flow(enlarged=scale > 1)
    channels = [flow_channels(frame, colour_candidates) for frame in frames]
    if scale > 1:
        channels = [
            [cv2.resize(c, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC) for c in cs] for cs in channels
        ]

    def calc(first: int, second: int) -> np.ndarray:
        """DIS flow u with I_first(x) ~ I_second(x + u(x)), at the frames' own size and in their pixels."""
        candidates = []
        for one, two in zip(channels[first], channels[second]):
            flow = dis.calc(one, two, None)
            candidates.append(flow if scale == 1 else resize_flow(flow, height, width))
        return pick_per_pixel(candidates, frames[first], frames[second])

    backward, forward, valid = [], [], []
    for t in range(1, len(frames)):
        back, fore = calc(t, t - 1), calc(t - 1, t)
        mask = consistent(back, fore, occlusion_rel, occlusion_abs)
        if max_color_error is not None:
            mask &= _colour_error(frames[t - 1], frames[t], back) <= max_color_error
        backward.append(back)
        forward.append(fore)
        valid.append(mask)
    return Flows(np.stack(backward), np.stack(forward), np.stack(valid))
