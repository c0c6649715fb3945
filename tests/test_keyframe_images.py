"""Edited keyframes the user supplies (AnyV2V): reading, fitting, anchoring, and the video following them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from editing.config import EngineConfig, KeyframeImage
from editing.errors import ConfigError
from editing.images import fit_image, read_image

from .conftest import small_edit


def _png(path, array) -> str:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


def test_keyframe_image_parses_index_equals_path_and_names_itself_when_wrong():
    assert KeyframeImage.parse("0=first_edited.png") == KeyframeImage(0, "first_edited.png")
    assert KeyframeImage.parse(" 12 = a=b.png") == KeyframeImage(12, "a=b.png")
    for bad in ("first.png", "x=first.png", "-1=a.png", "3="):
        with pytest.raises(ConfigError, match="keyframe_image"):
            KeyframeImage.parse(bad)
    with pytest.raises(ConfigError, match="keyframe_image index may appear once"):
        EngineConfig(keyframe_images=(KeyframeImage(0, "a.png"), KeyframeImage(0, "b.png")))


def test_the_schema_gives_the_cli_and_api_the_option(tmp_path):
    from editing.requests import build_request

    values = {"video": "clip.mp4", "out": "o.mp4", "prompt": "p", "model": "tiny"}
    request = build_request("edit", values | {"keyframe_image": ["0=a.png", "4=b.png"], "keyframe_fit": "crop"})
    assert request.engine.keyframe_images == (KeyframeImage(0, "a.png"), KeyframeImage(4, "b.png"))
    assert request.engine.keyframe_fit == "crop"
    with pytest.raises(ConfigError, match="keyframe_fit"):
        build_request("edit", values | {"keyframe_fit": "stretch"})


def test_only_images_are_read_and_a_failure_is_one_sentence(tmp_path):
    good = read_image(_png(tmp_path / "ok.png", np.full((6, 8, 3), 7)), "keyframe_image 0")
    assert good.shape == (6, 8, 3) and good.dtype == np.uint8 and (good == 7).all()
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "page.png").write_text("<html><script>alert(1)</script></html>")
    for name in ("noise.png", "page.png", "missing.png"):
        with pytest.raises(ConfigError, match="keyframe_image 0") as error:
            read_image(tmp_path / name, "keyframe_image 0")
        assert str(tmp_path) not in str(error.value) and "\n" not in str(error.value)
    Image.new("RGB", (4, 4)).save(tmp_path / "anim.gif")
    with pytest.raises(ConfigError, match="PNG, JPEG"):
        read_image(tmp_path / "anim.gif", "keyframe_image 0")


def test_an_image_of_another_size_is_refused_or_fitted_with_one_sentence():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # a white middle half
    with pytest.raises(ConfigError, match="80x40 but the clip's frames are 64x64"):
        fit_image(image, 64, 64, "refuse", "keyframe_image 0")
    same, note = fit_image(image, 80, 40, "refuse", "keyframe_image 0")
    assert same is image and note is None
    resized, note = fit_image(image, 64, 64, "resize", "keyframe_image 0")
    assert resized.shape == (64, 64, 3) and "resized" in note
    cropped, note = fit_image(image, 64, 64, "crop", "keyframe_image 0")
    assert cropped.shape == (64, 64, 3) and "centre-cropped" in note
    assert cropped[:, 16:48].min() > 200  # the middle half, scaled to cover, fills the centre of the crop


def _run(tmp_path, tiny, frames=4, **engine):
    from editing.core import EditParts
    from editing.staging import edit_clip
    from editing.video_io import read_clip

    request = small_edit(tmp_path, "pin", frames=frames, **engine)
    clip = read_clip(request.video, request.selection, request.limits).frames
    return clip, edit_clip(clip, EditParts.of(request), tiny)


def test_the_supplied_frame_is_the_output_frame(tmp_path, tiny):
    red = _png(tmp_path / "red.png", np.tile(np.array([200, 30, 30], np.uint8), (64, 64, 1)))
    clip, edited = _run(tmp_path, tiny, keyframe_images=(KeyframeImage(0, red),))
    np.testing.assert_array_equal(edited.frames[0], np.asarray(Image.open(red)))
    assert not np.array_equal(edited.frames[1], edited.frames[0])


def test_supplying_the_source_frame_itself_starts_from_the_source():
    """guided_start warps the supplied frame onto the others: with the unedited frame 0 supplied, what is
    inverted is the source again (up to resampling where the flow is trusted)."""
    from editing.pinned import guided_start

    from .test_keyframes import panning_clip

    clip = panning_clip(5)
    start = guided_start(clip, ((0, clip[0]),))
    np.testing.assert_array_equal(start[0], clip[0])
    inner = (slice(None), slice(12, 52), slice(12, 52))
    assert np.abs(start[inner].astype(int) - clip[inner].astype(int)).mean() < 3
    red = np.tile(np.array([200, 30, 30], np.uint8), (64, 64, 1))
    assert (guided_start(clip, ((0, red),))[inner] == red[12:52, 12:52]).all(-1).mean() > 0.9


def test_other_frames_see_the_supplied_frame_through_the_start_and_cross_frame_attention(tmp_path, tiny):
    """Given the same start, a supplied frame 0 changes the others only through cross-frame attention:
    with `--attention none`, not at all."""
    from editing.core import EditParts, edit_frames
    from editing.pinned import guided_start
    from editing.video_io import read_clip

    red_image = np.tile(np.array([200, 30, 30], np.uint8), (64, 64, 1))
    red = _png(tmp_path / "red.png", red_image)
    for attention, same in (("none", True),):
        request = small_edit(tmp_path, "pin", frames=4, attention=attention, keyframe_images=(KeyframeImage(0, red),))
        clip = read_clip(request.video, request.selection, request.limits).frames
        parts = EditParts.of(request)
        supplied = edit_frames(clip, parts, tiny)
        plain = dataclasses.replace(
            parts,
            engine=dataclasses.replace(parts.engine, keyframe_images=()),
            edit=dataclasses.replace(parts.edit, guidance=1.0),
        )
        alone = edit_frames(clip, plain, tiny, start=guided_start(clip, ((0, red_image),)))
        difference = np.abs(supplied.frames[1:].astype(int) - alone.frames[1:].astype(int))
        assert difference.max() <= 1, (attention, difference.mean())


def test_the_supplied_frame_follows_its_own_inversion_path_at_every_step():
    """Pinning puts the supplied frame's latents on its recorded path: the start, then after step i the
    state one step cleaner, ending at its clean latents; other frames are left as the step made them."""
    import torch

    from editing.pinned import Pinning

    states = torch.arange(4 * 2 * 4 * 2 * 2, dtype=torch.float32).reshape(4, 2, 4, 2, 2)  # 3 steps, frames 1 and 3 pinned
    pinning = Pinning([1, 3], states)
    latents = torch.zeros(5, 4, 2, 2)
    started = pinning.start(latents)
    torch.testing.assert_close(started[[1, 3]], states[-1])
    assert not started[[0, 2, 4]].any() and not latents.any()
    seen = []
    step = pinning.wrap(lambda i, t, x: seen.append(i) or x + 1)
    for index in range(3):
        after = step(index, 0, latents)
        torch.testing.assert_close(after[[1, 3]], states[-2 - index])
        assert (after[[0, 2, 4]] == 1).all()
    torch.testing.assert_close(after[[1, 3]], states[0])  # clean at the end
    assert seen == [0, 1, 2]


def test_a_supplied_frame_becomes_a_keyframe_and_out_of_range_is_refused(tmp_path, tiny):
    red = _png(tmp_path / "red.png", np.tile(np.array([200, 30, 30], np.uint8), (64, 64, 1)))
    clip, edited = _run(tmp_path, tiny, frames=5, keyframes="4", keyframe_images=(KeyframeImage(2, red),))
    assert edited.keyframes == (0, 2, 4)
    np.testing.assert_array_equal(edited.frames[2], np.asarray(Image.open(red)))
    with pytest.raises(ConfigError, match="keyframe_image 7 names frame 7, but the clip has frames 0 to 4"):
        _run(tmp_path, tiny, frames=5, keyframe_images=(KeyframeImage(7, red),))
    with pytest.raises(ConfigError, match="keyframe_image 7"):
        _run(tmp_path, tiny, frames=5, keyframes="2", keyframe_images=(KeyframeImage(7, red),))


def test_the_shapes_model_makes_the_clip_follow_a_colour_changed_only_in_the_supplied_frame(tmp_path):
    """Frame 0 replaced by its target render (the first object recoloured), the prompt left as the source
    caption: the judge sees the new colour on the other frames, which it does not without the image."""
    from editing.config import EditConfig
    from editing.core import EditParts, edit_frames
    from editing.models import load_backbone
    from shapes_world.benchmark import benchmark_clip, derive_edits, edit_accuracy
    from shapes_world.world import render, scene_at

    backbone = load_backbone("shapes", device="cpu")
    clip = benchmark_clip(0)
    edit = next(e for e in derive_edits(clip) if e.kind == "colour")
    target = _png(tmp_path / "target0.png", render(scene_at(edit.target, clip.motions, 0))[0])
    shares = {}
    for supplied in ((), (KeyframeImage(0, target),)):
        engine = EngineConfig(inversion_prompt=edit.source_prompt, cache_dir=str(tmp_path / "cache"), keyframe_images=supplied)
        parts = EditParts(EditConfig(prompt=edit.source_prompt, steps=10, guidance=5.0), engine)
        out = edit_frames(clip.frames, parts, backbone).frames
        shares[bool(supplied)] = edit_accuracy(out[1:], clip.masks[1:], edit)
    assert shares[False] < 0.5 <= shares[True], shares
