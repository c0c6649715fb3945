"""A region edit's flows: the region's pixels follow the region's own motion.

A region edit knows its mask in every frame (editing.region). DIS smooths a neighbour's motion across the
mask's edge and over its flat inside, so propagation along the plain flow drags the region's edge with
whatever passes beside it. `within_region` gives region pixels the region's fitted motion where their own
flow does not explain their colour clearly better (editing.keyframes.propagate applies it when the edit
holds a region).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .flows import MATCH_LEVELS, landing_points, lands_in, motion_at, sample_points

if TYPE_CHECKING:
    from .flows import ClipFlows

REGION_FIT_MIN = 6  # region pixels whose flow stays in the region needed to fit the region's own motion
REGION_EDGE = 40.0  # Sobel magnitude of the grey frame from which a pixel is on an edge or texture
REGION_INLIER = 1.0  # pixels a region pixel's flow may differ from the region's fitted motion to count in the fit
REGION_MARGIN = 4.0  # mean RGB error (8-bit) by which a region pixel's own flow must beat the region's motion


def _edges(frame: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels on an edge or texture (Sobel magnitude of the grey frame at least REGION_EDGE)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) >= REGION_EDGE


def _steered(
    flow: np.ndarray,
    valid: np.ndarray,
    here: np.ndarray,
    there: np.ndarray,
    frame: np.ndarray,
    other: np.ndarray,
    edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """`flow` and `valid` from `frame` to `other` with the region's pixels (`here`) given the region's own
    motion (an affine fit to the region pixels on `frame`'s `edges` whose flow stays in the region of
    `other`, `there`, and agrees with their median motion within REGION_INLIER, refitted on what agrees
    with the fit), unless
    their own flow stays in the region and explains their colour better by REGION_MARGIN. Along an edge or
    on flat colour both explain it alike (the aperture problem), and there DIS's flow, smoothed across the
    mask's edge, carries a neighbour's motion. A pixel given the region's motion is valid where it lands in
    the region on a colour within MATCH_LEVELS: what the region uncovers from behind something lands on that
    something, and is unseen."""
    map_x, map_y, _ = landing_points(flow)
    lands = lands_in(there, map_x, map_y)
    stays = here & lands
    if stays.sum() < REGION_FIT_MIN:
        return flow, valid
    if (stays & edges).sum() >= REGION_FIT_MIN:  # on flat colour DIS's flow is an interpolation; edges observe it
        stays &= edges
    ys, xs = np.nonzero(stays)
    design = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64)
    values = flow[stays].astype(np.float64)
    coefficients = np.zeros((3, 2))
    coefficients[2] = np.median(values, axis=0)  # the region's typical motion, then affine on what agrees with it
    for _ in range(3):
        keep = np.abs(design @ coefficients - values).max(-1) <= REGION_INLIER
        if keep.sum() < REGION_FIT_MIN:
            break
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
    hy, hx = np.nonzero(here)
    motion = motion_at(coefficients, hx, hy).astype(np.float32)
    fx, fy = (hx + motion[:, 0]).astype(np.float32), (hy + motion[:, 1]).astype(np.float32)
    source = frame[hy, hx].astype(np.float32)
    region_error = np.abs(sample_points(other, fx, fy) - source).mean(-1)
    own_error = np.abs(sample_points(other, map_x[hy, hx], map_y[hy, hx]) - source).mean(-1)
    take = ~(lands[hy, hx] & (own_error + REGION_MARGIN < region_error))
    landed = lands_in(there, fx, fy)
    flow, valid = flow.copy(), valid.copy()
    flow[hy[take], hx[take]] = motion[take]
    valid[hy[take], hx[take]] = (landed & (region_error <= MATCH_LEVELS))[take]
    return flow, valid


def within_region(flows: ClipFlows, region: np.ndarray, frames: np.ndarray) -> ClipFlows:
    """The flows of a region edit, whose (N, H, W) bool `region` (the mask) is known in every frame: DIS
    smooths a neighbour's motion across the mask's edge, so a region pixel whose flow leaves the region
    takes the region's own motion (`_steered`), and what the region uncovers (its motion lands on
    something else) is unseen. Outside the region the output is the source's, and the flow is kept."""
    pairs = range(len(flows.backward))
    edges = [_edges(frame) for frame in frames]  # each frame's, once for both directions
    backward = [
        _steered(flows.backward[t], flows.backward_valid[t], region[t + 1], region[t], frames[t + 1], frames[t], edges[t + 1])
        for t in pairs
    ]
    forward = [
        _steered(flows.forward[t], flows.forward_valid[t], region[t], region[t + 1], frames[t], frames[t + 1], edges[t])
        for t in pairs
    ]
    return dataclasses.replace(
        flows,
        backward=np.stack([f for f, _ in backward]),
        backward_valid=np.stack([v for _, v in backward]),
        forward=np.stack([f for f, _ in forward]),
        forward_valid=np.stack([v for _, v in forward]),
    )
