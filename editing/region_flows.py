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

from .flows import landing_points, sample_points

if TYPE_CHECKING:
    from .flows import ClipFlows

REGION_FIT_MIN = 6  # region pixels whose flow stays in the region needed to fit the region's own motion
REGION_EDGE = 40.0  # Sobel magnitude of the grey frame from which a pixel is on an edge or texture
REGION_INLIER = 1.0  # pixels a region pixel's flow may differ from the region's fitted motion to count in the fit
REGION_MARGIN = 4.0  # mean RGB error (8-bit) by which a region pixel's own flow must beat the region's motion
REGION_MATCH = 8.0  # mean RGB error (8-bit) within which the region's motion lands on its own colour (keyframes.MATCH_LEVELS)


def _steered(
    flow: np.ndarray, valid: np.ndarray, here: np.ndarray, there: np.ndarray, frame: np.ndarray, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`flow` and `valid` from `frame` to `other` with the region's pixels (`here`) given the region's own
    motion (an affine fit to the region pixels whose flow stays in the region of `other`, `there`, and
    agrees with their median motion within REGION_INLIER, refitted on what agrees with the fit), unless
    their own flow stays in the region and explains their colour better by REGION_MARGIN. Along an edge or on flat colour both explain it alike (the aperture problem), and there
    DIS's flow, smoothed across the mask's edge, carries a neighbour's motion. A pixel given the region's
    motion is valid where it lands in the region on a colour within REGION_MATCH: what the region uncovers
    from behind something lands on that something, and is unseen."""
    height, width = here.shape
    map_x, map_y, inside = landing_points(flow)
    rows, cols = np.clip(np.rint(map_y), 0, height - 1).astype(int), np.clip(np.rint(map_x), 0, width - 1).astype(int)
    lands = inside & there[rows, cols]
    stays = here & lands
    if stays.sum() < REGION_FIT_MIN:
        return flow, valid
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    edges = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)) >= REGION_EDGE
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
    motion = (np.stack([hx, hy, np.ones_like(hx)], -1).astype(np.float64) @ coefficients).astype(np.float32)
    fx, fy = (hx + motion[:, 0]).astype(np.float32), (hy + motion[:, 1]).astype(np.float32)
    source = frame[hy, hx].astype(np.float32)
    region_error = np.abs(sample_points(other, fx, fy) - source).mean(-1)
    own_error = np.abs(sample_points(other, map_x[hy, hx], map_y[hy, hx]) - source).mean(-1)
    take = ~(lands[hy, hx] & (own_error + REGION_MARGIN < region_error))
    landed = (fx >= -0.5) & (fx <= width - 0.5) & (fy >= -0.5) & (fy <= height - 0.5)
    landed &= there[np.clip(np.rint(fy), 0, height - 1).astype(int), np.clip(np.rint(fx), 0, width - 1).astype(int)]
    flow, valid = flow.copy(), valid.copy()
    flow[hy[take], hx[take]] = motion[take]
    valid[hy[take], hx[take]] = (landed & (region_error <= REGION_MATCH))[take]
    return flow, valid


def within_region(flows: ClipFlows, region: np.ndarray, frames: np.ndarray) -> ClipFlows:
    """The flows of a region edit, whose (N, H, W) bool `region` (the mask) is known in every frame: DIS
    smooths a neighbour's motion across the mask's edge, so a region pixel whose flow leaves the region
    takes the region's own motion (`_steered`), and what the region uncovers (its motion lands on
    something else) is unseen. Outside the region the output is the source's, and the flow is kept."""
    pairs = range(len(flows.backward))
    backward = [
        _steered(flows.backward[t], flows.backward_valid[t], region[t + 1], region[t], frames[t + 1], frames[t]) for t in pairs
    ]
    forward = [
        _steered(flows.forward[t], flows.forward_valid[t], region[t], region[t + 1], frames[t], frames[t + 1]) for t in pairs
    ]
    return dataclasses.replace(
        flows,
        backward=np.stack([f for f, _ in backward]),
        backward_valid=np.stack([v for _, v in backward]),
        forward=np.stack([f for f, _ in forward]),
        forward_valid=np.stack([v for _, v in forward]),
    )
