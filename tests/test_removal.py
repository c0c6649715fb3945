"""Filling an object's hole from other frames (editing.removal) on textured backgrounds."""

from __future__ import annotations

import numpy as np
import pytest

from editing.keyframes import clip_flows
from editing.removal import checked_motion, edge_normals, fill_from_frames, ring_around
from shapes_world.benchmark import benchmark_clip
from shapes_world.world import without_object


def stripes(height: int = 48, width: int = 48, period: int = 6) -> np.ndarray:
    """Horizontal yellow and pale stripes with a static green block in the middle."""
    rows = (np.arange(height) // (period // 2)) % 2
    frame = np.where(rows[:, None, None] == 1, [235, 215, 30], [245, 235, 150]).astype(np.uint8)
    frame = np.repeat(frame, width, axis=1)
    frame[18:30, 18:30] = [30, 160, 50]
    return frame


def test_edge_normals_point_across_stripes_and_vanish_on_flat_colour():
    normals = edge_normals(stripes())
    assert np.allclose(np.abs(normals[6:12, 2:10]), [0, 1], atol=1e-3)  # horizontal stripes: across is vertical
    assert not edge_normals(np.full((16, 16, 3), 90, np.uint8)).any()


def test_a_drifting_fit_is_replaced_by_no_motion_where_the_background_stands_still():
    frame = stripes()
    hole = np.zeros(frame.shape[:2], bool)
    hole[8:14, 32:38] = True
    drift = np.array([[0, 0], [0, 0], [3.0, 0]])  # 3 px to the right: along the stripes, but not the block's
    assert not checked_motion(drift, frame, frame, ring_around(hole), hole).any()
    panned = np.roll(frame, 3, axis=1)  # the camera really moves 3 px: the fit explains the block and is kept
    assert np.array_equal(checked_motion(drift, frame, panned, ring_around(hole), hole), drift)


@pytest.mark.parametrize("index", [6, 12])
def test_holes_on_a_still_striped_background_are_filled_with_its_stripes(index):
    """Occlusion clip 6 (a square passing behind a static one) and textured clip 12 (vertical stripes): the
    flow along stripes is not observed, so only the stripes' own colours tell the camera stands still."""
    clip = benchmark_clip(index)
    holes = clip.masks[:, 0]
    truth = without_object(clip, 0)
    filled = fill_from_frames(clip.frames, holes, clip_flows(clip.frames))
    taken = holes & ~filled.unfilled
    assert np.array_equal(filled.frames[taken], truth[taken])  # no occluder's or neighbour's pixel carried in
    others = [np.delete(~holes, t, axis=0).any(0) & holes[t] for t in range(len(holes))]
    assert taken.sum() >= 0.6 * np.sum(others)  # most of what other frames show is taken from them
