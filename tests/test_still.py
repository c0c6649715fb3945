"""Still backgrounds (editing.still): propagation holds a flat background still beside a moving object."""

from __future__ import annotations

import cv2
import numpy as np

from editing.keyframes import Keyframes, clip_flows, fuse_frame
from editing.still import RIM, still_background
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
