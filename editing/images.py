"""Still images a user supplies (an edited keyframe): read safely, and fitted to the clip's frame size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError

MAX_PIXELS = 64 * 1024 * 1024  # refused before decoding: a header may claim any size
FITS = ("refuse", "resize", "crop")


def read_image(path: str | Path, name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PNG/JPEG/WebP/BMP file; ConfigError naming `name` for anything else."""
    shown = Path(str(path)).name
    try:
        with Image.open(path) as image:
            (width, height), kind = image.size, image.format
            if width * height <= MAX_PIXELS and kind in ("PNG", "JPEG", "WEBP", "BMP"):
                return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise ConfigError(f"{name} {shown} cannot be read") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ConfigError(f"{name} {shown} is not a readable image") from None
    if width * height > MAX_PIXELS:
        raise ConfigError(f"{name} {shown} is {width}x{height} pixels, more than the {MAX_PIXELS // 2**20} megapixels allowed")
    raise ConfigError(f"{name} {shown} must be a PNG, JPEG, WebP or BMP image, got {kind or 'an unknown format'}")


def fit_image(image: np.ndarray, width: int, height: int, fit: str, name: str) -> tuple[np.ndarray, str | None]:
    """The image at width x height, and one sentence saying how it was fitted (None when it already was).

    refuse: a different size is an error; resize: scaled to the size (aspect changes if it differs);
    crop: scaled to cover the size, aspect kept, then centre-cropped.
    """
    if fit not in FITS:
        raise ConfigError(f"keyframe_fit must be one of {', '.join(FITS)}; got {fit!r}")
    have_h, have_w = image.shape[:2]
    if (have_w, have_h) == (width, height):
        return image, None
    if fit == "refuse":
        raise ConfigError(
            f"{name} is {have_w}x{have_h} but the clip's frames are {width}x{height}: give an image of that size, or choose keyframe_fit resize or crop"
        )
    if fit == "resize":
        fitted = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return fitted, f"{name} ({have_w}x{have_h}) was resized to the clip's {width}x{height}"
    scale = max(width / have_w, height / have_h)
    cover_w, cover_h = max(width, round(have_w * scale)), max(height, round(have_h * scale))
    covered = cv2.resize(image, (cover_w, cover_h), interpolation=cv2.INTER_AREA)
    left, top = (cover_w - width) // 2, (cover_h - height) // 2
    fitted = np.ascontiguousarray(covered[top : top + height, left : left + width])
    return fitted, f"{name} ({have_w}x{have_h}) was scaled and centre-cropped to the clip's {width}x{height}"
