"""The one check of frame arrays: (N, H, W, 3) uint8 RGB, the format every module passes frames in."""

from __future__ import annotations

import numpy as np


def check_frames(frames: np.ndarray, name: str = "frames", minimum: int = 1) -> np.ndarray:
    """`frames` as an ndarray if it is an (N, H, W, 3) uint8 array with N >= `minimum`; ValueError naming `name` if not."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < minimum:
        least = f" with N >= {minimum}" if minimum > 0 else ""
        raise ValueError(f"{name} must be an (N, H, W, 3) uint8 array{least}, got {frames.shape} {frames.dtype}")
    return frames
