"""The mask-source registry: what a source reads (`MaskInputs`), what it declares (`MaskSource`) and
`register_mask_source`; each source module imports this, and editing.masks loads them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

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
