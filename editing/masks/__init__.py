"""Masks over a clip, from the sources a user has, and the registry they are chosen from.

Every source is one file registered here with `register_mask_source`: `video` (a mask video,
editing.masks.video), `flow` and `sam2` (one frame's mask tracked through the clip along the source's
optical flow, editing.masks.flow_track, or by SAM 2's video model, editing.masks.sam2) and `words`
(the model's cross-attention of words on the source, editing.masks.words). `MaskConfig.source` names the
one a request reads; `clip_masks` makes the (frames, H, W) mask and `shaped` grows and feathers it.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .options import MaskConfig
from .registry import MASK_SOURCES, MaskInputs, MaskSource, register_mask_source
from .shape import feathered, grown, latent_mask, overlay_frames


def _load_builtin() -> None:
    # here, not at the top: the sources load video I/O and the denoising loop, which --help does not need
    from . import flow_track, sam2, video, words  # noqa: F401 (each registers itself)


def mask_source(name: str) -> MaskSource:
    """The registered mask source `name`."""
    _load_builtin()
    if name not in MASK_SOURCES:
        raise ConfigError(f"mask source must be one of {', '.join(sorted(MASK_SOURCES))}; got {name!r}")
    return MASK_SOURCES[name]


def mask_source_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(MASK_SOURCES))


def clip_masks(inputs: MaskInputs) -> np.ndarray:
    """(N, H, W) bool mask of the clip from the config's source (before growing and feathering)."""
    source = mask_source(inputs.config.source)
    if "backbone" in source.needs and inputs.backbone is None:
        raise ConfigError(f"mask source {source.name} needs the model")
    masks = np.asarray(source.make(inputs)).astype(bool)
    expected = inputs.frames.shape[:3]
    if masks.shape != expected:
        raise ConfigError(f"mask from {source.name} is {masks.shape} but the clip is {expected}")
    return masks


__all__ = [
    "MASK_SOURCES",
    "MaskConfig",
    "MaskInputs",
    "MaskSource",
    "clip_masks",
    "feathered",
    "grown",
    "latent_mask",
    "mask_source",
    "mask_source_names",
    "overlay_frames",
    "register_mask_source",
]
