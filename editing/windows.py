"""Context windows for clips of any length: `--context LENGTH[:OVERLAP[:SCHEDULE]]`.

Each denoising step runs the UNet on overlapping windows of LENGTH frames and blends each frame's noise
predictions with a pyramid weight (FreeNoise, Qiu et al. 2023: frames near a window's middle count more
than those near its ends), so a frame shared by two windows moves smoothly from one to the other and no
seam is left; peak memory is one window's, whatever the clip's length. Schedules (AnimateDiff-Evolved's):

  static   the same windows at every step: starts 0, LENGTH - OVERLAP, ..., the last ending at the clip's end;
  uniform  the same grid shifted at each step by a share of the stride (0, 1/2, 1/4, 3/4, ... of it: the
           ordered halving), so the boundaries move and every frame is a window's middle at some step.

A clip no longer than LENGTH is one window, with weight 1: exactly the unwindowed result. The default is
16:4:uniform with a motion module (editing.motion) and off (chunks sharing anchor frames) without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError
from .motion import is_motion_unet, max_frames

SCHEDULES = ("uniform", "static")
DEFAULT_MOTION_CONTEXT = "16:4:uniform"
CONTEXT_HELP = (
    "context windows LENGTH[:OVERLAP[:SCHEDULE]] (schedule uniform or static): each step denoises overlapping "
    "windows of LENGTH frames and blends the overlaps with a pyramid weight (FreeNoise); 'off' = chunks sharing "
    f"anchor frames (default: {DEFAULT_MOTION_CONTEXT} with --motion-adapter, off without)"
)


@dataclass(frozen=True)
class ContextWindows:
    """Window length, overlap between neighbouring windows, and schedule."""

    length: int = 16
    overlap: int = 4
    schedule: str = "uniform"

    def __post_init__(self):
        if self.length < 1:
            raise ConfigError(f"context length must be at least 1 frame, got {self.length}")
        if not 0 <= self.overlap < self.length:
            raise ConfigError(f"context overlap must be in [0, length), got {self.overlap} for length {self.length}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"context schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")

    @classmethod
    def parse(cls, text: str | None) -> ContextWindows | None:
        """`LENGTH[:OVERLAP[:SCHEDULE]]`, or None for '' / 'off'; overlap defaults to a quarter of the length."""
        if text is None or str(text).strip().lower() in ("", "off"):
            return None
        parts = [p.strip() for p in str(text).split(":")]
        if len(parts) > 3:
            raise ConfigError(f"context must be LENGTH[:OVERLAP[:SCHEDULE]], got {text!r}")
        try:
            length = int(parts[0])
            overlap = int(parts[1]) if len(parts) > 1 and parts[1] else length // 4
        except ValueError:
            raise ConfigError(f"context {text!r}: LENGTH and OVERLAP must be whole numbers") from None
        return cls(length, overlap, parts[2] if len(parts) > 2 else "uniform")

    @property
    def stride(self) -> int:
        return self.length - self.overlap

    def __str__(self) -> str:
        return f"{self.length}:{self.overlap}:{self.schedule}"


def resolve_context(text: str | None, motion: bool) -> ContextWindows | None:
    """The windows an edit uses: the given ones, or the default with a motion module (None = chunks)."""
    if text is None:
        return ContextWindows.parse(DEFAULT_MOTION_CONTEXT) if motion else None
    return ContextWindows.parse(text)


def ordered_halving(step: int) -> float:
    """The bit-reversed fraction of a step: 0, 1/2, 1/4, 3/4, 1/8, ... (spreads the shifts evenly)."""
    fraction, scale = 0.0, 0.5
    while step:
        fraction += scale * (step & 1)
        step >>= 1
        scale /= 2
    return fraction


def window_starts(num_frames: int, windows: ContextWindows, step: int = 0) -> tuple[int, ...]:
    """The first frame of each window at a step: a grid of stride LENGTH - OVERLAP (shifted per step for
    `uniform`), every window inside the clip, the first starting at 0 and the last ending at the clip's end."""
    length = windows.length
    if num_frames <= length:
        return (0,)
    stride = windows.stride
    shift = round(ordered_halving(step) * stride) if windows.schedule == "uniform" else 0
    starts = {0, num_frames - length}
    start = stride - shift if shift else stride
    while start < num_frames - length:
        starts.add(start)
        start += stride
    return tuple(sorted(starts))


def pyramid(length: int) -> list[float]:
    """FreeNoise's weights over one window: 1, 2, ..., rising to the middle and falling again."""
    return [float(min(i + 1, length - i)) for i in range(length)]


def window_weights(num_frames: int, starts: tuple[int, ...], length: int) -> list[list[float]]:
    """Each window's per-frame weights (its pyramid), divided by their sum over the windows holding the
    frame: at every frame the weights of the windows holding it sum to one."""
    length = min(length, num_frames)
    shape = pyramid(length)
    total = [0.0] * num_frames
    for start in starts:
        for i, w in enumerate(shape):
            total[start + i] += w
    return [[shape[i] / total[start + i] for i in range(length)] for start in starts]


def edit_context(text: str | None, unet: torch.nn.Module) -> ContextWindows | None:
    """The windows of an edit with this UNet (the default with a motion UNet), refused in one sentence
    when longer than the motion module's positional embeddings."""
    motion = is_motion_unet(unet)
    windows = resolve_context(text, motion)
    if motion and windows is not None and windows.length > max_frames(unet):
        raise ConfigError(
            f"context length {windows.length} is longer than the motion module's {max_frames(unet)} frames; "
            f"use --context {max_frames(unet)} or less"
        )
    return windows
