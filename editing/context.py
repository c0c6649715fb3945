"""What the stages of one edit share: the request's parts, and the edit context built once per pass.

`EditParts` is what the core needs of a request; `EditContext` adds what the core derives once (the
model, the frame plan, the source's cache identity, the sampler and its timesteps, progress and timer)
so each stage takes the context and its own few arguments.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .attention.control import AttentionControl
from .cache import TensorCache
from .config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection
from .models import Backbone
from .sampling import FramePlan

if TYPE_CHECKING:
    from .held import HeldRegion
    from .masks.options import MaskConfig
    from .requests import EditRequest

STAGES = (
    "decode",
    "load_model",
    "encode_text",
    "conditions",
    "invert",
    "denoise",
    "decode_latents",
    "propagate",
    "refine",
    "encode_video",
)

# progress(stage, done, total); raising Cancelled from it stops the edit.
ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    return None


def prefixed(progress: ProgressFn | None, prefix: str) -> ProgressFn:
    """`progress` with each stage named `prefix: stage` (nothing when `progress` is None)."""
    if progress is None:
        return no_progress
    return lambda stage, done, total: progress(f"{prefix}: {stage}", done, total)


class StageTimer:
    """Wall-clock seconds per named stage (synchronising the GPU so its time is not misattributed)."""

    def __init__(self, device: torch.device | None = None):
        self.seconds = {name: 0.0 for name in STAGES}
        self.device = device

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin


@dataclass(frozen=True)
class SourceKey:
    """What identifies the frames being edited, for cache keys: their content and size."""

    content: str
    indices: tuple[int, ...]
    width: int
    height: int


def frames_key(frames: np.ndarray) -> SourceKey:
    """The cache identity of an (N, H, W, 3) uint8 frame array: SHA-256 of its bytes and shape."""
    frames = np.ascontiguousarray(frames)
    digest = hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()
    return SourceKey(digest, tuple(range(len(frames))), int(frames.shape[2]), int(frames.shape[1]))


@dataclass(frozen=True)
class KeyedFrames:
    """(N, H, W, 3) uint8 frames with their cache identity."""

    frames: np.ndarray
    key: SourceKey


@dataclass(frozen=True)
class EditParts:
    """The parts of a request the core needs (the clip's file, output and model spec stay outside)."""

    edit: EditConfig
    engine: EngineConfig = EngineConfig()
    attention_edit: AttentionEditConfig | None = None
    tuned: str | None = None  # one-shot tuned weights (editing.tuning)
    selection: FrameSelection = FrameSelection()  # how the frames were selected (condition videos follow it)
    decode_frames: tuple[int, ...] | None = None  # decode only these frames (a preview's); None = all
    masking: MaskConfig | None = None  # a mask and what to do in it (region edit, removal); None = none
    held: HeldRegion | None = None  # the region an edit may change, the rest held to the source (editing.region)

    @classmethod
    def of(cls, request: EditRequest) -> EditParts:
        masking = request.masking if request.masking.given else None
        return cls(
            request.edit, request.engine, request.attention_edit, request.tuned, request.selection, request.decode_frames, masking
        )


@dataclass(frozen=True)
class EditContext:
    """What every stage of one pass of the core reads, built once per pass."""

    parts: EditParts
    backbone: Backbone
    plan: FramePlan  # how the frames go through the UNet
    source: SourceKey  # the cache identity of the edited frames (condition maps, null-text embeddings)
    cache_root: str | Path
    scheduler: Any  # the request's sampler (a diffusers scheduler), set to `timesteps`
    timesteps: torch.Tensor
    progress: ProgressFn = no_progress
    timer: StageTimer | None = None
    tuned: AttentionControl | None = None  # the one-shot tuned model's control (editing.attention.tuned)

    def cache(self, kind: str) -> TensorCache:
        """The tensor cache of `kind` ("inversions", "conditions", "null-text") under the request's cache root."""
        return TensorCache(self.cache_root, kind, self.parts.engine.cache_bytes)
