"""The region benchmark's clip choice and its subject-place measure (shapes_world.regions)."""

from __future__ import annotations

import pytest

from shapes_world.benchmark import benchmark_clip, clip_kind
from shapes_world.regions import subject_iou, two_object_clips
from shapes_world.world import without_object


def test_clips_of_the_asked_kinds_only():
    chosen = two_object_clips(2, ("pan", "plain"))
    assert [clip_kind(i) for i in chosen] == ["pan", "pan", "plain", "plain"]
    assert all(len(benchmark_clip(i).scene.objects) == 2 for i in chosen)
    assert set(two_object_clips(1)) >= set(two_object_clips(1, ("occlusion",)))
    with pytest.raises(ValueError, match="unknown clip kind"):
        two_object_clips(1, ("stripes",))


def test_subject_iou_is_high_in_place_and_zero_once_removed():
    clip = benchmark_clip(1)
    subject = clip.masks[:, 0]
    assert subject_iou(clip.frames, subject) > 0.9
    assert subject_iou(without_object(clip, 0), subject) == 0.0
