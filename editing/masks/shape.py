"""Shaping masks: grow, feather, shrink to latent size, and the overlay clip shown before an edit."""

from __future__ import annotations

import cv2
import numpy as np

OVERLAY_COLOUR = np.array([255, 40, 200], np.float32)  # magenta: rare in real footage and in the shapes world
OVERLAY_ALPHA = 0.5


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def grown(masks: np.ndarray, pixels: int) -> np.ndarray:
    """(N, H, W) bool masks dilated by a disc of `pixels` radius."""
    masks = np.asarray(masks, bool)
    if pixels <= 0:
        return masks.copy()
    disc = _disc(pixels)
    return np.stack([cv2.dilate(m.astype(np.uint8), disc) > 0 for m in masks])


def feathered(masks: np.ndarray, pixels: int) -> np.ndarray:
    """(N, H, W) float32 weights: 1 on the mask, falling linearly to 0 at `pixels` outside it, 0 beyond
    (exactly: a pixel farther than `pixels` from the mask has weight 0)."""
    masks = np.asarray(masks, bool)
    if pixels <= 0:
        return masks.astype(np.float32)
    out = []
    for m in masks:
        if not m.any():
            out.append(np.zeros(m.shape, np.float32))
            continue
        distance = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 5)
        out.append(np.clip(1.0 - distance / (pixels + 1), 0.0, 1.0).astype(np.float32))
    return np.stack(out)


def latent_mask(weights: np.ndarray, scale: int) -> np.ndarray:
    """(N, h, w) bool at latent size (the frames' size / `scale`): a latent pixel is inside where any image
    pixel it covers has weight above 0 (so the latent region covers the whole feathered region)."""
    weights = np.asarray(weights)
    n, height, width = weights.shape
    h, w = height // scale, width // scale
    return (weights[:, : h * scale, : w * scale] > 0).reshape(n, h, scale, w, scale).any(axis=(2, 4))


def composite(source: np.ndarray, edited: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Edited frames inside, source outside, mixed by the weights; where a weight is 0 the source's pixel
    exactly, where it is 1 the edit's exactly."""
    w = np.asarray(weights, np.float32)[..., None]
    mixed = np.rint(source.astype(np.float32) * (1 - w) + edited.astype(np.float32) * w).clip(0, 255).astype(np.uint8)
    mixed = np.where(w <= 0, source, mixed)
    return np.where(w >= 1, edited, mixed)


def overlay_frames(frames: np.ndarray, masks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The clip with the mask tinted over it and its outline drawn: what a user checks before editing."""
    frames = np.asarray(frames)
    tint = np.asarray(masks, np.float32) if weights is None else np.asarray(weights, np.float32)
    alpha = (OVERLAY_ALPHA * tint)[..., None]
    shown = frames.astype(np.float32) * (1 - alpha) + OVERLAY_COLOUR * alpha
    out = np.rint(shown).clip(0, 255).astype(np.uint8)
    for frame, mask in zip(out, np.asarray(masks, bool)):
        edge = mask & ~(cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
        frame[edge] = (255, 255, 255)
    return out
