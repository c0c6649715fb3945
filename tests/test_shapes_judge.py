"""The judge reads colour, shape and background back from the generator's own renders."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shapes_world.judge import judge, judge_background, parse_caption, shows
from shapes_world.world import PALETTE, SHAPES, Background, Scene, SceneSampler, ShapeObject, render, render_background

SAMPLES = SceneSampler(split="all").batch(2024, 200)


def truth(sample) -> Counter:
    return Counter((o.colour, o.shape) for o in sample.scene.objects)


def test_with_masks_the_judge_reads_every_object():
    right = [judge(s.image, s.masks).pairs() == truth(s) for s in SAMPLES]
    assert np.mean(right) >= 0.95


def test_without_masks_the_judge_finds_the_captioned_objects():
    right = [shows(judge(s.image), s.caption) for s in SAMPLES]
    assert np.mean(right) >= 0.95


def test_the_judge_reads_the_background_kind_and_colour():
    right = [
        (judge_background(s.image).kind, judge_background(s.image).colour) == (s.scene.background.kind, s.scene.background.colour)
        for s in SAMPLES
    ]
    assert np.mean(right) >= 0.95


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_in_each_size_is_recognised(shape):
    for radius in (9.0, 14.0):
        image, masks = render(Scene((ShapeObject(shape, "blue", "small", 32, 32, radius, 0.25),), Background("plain", "yellow")))
        assert [o.shape for o in judge(image).objects] == [shape]


def test_a_recoloured_object_is_judged_wrong():
    sample = next(s for s in SAMPLES if len(s.scene.objects) == 1)
    image = sample.image.copy()
    obj = sample.scene.objects[0]
    other = next(c for c in PALETTE if c not in (obj.colour, sample.scene.background.colour))
    image[sample.masks[0]] = PALETTE[other]
    assert shows(judge(sample.image), sample.caption)
    assert not shows(judge(image), sample.caption)


@pytest.mark.parametrize("kind", ["plain", "striped", "gradient"])
def test_a_bare_background_shows_no_object(kind):
    for axis in (0, 1):
        image = render_background(Background(kind, "purple", axis), 64)
        verdict = judge(image)
        assert not verdict.objects and (verdict.background.kind, verdict.background.colour) == (kind, "purple")


def test_parse_caption_recovers_the_scene():
    for sample in SAMPLES[:50]:
        wanted, background = parse_caption(sample.caption)
        assert wanted == truth(sample)
        assert (background.kind, background.colour) == (sample.scene.background.kind, sample.scene.background.colour)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        judge(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="no object"):
        shows(judge(SAMPLES[0].image), "a photo of a cat")
