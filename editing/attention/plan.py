"""One UNet call of a frame plan: the clip frames it holds and those it produces (editing.sampling.FramePlan)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameBatch:
    """One UNet call: the clip frames it holds (sorted) and those whose results it produces."""

    ids: tuple[int, ...]
    targets: tuple[int, ...]
    borrowed: tuple[
        int, ...
    ] = ()  # anchor frames it attends to without holding them: their keys/values come from the step's anchor store
    weights: tuple[float, ...] | None = (
        None  # per target: its share of the frame's noise (context windows' blending); None = all of it
    )
