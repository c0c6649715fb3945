"""Keyframes, then propagation (editing.keyframes): choice, flow chains, fusion, refinement, the core path."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from editing.config import parse_keyframes
from editing.errors import ConfigError
from editing.keyframes import (
    AUTO_MAX_GAP,
    ClipFlows,
    Keyframes,
    carried,
    carry_forward,
    chain,
    choose_keyframes,
    clip_flows,
    composite_mask,
    fuse_frame,
    latent_mask,
    narrow_regions,
    propagate,
    remap,
)
from editing.staging import edit_keyframes

from .conftest import ROOT, small_edit


def panning_clip(frames: int = 6, size: int = 64, step: tuple[int, int] = (2, 1), seed: int = 0) -> np.ndarray:
    """A window moving over a large smooth random texture: frame t is the texture shifted by t * step."""
    import cv2

    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (size * 3, size * 3, 3)).astype(np.float32), (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    dx, dy = step
    return np.stack([big[size + t * dy : 2 * size + t * dy, size + t * dx : 2 * size + t * dx] for t in range(frames)])


def test_parse_keyframes_reads_every_auto_and_off():
    assert parse_keyframes(None) == 0 and parse_keyframes("") == 0 and parse_keyframes("off") == 0
    assert parse_keyframes("8") == 8 and parse_keyframes(" auto ") == -1
    for bad in ("1", "x", "8.5", "-3"):
        with pytest.raises(ConfigError, match="keyframes"):
            parse_keyframes(bad)


def test_keyframes_option_reaches_the_cli_and_refuses_bad_values_in_one_sentence():
    from editing.requests import build_request

    values = {"video": "clip.mp4", "out": "o.mp4", "prompt": "p", "model": "tiny"}
    request = build_request("edit", values | {"keyframes": "4", "keyframe_refine": 0.2})
    assert request.engine.keyframes == "4" and request.engine.keyframes_every == 4 and request.engine.keyframe_refine == 0.2
    with pytest.raises(ConfigError, match="keyframes") as bad:
        build_request("edit", values | {"keyframes": "sometimes"})
    assert "\n" not in str(bad.value)
    with pytest.raises(ConfigError, match="keyframe_refine"):
        build_request("edit", values | {"keyframe_refine": 2.0})


def test_every_n_keyframes_start_at_zero():
    assert choose_keyframes(17, 8) == (0, 8, 16)
    assert choose_keyframes(5, 8) == (0,)


def test_auto_keyframes_follow_scene_changes():
    clip = panning_clip(12)
    steady = choose_keyframes(len(clip), -1, clip_flows(clip))
    assert steady[0] == 0 and all(b - a <= AUTO_MAX_GAP for a, b in zip(steady, steady[1:]))
    cut = np.concatenate([clip[:5], panning_clip(7, seed=9)])  # a hard cut to another scene at frame 5
    keys = choose_keyframes(len(cut), -1, clip_flows(cut))
    assert 5 in keys, keys


def test_every_n_keyframes_also_start_at_a_cut_and_count_on_from_it():
    clip = panning_clip(5)
    cut = np.concatenate([clip, panning_clip(11, seed=9)])  # a hard cut to another scene at frame 5
    assert choose_keyframes(len(cut), 4, clip_flows(cut)) == (0, 4, 5, 9, 13)
    assert choose_keyframes(len(cut), 4) == (0, 4, 8, 12)  # without the flows, every 4th
    assert choose_keyframes(16, 8, clip_flows(panning_clip(16, step=(1, 0)))) == (0, 8)  # a pan is not a cut


def test_every_n_keyframes_leave_a_fast_pans_tail_to_propagation():
    """A pan of 2 px a frame leaves 30% of frame 15 unseen from keyframe 8, yet every-8 keyframes stay 0
    and 8: a keyframe on the last frame, edited apart from the others, made the shapes benchmark's pan and
    occlusion clips flicker between the two edits (`auto` is the mode that adds keyframes where a frame
    is unseen)."""
    from editing.keyframes import AUTO_UNSEEN

    fast = clip_flows(panning_clip(16))
    assert 1 - chain(fast, 15, 8).valid.mean() > AUTO_UNSEEN
    assert choose_keyframes(16, 8, fast) == (0, 8)
    assert choose_keyframes(16, -1, fast) == (0, 4, 8, 12)  # auto: a new one every time 15% is unseen


def test_narrow_regions_are_those_within_reach_of_a_seen_pixel_however_long():
    unseen = np.zeros((40, 40), bool)
    unseen[5:7, 2:38] = True  # a long strip 2 px wide
    unseen[20, 20] = True  # a speck
    unseen[25:37, 25:37] = True  # a block 12 px wide
    unseen[30:40, 0:3] = True  # 3 px wide along the frame's edge: the outside is not seen
    narrow = narrow_regions(unseen, reach=2)
    assert narrow[5:7, 2:38].all() and narrow[20, 20]
    assert not narrow[25:37, 25:37].any() and not narrow[30:40, 0:3].any()
    assert not (narrow & ~unseen).any()
    assert narrow_regions(unseen, reach=6)[25:37, 25:37].all()
    assert not narrow_regions(np.zeros((8, 8), bool), reach=2).any()


def test_colour_match_trusts_a_hop_only_between_like_colours_inside_the_frame():
    from editing.flows import colour_match

    source = np.zeros((8, 8, 3), np.uint8)
    source[:, 4:] = 200  # left half black, right half light
    target = np.zeros_like(source)
    flow = np.zeros((8, 8, 2), np.float32)
    flow[..., 0] = 2.0  # every pixel of the target points 2 px to the right in the source
    matched = colour_match(source, target, flow, tolerance=8)
    assert matched[:, :2].all()  # black onto black
    assert not matched[:, 2:].any()  # black onto light, or (the last two columns) off the frame's edge
    assert (
        colour_match(source, target, flow, tolerance=255)[:, :6].all()
        and not colour_match(source, target, flow, tolerance=255)[:, 6:].any()
    )


def test_a_hop_failing_the_flow_check_is_trusted_only_where_the_source_colours_agree_along_it():
    """On a real clip (a skier on snow, whose flat snow fails DIS's forward-backward check in places):
    every pixel the check trusts stays trusted, and each pixel trusted besides is one whose source colour
    matches the colour its flow points at within MATCH_LEVELS; those extra pixels are a real share."""
    from editing.config import FrameSelection
    from editing.flows import colour_match, source_flows
    from editing.keyframes import MATCH_LEVELS
    from editing.video_io import read_clip

    clip = read_clip(ROOT / "assets" / "man-skiing.mp4", FrameSelection(max_frames=4, size=128)).frames
    flows, checked = clip_flows(clip), source_flows(clip, colour_candidates=True)
    for t in range(len(clip) - 1):
        valid, passed = flows.backward_valid[t], checked.valid[t]
        assert valid[passed].all()
        extra = valid & ~passed
        assert extra.mean() > 0.02
        assert colour_match(clip[t], clip[t + 1], flows.backward[t], MATCH_LEVELS)[extra].all()
        assert not colour_match(clip[t], clip[t + 1], flows.backward[t], MATCH_LEVELS)[~valid].any()


def test_chain_follows_the_motion_through_the_frames_between():
    clip = panning_clip(5, step=(2, 1))
    flows = clip_flows(clip)
    back = chain(flows, 4, 0)  # frame 4 at x shows frame 0 at x + 4 * (2, 1)
    ys, xs = np.mgrid[0:64, 0:64]
    inner = (slice(12, 52), slice(12, 52))
    assert back.valid[inner].mean() > 0.95
    np.testing.assert_allclose(back.x[inner], xs[inner] + 8, atol=0.6)
    np.testing.assert_allclose(back.y[inner], ys[inner] + 4, atol=0.6)
    ahead = chain(flows, 0, 4)  # and frame 0 at x is frame 4 at x - 4 * (2, 1)
    np.testing.assert_allclose(ahead.x[inner], xs[inner] - 8, atol=0.6)
    # pixels of frame 4 whose content was outside frame 0 (the right and bottom edges) have no path
    assert not back.valid[:, -4:].any() and not back.valid[-2:, :].any()


def test_fusing_unedited_keyframes_reproduces_the_source():
    """An identity edit: with the source frames as 'edited' keyframes, each fused frame is the source frame
    wherever a keyframe sees it, and only the unseen pixels are marked for refinement."""
    clip = panning_clip(9)
    keys = (0, 8)
    made = Keyframes(keys, clip[list(keys)])
    flows = clip_flows(clip)
    for frame in range(1, 8):
        fused = fuse_frame(frame, made, flows)
        seen = ~fused.unseen
        assert seen.mean() > 0.9
        error = np.abs(fused.frame.astype(float) - clip[frame].astype(float)).mean(-1)
        assert np.median(error[seen]) < 2.0 and error[seen].mean() < 4.0
        assert fused.nearest == (0 if frame <= 4 else 8)


def test_two_keyframes_are_blended_by_temporal_distance():
    """On a static clip every path is valid: frame t of a gap [0, 4] is (4 - t)/4 of keyframe 0 plus t/4 of keyframe 4."""
    clip = np.repeat(panning_clip(1), 5, axis=0)
    dark, bright = np.full_like(clip[0], 40), np.full_like(clip[0], 200)
    made = Keyframes((0, 4), np.stack([dark, bright]))
    flows = clip_flows(clip)
    for frame in (1, 2, 3):
        fused = fuse_frame(frame, made, flows)
        assert not fused.unseen.any()
        np.testing.assert_allclose(fused.frame, 40 + (200 - 40) * frame / 4, atol=1)


def test_masks_mark_the_latents_that_hold_unseen_pixels():
    unseen = np.zeros((32, 32), bool)
    unseen[9, 17] = True  # latent (1, 2) at scale 8
    mask = latent_mask(unseen, 8, dilate=0)
    assert mask.shape == (4, 4) and mask.sum() == 1 and mask[1, 2]
    assert latent_mask(unseen, 8, dilate=1).sum() == 9
    assert not composite_mask(np.zeros((4, 4), bool)).any()


def test_refined_pixels_are_pasted_only_where_no_keyframe_sees():
    """The re-diffused latents reach past a hole (8 x 8 pixels each), but only its unseen pixels take
    them: fully inside it, half at its edge, and not at all on any seen pixel."""
    unseen = np.zeros((32, 32), bool)
    unseen[8:14, 16:22] = True
    soft = composite_mask(unseen)
    assert soft.shape == (32, 32)
    assert (soft[~unseen] == 0).all()
    assert (soft[9:13, 17:21] == 1.0).all()
    assert soft[8, 16] == soft[13, 21] == soft[10, 16] == 0.5


class UnetImages:
    """Counts UNet image evaluations (batch items) by wrapping the instance's forward."""

    def __init__(self, unet):
        self.unet, self.images = unet, 0

    @contextlib.contextmanager
    def counting(self):
        original = self.unet.forward

        def counted(sample, *args, **kwargs):
            self.images += sample.shape[0]
            return original(sample, *args, **kwargs)

        self.unet.forward = counted
        try:
            yield self
        finally:
            del self.unet.forward


def _parts(tmp_path, **engine):
    from editing.core import EditParts

    request = small_edit(tmp_path, "kf", frames=5, **engine)
    return EditParts.of(request), request


def _frames(request):
    from editing.video_io import read_clip

    return read_clip(request.video, request.selection, request.limits).frames


def test_keyframes_of_the_output_are_the_joint_keyframe_edit(tmp_path, tiny):
    """The core with --keyframes 2 returns, at frames 0, 2 and 4, exactly what editing those three frames
    together gives; the other frames come from propagation."""
    from editing.core import edit_frames
    from editing.staging import edit_clip

    parts, request = _parts(tmp_path, keyframes="2")
    frames = _frames(request)
    edited = edit_clip(frames, parts, tiny)
    assert edited.keyframes == (0, 2, 4) and edited.frames.shape == frames.shape
    alone = edit_frames(
        frames[[0, 2, 4]], dataclasses.replace(parts, engine=dataclasses.replace(parts.engine, keyframes=None)), tiny
    )
    np.testing.assert_array_equal(edited.frames[[0, 2, 4]], alone.frames)


def test_propagation_spends_unet_calls_only_on_keyframes_and_unseen_regions(tmp_path, tiny):
    from editing.core import edit_frames

    parts, _ = _parts(tmp_path, keyframes="4", keyframe_refine=1.0)  # both of the 2 steps (t = 501, 1)
    frames = panning_clip(6, step=(8, 0))  # frame 5 sees an 8 px strip at its edge that no keyframe has
    counter = UnetImages(tiny.unet)
    with counter.counting():
        keyframes = edit_keyframes(frames, parts, tiny, keys=(0, 4))
    assert counter.images > 0
    keyframe_cost, counter.images = counter.images, 0
    none_refined = dataclasses.replace(parts, engine=dataclasses.replace(parts.engine, keyframe_refine=0.0))
    with counter.counting():
        unrefined = propagate(frames, keyframes, none_refined, tiny)
    assert counter.images == 0
    with counter.counting():
        refined = propagate(frames, keyframes, parts, tiny)
    flows = clip_flows(frames)
    holes = [f for f in (1, 2, 3, 5) if _wide(fuse_frame(f, keyframes, flows).unseen, tiny).any()]
    # each refined frame: two steps x 2 guidance branches, plus its group's keyframe anchor
    groups = {fuse_frame(f, keyframes, flows).nearest for f in holes}
    assert holes, "the clip should have disoccluded pixels to refine"
    assert counter.images == 2 * 2 * (len(holes) + len(groups))
    for frame in range(6):
        if frame in holes:
            mask = composite_mask(fuse_frame(frame, keyframes, flows).unseen)
            np.testing.assert_array_equal(refined[frame][mask == 0], unrefined[frame][mask == 0])  # every seen pixel
        else:
            np.testing.assert_array_equal(refined[frame], unrefined[frame])
    # a whole clip edited every frame costs more than keyframes + refinement
    with counter.counting():
        counter.images = 0
        edit_frames(frames, dataclasses.replace(parts, engine=dataclasses.replace(parts.engine, keyframes=None)), tiny)
    assert counter.images > keyframe_cost


def _wide(unseen: np.ndarray, backbone) -> np.ndarray:
    """The unseen pixels that are re-diffused: not in a region narrower than a latent pixel."""
    return unseen & ~narrow_regions(unseen, backbone.vae_scale_factor / 2)


def test_unseen_regions_narrower_than_a_latent_pixel_are_inpainted_not_rediffused(tmp_path, tiny):
    """A pan of 2 px a frame: keyframes 0 and 4 leave only strips 1 or 2 px wide unseen. Refinement
    spends no UNet evaluation on them; they take the colours of their seen neighbours (Telea), and every
    seen pixel is the unrefined propagation's."""
    parts, _ = _parts(tmp_path, keyframes="4", keyframe_refine=1.0)  # a refinement with UNet steps (t = 501, 1)
    frames = panning_clip(6)
    keyframes = edit_keyframes(frames, parts, tiny, keys=(0, 4))
    flows = clip_flows(frames)
    unseen = {f: fuse_frame(f, keyframes, flows).unseen for f in (1, 2, 3, 5)}
    assert any(u.any() for u in unseen.values()) and not any(_wide(u, tiny).any() for u in unseen.values())
    none_refined = dataclasses.replace(parts, engine=dataclasses.replace(parts.engine, keyframe_refine=0.0))
    unrefined = propagate(frames, keyframes, none_refined, tiny)
    counter = UnetImages(tiny.unet)
    with counter.counting():
        refined = propagate(frames, keyframes, parts, tiny)
    assert counter.images == 0
    for frame, mask in unseen.items():
        np.testing.assert_array_equal(refined[frame][~mask], unrefined[frame][~mask])
    changed = [f for f, mask in unseen.items() if not np.array_equal(refined[f][mask], unrefined[f][mask])]
    assert changed
    import cv2

    kernel = np.ones((7, 7), np.uint8)  # the seen pixels within 3 px: the range a fill from them keeps to
    for frame in changed:
        seen = ~unseen[frame][..., None]
        high = cv2.dilate(np.where(seen, refined[frame], 0).astype(np.uint8), kernel).astype(int)
        low = cv2.erode(np.where(seen, refined[frame], 255).astype(np.uint8), kernel).astype(int)
        colours = refined[frame][unseen[frame]].astype(int)
        assert (colours >= low[unseen[frame]] - 4).all() and (colours <= high[unseen[frame]] + 4).all()


def test_a_preview_of_keyframes_only_propagates_nothing_and_shows_the_same_frames(tmp_path, tiny):
    """decode_frames naming keyframes only (the first-frame preview) skips propagation and refinement; the
    frames it returns are the full edit's."""
    from editing.staging import edit_clip

    parts, _ = _parts(tmp_path, keyframes="4", keyframe_refine=1.0)
    frames = panning_clip(6, step=(8, 0))  # keyframes 0 and 4; frame 5 has a strip 8 px wide to refine
    counter = UnetImages(tiny.unet)
    with counter.counting():
        full = edit_clip(frames, parts, tiny)
    full_cost, counter.images = counter.images, 0
    with counter.counting():
        preview = edit_clip(frames, dataclasses.replace(parts, decode_frames=(0, 4)), tiny)
    assert full.seconds["refine"] > 0 and preview.seconds["refine"] == preview.seconds["propagate"] == 0
    assert 0 < counter.images < full_cost
    np.testing.assert_array_equal(preview.frames, full.frames[[0, 4]])
    propagated = edit_clip(frames, dataclasses.replace(parts, decode_frames=(0, 5)), tiny)  # frame 5 still propagates
    np.testing.assert_array_equal(propagated.frames, full.frames[[0, 5]])


def _translation_flows(frames: int, size: int, dx: int, invalid_columns: int = 0) -> ClipFlows:
    """Exact flows of a scene moving by (-dx, 0) per frame: frame i+1 at x came from frame i at x + dx;
    the last `invalid_columns` columns of every hop fail the forward-backward check."""
    backward = np.zeros((frames - 1, size, size, 2), np.float32)
    backward[..., 0] = dx
    valid = np.ones((frames - 1, size, size), bool)
    if invalid_columns:
        valid[:, :, -invalid_columns:] = False
    return ClipFlows(backward, -backward, valid, valid.copy())


def test_carry_forward_moves_a_revealed_region_with_the_scene_instead_of_remaking_it():
    """What frame t-1 shows of frame t's unseen pixels is carried along the one-hop flow; the seen pixels,
    and unseen pixels the previous frame cannot see either, are left as they are."""
    size, dx = 16, 2
    rng = np.random.default_rng(0)
    out = rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    before = out.copy()
    unseen = {f: np.zeros((size, size), bool) for f in (1, 2, 3)}
    for frame in unseen:
        unseen[frame][:, -6:] = True  # the right edge: new to the keyframe in every frame
    carry_forward(out, unseen, _translation_flows(4, size, dx, invalid_columns=1))
    for frame in (1, 2, 3):
        take = unseen[frame].copy()
        take[:, -dx:] = False  # its source is outside the previous frame
        take[:, -1:] = False  # its hop fails the check
        xs = np.arange(size)[take[0]]
        # frame order: frame t takes frame t-1's pixels after t-1 took its own
        np.testing.assert_array_equal(out[frame][:, xs], out[frame - 1][:, xs + dx])
        np.testing.assert_array_equal(out[frame][~take], before[frame][~take])
    np.testing.assert_array_equal(out[0], before[0])


def test_a_revealed_region_is_refined_once_and_carried_through_the_later_frames(tmp_path, tiny):
    """Keyframe 0 of a pan: every later frame reveals a strip at its edges. A strip revealed at frame t
    and still in view at t+1 is, at t+1, frame t's output moved along the source's flow, not a new
    re-diffusion (which would differ from frame to frame)."""
    parts, _ = _parts(tmp_path, keyframes="8", keyframe_refine=0.5)
    frames = panning_clip(5, step=(8, 0))
    keyframes = edit_keyframes(frames, parts, tiny, keys=(0,))
    out = propagate(frames, keyframes, parts, tiny)
    flows = clip_flows(frames)
    height, width = frames.shape[1:3]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    checked = 0
    for frame in range(2, 5):
        hop = flows.backward[frame - 1]
        sx, sy = x + hop[..., 0], y + hop[..., 1]
        inside = (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
        take = fuse_frame(frame, keyframes, flows).unseen & flows.backward_valid[frame - 1] & inside
        carried = np.clip(remap(out[frame - 1].astype(np.float32), sx, sy).round(), 0, 255)
        np.testing.assert_array_equal(out[frame][take], carried[take])
        checked += int(take.sum())
    assert checked > 0, "the pan should reveal pixels that the next frame still shows"


def test_what_the_previous_frame_will_carry_is_not_rediffused(tmp_path, tiny):
    """Keyframe 0 of a pan: frame t's unseen region is the strips revealed at frames 1 to t. All but the
    newest strip are carried from frame t-1 after refinement (`carry_forward`), so only the newest is
    re-diffused: refining the rest would be overwritten."""
    from editing.keyframes import _to_rediffuse

    parts, _ = _parts(tmp_path, keyframes="8", keyframe_refine=0.5)
    frames = panning_clip(5, step=(8, 0))
    keyframes = edit_keyframes(frames, parts, tiny, keys=(0,))
    flows = clip_flows(frames)
    fused = {f: fuse_frame(f, keyframes, flows) for f in range(1, 5)}
    chosen, _ = _to_rediffuse(frames.copy(), fused, flows, tiny.vae_scale_factor)
    for frame in range(2, 5):
        take = carried(flows, frame, fused[frame].unseen)
        assert take.any()
        assert not (chosen[frame].unseen & take).any()
        assert chosen[frame].unseen.any()  # the newest strip


def test_keyframes_refuse_what_they_cannot_run_yet(tmp_path, tiny):
    from editing.staging import edit_clip

    parts, request = _parts(tmp_path, keyframes="2")
    with pytest.raises(ConfigError, match="keyframes"):
        edit_clip(_frames(request), dataclasses.replace(parts, tuned=str(tmp_path / "t.safetensors")), tiny)


def test_cli_edit_with_keyframes_reports_them(tmp_path):
    out = tmp_path / "kf.mp4"
    command = [
        sys.executable,
        "-m",
        "editing",
        "edit",
        str(ROOT / "assets" / "car-turn.mp4"),
        "--prompt",
        "a red car",
        "--model",
        "tiny",
    ]
    command += [
        "--steps",
        "2",
        "--frames",
        "5",
        "--stride",
        "4",
        "--size",
        "64",
        "--keyframes",
        "auto",
        "--out",
        str(out),
        "--json",
    ]
    command += ["--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["keyframes"][0] == 0 and result["frames"] == 5 and out.exists()
    bad = subprocess.run(
        command[:-6] + ["--keyframes", "1", "--out", str(tmp_path / "x.mp4")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert bad.returncode != 0 and "keyframes" in bad.stderr and "Traceback" not in bad.stderr
