"""One file plus a registration: a new attention mode and a new condition kind, registered from inside
this test module, run an edit end to end with no other edit to the engine."""

from __future__ import annotations

import numpy as np
import pytest

from editing.attention.modes import AttentionMode, attention_mode_names, register_attention_mode, unregister_attention_mode
from editing.condition_kinds import condition_kind, condition_kind_names, unregister_condition_kind
from editing.config import ControlSpec, EngineConfig
from editing.errors import ConfigError
from editing.pipeline import edit_video
from editing.sampling import plan_frames

from .conftest import small_edit


def _previous_only_rows(frame_ids, anchors, window):
    """Each frame attends to the frame before it (itself for the first)."""
    position = {f: i for i, f in enumerate(frame_ids)}
    return [[position.get(f - 1, position[f])] for f in frame_ids]


def _previous_context(targets, num_frames, anchors, window):
    return {targets[0] - 1} if targets[0] > 0 else set()


@pytest.fixture
def previous_mode():
    register_attention_mode(AttentionMode("test-previous", _previous_only_rows, _previous_context, needs_anchor=False))
    yield "test-previous"
    unregister_attention_mode("test-previous")


@pytest.fixture
def grey_kind():
    @condition_kind("test-grey", controlnets={"sd15": "not-used/with-random-backbones"})
    def grey(frames: np.ndarray) -> np.ndarray:
        return np.repeat(frames.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)

    yield "test-grey"
    unregister_condition_kind("test-grey")


def _request(tmp_path, name, **engine):
    return small_edit(tmp_path, name, frames=4, **engine)


def test_a_registered_attention_mode_is_validated_planned_and_edits(tmp_path, previous_mode):
    assert previous_mode in attention_mode_names()
    plan = plan_frames(5, 2, previous_mode)
    assert [b.ids for b in plan.batches] == [(0, 1), (1, 2, 3), (3, 4)]  # its own chunk-context rule
    result = edit_video(_request(tmp_path, "mode", attention=previous_mode, chunk=2))
    assert result.images.shape[0] == 4 and result.images.dtype == np.uint8
    baseline = edit_video(_request(tmp_path, "first", attention="first", chunk=2))
    assert not np.array_equal(result.images, baseline.images)  # the mode's layout is what ran


def test_an_unregistered_mode_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="attention must be one of .*got 'test-previous'"):
        EngineConfig(attention="test-previous")


def test_a_registered_condition_kind_is_validated_extracted_and_edits(tmp_path, grey_kind):
    assert grey_kind in condition_kind_names()
    spec = ControlSpec(grey_kind, scale=1.0)
    with_control = edit_video(_request(tmp_path, "grey", controls=(spec,)))
    without = edit_video(_request(tmp_path, "plain"))
    assert with_control.images.shape == without.images.shape
    assert not np.array_equal(with_control.images, without.images)  # its (random) ControlNet acted


def test_an_unregistered_condition_kind_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="control must be one of .*got 'test-grey'"):
        ControlSpec("test-grey")


def test_registering_a_taken_name_is_refused(previous_mode):
    with pytest.raises(ValueError, match="already registered"):
        register_attention_mode(AttentionMode("first", _previous_only_rows))
    with pytest.raises(ValueError, match="already registered"):
        condition_kind("canny")(lambda frames: frames)
