"""Mask source `video`: a mask video with the clip's own frames (white = inside), read with the clip's selection."""

from __future__ import annotations

import numpy as np

from ..config import FrameSelection
from ..control.extractors import conditions_from_video
from ..errors import ConfigError, VideoError
from .options import parse_mask_file
from .registry import MaskInputs, MaskSource, register_mask_source

THRESHOLD = 127  # grey level above which a mask pixel is inside


def binary(images: np.ndarray) -> np.ndarray:
    """(..., H, W) bool from RGB or grey mask images: inside where the grey level is above THRESHOLD."""
    images = np.asarray(images)
    grey = images.mean(-1) if images.ndim >= 3 and images.shape[-1] in (3, 4) else images
    return grey > THRESHOLD


def video_masks(inputs: MaskInputs) -> np.ndarray:
    """The mask video's frames for the clip's selection, at the clip's size."""
    frames = inputs.frames
    path, _ = parse_mask_file(inputs.config.mask)
    try:
        images = conditions_from_video(path, len(frames), frames.shape[2], frames.shape[1], inputs.selection or FrameSelection())
    except VideoError as exc:
        raise ConfigError(f"mask {str(exc).replace('condition video', 'video')}") from None
    return binary(images)


register_mask_source(MaskSource("video", video_masks, help="a mask video with the clip's frames"))
