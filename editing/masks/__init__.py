"""Masks over a clip, from the sources a user has, and the registry they are chosen from.

Every source is one file registered here with `register_mask_source`: `video` (a mask video,
editing.masks.video), `flow` and `sam2` (one frame's mask tracked through the clip along the source's
optical flow, editing.masks.flow_track, or by SAM 2's video model, editing.masks.sam2) and `words`
(the model's cross-attention of words on the source, editing.masks.words). `MaskConfig.source` names the
one a request reads; `clip_masks` makes the (frames, H, W) mask and `shaped` grows and feathers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .options import MaskConfig


@dataclass(frozen=True)
class MaskInputs:
    """What a mask source reads: the clip's frames, the mask options, the model (words) and the frame selection."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    config: MaskConfig
    backbone: object = None
    selection: object = None  # editing.config.FrameSelection the frames were read with (a mask video follows it)
    prompt: str = ""  # the edit's prompt (a words mask looks for the words there)
    describe: str = ""  # the inversion prompt, describing the source (a words mask looks there first)


@dataclass(frozen=True)
class MaskSource:
    """A registered mask source: its name, what it makes the mask with and what it needs."""

    name: str
    make: Callable[[MaskInputs], np.ndarray]  # -> (N, H, W) bool
    needs: tuple[str, ...] = ()  # "backbone": the model's own attention
    help: str = ""
    offline: bool = True  # works with no Hub access
    extra: dict = field(default_factory=dict)


MASK_SOURCES: dict[str, MaskSource] = {}


def register_mask_source(source: MaskSource) -> MaskSource:
    """Add a mask source under its name (a name may be registered once)."""
    if not source.name or not source.name.replace("-", "").isalnum():
        raise ValueError(f"mask source name must be a plain word, got {source.name!r}")
    if source.name in MASK_SOURCES and MASK_SOURCES[source.name] is not source:
        raise ValueError(f"mask source {source.name!r} is registered already")
    MASK_SOURCES[source.name] = source
    return source


def _load_builtin() -> None:
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


from .shape import feathered, grown, latent_mask, overlay_frames  # noqa: E402

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
