"""Still backgrounds (editing.still): propagation holds a flat background still beside a moving object."""

from __future__ import annotations

import cv2
import numpy as np

from editing.keyframes import Keyframes, clip_flows, fuse_frame
from editing.still import RIM, bleed, fill_still, repeat_shift, still_background, textured
from shapes_world.benchmark import derive_edits, ideal_frames
from shapes_world.propagation import object_coloured, recolour_clip, trail_pixels, wake_clip
from shapes_world.world import PALETTE, render_background


def _propagated(clip, target_frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame 0 of `target_frames` (an ideal edit) propagated over the clip along its flow: frames and unseen masks."""
    flows = clip_flows(clip.frames)
    keyframes = Keyframes((0,), target_frames[:1], flows=flows)
    fused = [fuse_frame(t, keyframes, flows) for t in range(1, len(clip.frames))]
    return np.stack([target_frames[0], *(f.frame for f in fused)]), np.stack(
        [np.zeros(clip.frames.shape[1:3], bool), *(f.unseen for f in fused)]
    )


def test_a_flat_region_reaching_the_edge_is_still_and_a_flat_object_inside_is_not():
    frame = np.full((32, 32, 3), 200, np.uint8)
    frame[10:20, 10:20] = (30, 60, 200)  # a plain square: flat inside, enclosed by its edge
    still = still_background(frame, [np.zeros((32, 32, 2), np.float32)])
    assert still[0].all() and still[:, 0].all() and still[9, 10:20].all()  # the background, up to the square's edge
    assert not still[10:20, 10:20].any()
    textured = frame.copy()
    textured[:, :2] = np.arange(32)[:, None, None] * 8  # a textured edge band that moves 2 px: the camera pans
    panning = np.zeros((32, 32, 2), np.float32)
    panning[..., 0] = 2.0
    assert not still_background(textured, [panning]).any()
    gradient = np.repeat(np.linspace(60, 120, 32).astype(np.uint8)[None, :, None], 32, 0).repeat(3, 2)  # flat enough, but a slope
    assert still_background(gradient, [np.zeros((32, 32, 2), np.float32)]).all()
    assert not still_background(gradient, [panning]).any()  # a pan over a gradient: the slope on the edge moves


def test_stripes_added_to_a_flat_background_stay_put_beside_a_moving_object():
    """The wake: an edit stripes the plain background a large object crosses. Propagated from frame 0
    (the ideal edit), every background pixel a keyframe sees beyond the rim that moves with the object
    (RIM px, where an edited object bleeds) keeps the ideal's stripe there (mean error under 2 levels, at
    most 1% of them off by more than 40), where the object's motion bled into the whole background's
    flow before (mean 11 levels, 18% of them off by more than 40: the stripes bent in a wake)."""
    clip = wake_clip(1100, frames=5)
    edit = next(e for e in derive_edits(clip) if e.kind == "add")
    ideal = ideal_frames(clip, edit)
    output, unseen = _propagated(clip, ideal)
    kernel = np.ones((2 * RIM + 3, 2 * RIM + 3), np.uint8)
    for t in range(1, len(output)):
        beyond = ~cv2.dilate(clip.masks[t].any(0).astype(np.uint8), kernel).astype(bool)
        background = beyond & ~unseen[t]
        error = np.abs(output[t].astype(np.float32) - ideal[t]).mean(-1)[background]
        assert error.mean() < 2.0 and (error > 40).mean() < 0.01, (t, error.mean(), (error > 40).mean())


def test_a_recoloured_object_keeps_its_outline_and_leaves_no_trail():
    """A recoloured object moving on a plain background, propagated from the ideal frame 0: its area stays
    within 5% of the true mask's and nothing of its new colour stays behind where it was."""
    clip = recolour_clip(1101, frames=5)
    edit = next(e for e in derive_edits(clip) if e.kind == "colour")
    ideal = ideal_frames(clip, edit)
    output, _ = _propagated(clip, ideal)
    coloured = object_coloured(output, PALETTE[edit.target.objects[0].colour], render_background(edit.target.background, 64))
    masks = clip.masks[:, 0]
    areas = coloured.reshape(len(output), -1).sum(1) / masks.reshape(len(output), -1).sum(1)
    assert np.abs(areas - 1).max() < 0.05, areas
    assert trail_pixels(coloured, masks) == 0


