"""The attention-control protocol: every hook the denoising loop and the inversion call, with no-op defaults.

A control installs its attention processors for the loop (`processors`) and hands each UNet call its
per-call state (`call`); a mode that needs more overrides the other hooks. The loop calls every hook
unconditionally, so a new control subclasses `AttentionControl` and overrides only what it uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .cross_frame import cross_frame_attention


class AttentionControl:
    """Base attention control: the plain cross-frame processors, no per-call state, nothing recorded."""

    # the loop may compute the anchor frames once per step and let later batches borrow them
    shares_anchors: bool = False

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        """Install this control's processors on `unet` for the loop; the originals come back after."""
        with cross_frame_attention(unet):
            yield

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        """The cross_attention_kwargs entries of one UNet call: its step, the clip frames it holds, those it
        produces and the anchors it borrows."""
        return {}

    def begin_step(self, context: Any, guidance: Any) -> None:
        """Before a step's planned batches (TokenFlow runs its keyframe pass here); `context` is the loop's
        sampling.StepContext and `guidance` its sampling.Guidance (not imported: the loop imports this module)."""

    def recording(self, unet: torch.nn.Module, steps: int) -> contextlib.AbstractContextManager[dict]:
        """While inverting: what the control records; yields the {name: tensor} record, filled on exit."""
        return contextlib.nullcontext({})

    def use_source(self, record: dict, inverted_steps: int) -> None:
        """Before sampling: what `recording` recorded, from the new inversion or from the cache."""

    def cache_key(self) -> str | None:
        """What, beyond the inversion's own key, changes what `recording` records (None: nothing)."""
        return None
