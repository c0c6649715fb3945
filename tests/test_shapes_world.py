"""The shapes world: exact masks, captions, held-out split, clips with their true motion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shapes_world.world import (
    HELD_OUT_PAIRS,
    PALETTE,
    SHAPES,
    Background,
    Scene,
    SceneSampler,
    ShapeObject,
    held_out_captions,
    inside_object,
    is_held_out,
    make_clip,
    Motion,
    object_mask,
    polygon_vertices,
    random_clip,
    render,
    render_background,
    scene_at,
)


def shape_area(shape: str, radius: float) -> float:
    """Continuous area of a shape of this circumradius (shoelace formula for polygons)."""
    if shape == "circle":
        return math.pi * radius**2
    x, y = (polygon_vertices(shape) * radius).T
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_area_matches_the_continuous_shape(shape):
    obj = ShapeObject(shape, "red", "large", 31.3, 30.8, 14.0, 0.2)
    mask = object_mask(obj, 64)
    perimeter = 2 * math.pi * obj.radius  # bounds the perimeter of every shape inside the circumcircle... for convex ones
    perimeter *= 2 if shape == "star" else 1
    # Pixel-centre sampling misses at most about half a pixel along the boundary.
    assert abs(mask.sum() - shape_area(shape, obj.radius)) < 0.5 * perimeter


def test_render_paints_exactly_the_masks_over_the_background():
    sample = SceneSampler(split="all").batch(3, 1)[0]
    image, masks = render(sample.scene)
    background = render_background(sample.scene.background, 64)
    outside = ~masks.any(axis=0)
    assert np.array_equal(image[outside], background[outside])
    for obj, mask in zip(sample.scene.objects, masks):
        assert mask.any() and (image[mask] == PALETTE[obj.colour]).all()
    assert (masks.sum(axis=0) <= 1).all(), "visible masks must not overlap"


def test_later_objects_occlude_earlier_ones():
    below = ShapeObject("square", "red", "large", 30, 32, 12)
    above = ShapeObject("circle", "blue", "small", 38, 32, 9)
    image, masks = render(Scene((below, above), Background("plain", "green")))
    assert masks[1].sum() == object_mask(above, 64).sum()
    assert masks[0].sum() == (object_mask(below, 64) & ~object_mask(above, 64)).sum()
    assert (image[masks[1]] == PALETTE["blue"]).all()


def test_caption_names_objects_and_background():
    scene = Scene(
        (ShapeObject("circle", "red", "small", 20, 20, 8), ShapeObject("square", "blue", "large", 44, 44, 12)),
        Background("striped", "green"),
    )
    assert scene.caption() == "a red circle and a blue square on a striped green background"
    assert Scene(scene.objects[:1], Background("plain", "orange")).caption() == "a red circle on an orange background"


def test_invalid_objects_and_scenes_are_refused():
    with pytest.raises(ValueError, match="colour"):
        ShapeObject("circle", "mauve", "small", 1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        ShapeObject("blob", "red", "small", 1, 1, 1)
    with pytest.raises(ValueError, match="background's colour"):
        Scene((ShapeObject("circle", "red", "small", 20, 20, 8),), Background("plain", "red"))
    with pytest.raises(ValueError, match="split"):
        SceneSampler(split="test")


def test_sampler_is_seeded_and_respects_the_split():
    first, again = SceneSampler().batch(7, 40), SceneSampler().batch(7, 40)
    assert [s.caption for s in first] == [s.caption for s in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again))
    assert not any(is_held_out(s.scene) for s in SceneSampler(split="train").batch(1, 300))
    assert all(is_held_out(s.scene) for s in SceneSampler(split="held_out").batch(1, 50))


def test_held_out_captions_are_never_training_captions():
    held = held_out_captions()
    assert held and all(any(f"{c} {s}" in caption for c, s in HELD_OUT_PAIRS) for caption in held)
    training = {s.caption for s in SceneSampler(split="train", max_objects=1, backgrounds=("plain",)).batch(2, 500)}
    assert training and not training & set(held)


def test_every_object_is_fully_inside_the_image():
    for sample in SceneSampler(split="all").batch(4, 100):
        for obj in sample.scene.objects:
            assert obj.radius < obj.x < 64 - obj.radius and obj.radius < obj.y < 64 - obj.radius


def test_clip_objects_move_turn_scale_and_stay_in_frame():
    clip = random_clip(5, frames=12)
    assert clip.frames.shape == (12, 64, 64, 3) and clip.flow.shape == (11, 64, 64, 2)
    assert clip.masks.shape[:2] == (12, len(clip.scene.objects))
    assert clip.masks.sum(axis=(2, 3)).min() > 0
    scenes = [scene_at(clip.scene, clip.motions, t) for t in range(12)]
    pairs = list(zip(clip.scene.objects, scenes[-1].objects))
    assert any(abs(a.x - b.x) + abs(a.y - b.y) > 1 for a, b in pairs)
    assert any(a.shape != "circle" for a, _ in pairs) and all(a.angle != b.angle for a, b in pairs if a.shape != "circle")
    assert all(a.radius != b.radius for a, b in pairs)
    size = clip.frames.shape[1]
    assert all(o.radius < o.x < size - o.radius and o.radius < o.y < size - o.radius for scene in scenes for o in scene.objects)


def test_true_flow_carries_object_points_into_the_object_and_leaves_the_background():
    clip = random_clip(11, frames=6)
    ys, xs = np.mgrid[0:64, 0:64] + 0.5
    for t in range(5):
        following = scene_at(clip.scene, clip.motions, t + 1)
        background = ~clip.masks[t].any(axis=0)
        assert not clip.flow[t][background].any()
        for obj, mask in zip(following.objects, clip.masks[t]):
            moved_x, moved_y = (xs + clip.flow[t, ..., 0])[mask], (ys + clip.flow[t, ..., 1])[mask]
            # The same point of the shape one frame later: exactly inside the moved shape (float tolerance).
            grown = ShapeObject(obj.shape, obj.colour, obj.size, obj.x, obj.y, obj.radius * (1 + 1e-9), obj.angle)
            assert inside_object(grown, moved_x, moved_y).all()


def test_flow_of_a_pure_translation_is_the_translation():
    obj = ShapeObject("square", "red", "large", 20, 30, 10, 0.1)
    clip = make_clip(Scene((obj,), Background("gradient", "blue")), (Motion(dx=1.5, dy=-0.5),), 3)
    assert np.allclose(clip.flow[0][clip.masks[0, 0]], [1.5, -0.5])


def test_clip_length_is_checked():
    scene = Scene((ShapeObject("circle", "red", "small", 20, 20, 8),), Background("plain", "blue"))
    with pytest.raises(ValueError, match="frames"):
        make_clip(scene, (Motion(),), 1)
    with pytest.raises(ValueError, match="one motion per object"):
        make_clip(scene, (), 4)
