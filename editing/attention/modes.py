"""Cross-frame attention modes, each bound in one registration to what it needs.

A mode says, for one UNet batch holding the clip frames `frame_ids` (sorted), which batch positions
each frame's queries attend to (`rows`), and which frames a chunk of target frames must carry as
context so that its targets see what they attend to (`context`). The engine reads only the registry:
a new mode is one `register_attention_mode` call (see tests/test_registries.py).

This module imports nothing heavy (no torch), so config validation and the CLI can read mode names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

# rows(frame_ids, anchor_positions, window) -> for each frame of the batch, the batch positions it attends to
RowsFn = Callable[[Sequence[int], Sequence[int], int], list[list[int]]]
# context(targets, num_frames, anchors, window) -> clip frames, beyond the targets, that the chunk must hold
ContextFn = Callable[[range, int, tuple[int, ...], int], set[int]]


def _anchors_only(targets: range, num_frames: int, anchors: tuple[int, ...], window: int) -> set[int]:
    return set(anchors)


@dataclass(frozen=True)
class AttentionMode:
    """One cross-frame attention mode: its name, its per-batch layout and its chunk-context rule."""

    name: str
    rows: RowsFn
    context: ContextFn = _anchors_only
    needs_anchor: bool = True  # a batch without an anchor frame is an error
    cross_frame: bool = True  # False: plain per-frame self-attention, no processor is installed
    # an attention control the loop installs instead of the plain cross-frame processor, built per edit:
    # make_control(source frames, latent height, latent width); a callable or "module:function"
    make_control: Callable | str | None = None
    # each frame's result depends only on itself and the anchors: a long clip may be split into chunks
    # that run on different workers (editing.batch.split_edit), each chunk holding the anchors
    independent_chunks: bool = False
    # what it needs and excludes (editing.compat): feature names, or (feature, why) pairs
    needs: tuple = ()
    excludes: tuple = ()
    default_keyframes: bool = True  # --keyframes left out: keyframes then propagation (False: every frame)
    help: str = field(default="", compare=False)


ATTENTION_MODES: dict[str, AttentionMode] = {}


def register_attention_mode(mode: AttentionMode) -> AttentionMode:
    """Add a mode to the registry; a name can be registered only once."""
    if not mode.name or mode.name != mode.name.strip() or "," in mode.name:
        raise ValueError(f"an attention mode needs a plain name, got {mode.name!r}")
    if mode.name in ATTENTION_MODES:
        raise ValueError(f"an attention mode named '{mode.name}' is already registered")
    ATTENTION_MODES[mode.name] = mode
    return mode


def unregister_attention_mode(name: str) -> None:
    """Remove a mode (tests that register their own clean up with this)."""
    ATTENTION_MODES.pop(name, None)


def attention_mode_names() -> tuple[str, ...]:
    return tuple(ATTENTION_MODES)


def mode_control(name: str, frames: np.ndarray, latent_height: int, latent_width: int):
    """The attention control a mode needs for this clip, or None for modes that need none."""
    factory = get_attention_mode(name).make_control
    if factory is None:
        return None
    if isinstance(factory, str):
        module, _, function = factory.partition(":")
        factory = getattr(importlib.import_module(module), function)
    return factory(frames, latent_height, latent_width)


def get_attention_mode(name: str) -> AttentionMode:
    if name not in ATTENTION_MODES:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTION_MODES)}; got {name!r}")
    return ATTENTION_MODES[name]


# ---------------------------------------------------------------- the built-in modes


def _none_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    return [[i] for i in range(len(frame_ids))]


def _first_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    return [[anchors[0]] for _ in frame_ids]


def _sparse_causal_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    position = {frame: i for i, frame in enumerate(frame_ids)}
    return [[anchors[0], position.get(frame - 1, position[frame])] for frame in frame_ids]


def _sparse_causal_context(targets: Sequence[int], num_frames: int, anchors: Sequence[int], window: int):
    return set(anchors) | ({targets[0] - 1} if targets[0] > 0 else set())


def _full_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    return [list(range(len(frame_ids))) for _ in frame_ids]


def _window_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    return [sorted(set(anchors) | {i for i, f in enumerate(frame_ids) if abs(f - frame) <= window}) for frame in frame_ids]


def _window_context(targets: Sequence[int], num_frames: int, anchors: Sequence[int], window: int):
    return set(anchors) | {f for f in range(targets[0] - window, targets[-1] + window + 1) if 0 <= f < num_frames}


def _no_context(targets: Sequence[int], num_frames: int, anchors: Sequence[int], window: int):
    return set()


register_attention_mode(
    AttentionMode(
        "none",
        _none_rows,
        _no_context,
        needs_anchor=False,
        cross_frame=False,
        independent_chunks=True,
        default_keyframes=False,
        help="per-frame attention",
    )
)
register_attention_mode(
    AttentionMode("first", _first_rows, independent_chunks=True, help="every frame attends to the first (Text2Video-Zero)")
)
register_attention_mode(
    AttentionMode("sparse-causal", _sparse_causal_rows, _sparse_causal_context, help="first and previous frame (Tune-A-Video)")
)
register_attention_mode(AttentionMode("full", _full_rows, needs_anchor=False, help="all frames of a chunk (ControlVideo)"))
register_attention_mode(AttentionMode("window", _window_rows, _window_context, help="the anchor plus neighbours within --window"))


def _flow_rows(frame_ids: Sequence[int], anchors: Sequence[int], window: int):
    return [sorted({anchors[0], i}) for i in range(len(frame_ids))]


register_attention_mode(
    AttentionMode(
        "flow",
        _flow_rows,
        help="own frame and anchor, then attention along the source's optical-flow trajectories (FLATTEN)",
        make_control="editing.attention.flow:make_flow_control",
    )
)


register_attention_mode(
    AttentionMode(
        "tokenflow",
        _none_rows,
        _no_context,
        needs_anchor=False,
        needs=(("ddim-inversion", "its correspondences come from the inverted source's features"),),
        default_keyframes=False,  # it propagates keyframes itself
        help="keyframes (one per --window frames) attend jointly; other frames blend their nearest keyframes' outputs along the source's correspondences (TokenFlow)",
        make_control="editing.attention.tokenflow:make_tokenflow_control",
    )
)