def test_what_an_object_uncovers_on_a_still_background_is_filled_from_it_not_re_diffused():
    """A recoloured object's uncovered background: every unseen pixel on the still background is filled
    with that background's colour (not the object's), and only unseen pixels off it go to re-diffusion."""
    from editing.keyframes import _to_refine

    clip = recolour_clip(1101, frames=4)
    edit = next(e for e in derive_edits(clip) if e.kind == "colour")
    ideal = ideal_frames(clip, edit)
    flows = clip_flows(clip.frames)
    made = fuse_frame(3, Keyframes((0,), ideal[:1], flows=flows), flows)
    filled = made.unseen & flows.still[3]
    assert filled.sum() > 20  # the object moved at least 2 px a frame: it uncovered a band
    background = np.asarray(PALETTE[clip.scene.background.colour], np.float32)
    assert np.abs(made.frame[filled].astype(np.float32) - background).mean(-1).max() <= 8
    assert not (_to_refine(made, flows, 3).unseen & flows.still[3]).any()


def test_stripes_run_on_through_the_rim_and_what_the_object_uncovers():
    """The wake's last pixels: the rim beside the moving object and the background it uncovers. Propagated
    from the ideal frame 0, every background pixel beyond the object's true mask grown by 1 px, seen or
    not, keeps the ideal's stripe there (mean error under 1 level, at most 1% off by more than 40): the rim
    is held still or filled from the background, not moved with the object, and what the object uncovers
    continues the stripes instead of smearing them."""
    clip = wake_clip(1104, frames=6)
    edit = next(e for e in derive_edits(clip) if e.kind == "add")
    ideal = ideal_frames(clip, edit)
    output, unseen = _propagated(clip, ideal)
    for t in range(1, len(output)):
        beyond = ~cv2.dilate(clip.masks[t].any(0).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (beyond & unseen[t]).sum() > 20  # the object uncovers a band every frame
        error = np.abs(output[t].astype(np.float32) - ideal[t]).mean(-1)[beyond]
        assert error.mean() < 1.0 and (error > 40).mean() < 0.01, (t, error.mean(), (error > 40).mean())


def test_a_hole_in_stripes_is_filled_along_them_and_an_irregular_one_is_inpainted():
    rows = np.arange(48)[:, None, None]
    stripes = np.where((rows // 4) % 2 == 0, (200, 120, 40), (60, 30, 160)).astype(np.uint8).repeat(48, 1)
    hole = np.zeros((48, 48), bool)
    hole[14:30, 18:34] = True
    damaged = stripes.copy()
    damaged[hole] = (255, 0, 0)  # the object's colour, never to be copied
    assert repeat_shift(damaged, hole, ~hole) in {(-1, 0), (1, 0)}  # the stripes run along x
    assert np.array_equal(fill_still(damaged, hole, ~hole), stripes)
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    assert repeat_shift(noise, hole, ~hole) is None
    filled = fill_still(noise, hole, ~hole)
    assert np.array_equal(filled[~hole], noise[~hole]) and not (filled[hole] == (255, 0, 0)).all(-1).any()


def test_the_bleed_is_the_rim_that_shows_the_object_and_the_rest_shows_the_background():
    """A red square on stripes whose edited frame bleeds red one pixel into the rim on its left side:
    those pixels are the bleed; the rest of the rim shows the stripes and is not."""
    rows = np.arange(40)[:, None, None]
    edited = np.where((rows // 3) % 2 == 0, (230, 200, 120), (120, 80, 200)).astype(np.uint8).repeat(40, 1)
    edited[12:28, 12:28] = (220, 20, 20)
    edited[12:28, 11] = (210, 40, 30)  # the bleed
    moving = np.zeros((40, 40), bool)
    moving[12:28, 12:28] = True
    ring = cv2.dilate(moving.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~moving
    still = ~moving & ~ring
    bled = bleed(edited, still, ring)
    assert bled[12:28, 11].all() and not (bled & ring)[:, 12:].any() and not bled[:, :11].any()
    assert textured(edited, still) and not textured(np.full_like(edited, 90), still)


def test_the_share_of_scene_warp_error_beside_objects_counts_only_the_background_near_them():
    """`near_object_share`: error put on the background within 2 px of the object is most of it (the rest
    is what bilinear sampling mixes into the object's edge); on the object itself or far from it, none."""
    from shapes_world.propagation import near_object_share, scene_warp_errors, wake_clip

    clip = wake_clip(4)
    frames, masks = clip.frames.copy(), clip.masks
    objects = masks[3].any(0)
    distance = cv2.distanceTransform((~objects).astype(np.uint8), cv2.DIST_L2, 5)
    for band, low, high in (((distance > 0) & (distance <= 2), 0.75, 1.0), (distance > 12, 0, 0), (objects, 0, 0)):
        changed = frames.copy()
        changed[3][band] = 255 - changed[3][band]
        assert np.nanmean(scene_warp_errors(changed, clip.flow, masks)) > np.nanmean(scene_warp_errors(frames, clip.flow, masks))
        assert low <= near_object_share(changed, clip.flow, masks) <= high
