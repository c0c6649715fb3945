"""Refinement of unseen regions in crops (editing.keyframes.refine): boxes, crop-sized model inputs, the
seen pixels kept, and the whole-frame path where a box would cover the frame."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from editing.keyframes import (
    Box,
    Fused,
    Keyframes,
    composite_mask,
    latent_mask,
    refine,
    refine_boxes,
    refine_clips,
    unet_multiple,
)

from .conftest import small_edit
from .test_keyframes import panning_clip


def test_a_small_hole_gets_an_aligned_box_with_context_inside_the_frame():
    mask = np.zeros((32, 32), bool)
    mask[3:5, 20:22] = True
    (box,) = refine_boxes(mask, multiple=8, context=2)
    assert box.height == box.width == 8 and 0 <= box.top and box.left + box.width <= 32
    assert box.top <= 1 and box.top + box.height >= 7 and box.left <= 18 and box.left + box.width >= 24  # the context


def test_far_apart_holes_get_disjoint_boxes_and_holes_everywhere_the_whole_frame():
    mask = np.zeros((32, 32), bool)
    mask[2, 2] = mask[28, 28] = True
    boxes = refine_boxes(mask, multiple=8, context=1)
    assert len(boxes) == 2 and not boxes[0].overlaps(boxes[1])
    assert all(box.area == 64 for box in boxes)
    for y, x in ((2, 2), (28, 28)):
        assert (
            sum(box.rows().start <= y < box.rows().stop and box.columns().start <= x < box.columns().stop for box in boxes) == 1
        )
    mask[::6, ::6] = True
    assert refine_boxes(mask, multiple=8, context=1) == [Box(0, 0, 32, 32)]


def test_close_holes_share_one_box():
    mask = np.zeros((32, 32), bool)
    mask[10, 10] = mask[10, 16] = True
    (box,) = refine_boxes(mask, multiple=4, context=2)
    assert box.columns().start <= 8 and box.columns().stop >= 19


class Shapes:
    """The spatial sizes of what the autoencoder's encoder (images) and decoder and the UNet (latents) are given."""

    def __init__(self, backbone):
        self.modules = {"encoder": backbone.vae.encoder, "decoder": backbone.vae.decoder, "unet": backbone.unet}
        self.seen: dict[str, set] = {name: set() for name in self.modules}

    @contextlib.contextmanager
    def watching(self):
        def hook(name):
            def record(module, args, kwargs):
                sample = args[0] if args else kwargs["sample"]
                self.seen[name].add(tuple(sample.shape[-2:]))

            return record

        handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in self.modules.items()]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _case(tmp_path, unseen: np.ndarray, share: float = 1.0):
    """A two-frame refinement; `share` 1 re-runs both of small_edit's 2 steps (t = 501, 1), 0.5 the last (t = 1)."""
    from editing.core import EditParts

    frames = panning_clip(2, size=128)
    parts = EditParts.of(small_edit(tmp_path, "crop", keyframes="4", keyframe_refine=share))
    keyframes = Keyframes((0,), frames[:1])
    return frames, keyframes, {1: Fused(frames[1], unseen, 0)}, parts


def test_a_small_hole_is_refined_in_a_crop_and_every_seen_pixel_kept(tmp_path, tiny):
    unseen = np.zeros((128, 128), bool)
    unseen[20:26, 90:97] = True
    frames, keyframes, fused, parts = _case(tmp_path, unseen)
    out = frames.copy()
    shapes = Shapes(tiny)
    with shapes.watching(), torch.inference_mode():
        refine(out, keyframes, fused, parts, tiny, lambda *a: None)
    scale = tiny.vae_scale_factor
    crop = 2 * unet_multiple(tiny) * scale  # the hole and its context fit in two multiples
    assert shapes.seen["encoder"] == {(crop, crop)} and crop < 128
    assert shapes.seen["unet"] == shapes.seen["decoder"] == {(crop // scale, crop // scale)}
    np.testing.assert_array_equal(out[1][~unseen], frames[1][~unseen])
    np.testing.assert_array_equal(out[0], frames[0])
    assert not np.array_equal(out[1][unseen], frames[1][unseen])


def test_a_refinement_from_almost_no_noise_is_the_crop_through_the_autoencoder_alone(tmp_path, tiny):
    """The last step of a schedule (t = 1, noise std 0.04) cannot change the latents it is given: such a
    refinement runs no UNet call and no keyframe encode, and pastes the crop's autoencoder round trip."""
    from editing import sampling
    from editing.keyframes import Refiner

    unseen = np.zeros((128, 128), bool)
    unseen[20:26, 90:97] = True
    frames, keyframes, fused, parts = _case(tmp_path, unseen, share=0.5)
    assert not Refiner.of(parts, tiny).draws and Refiner.of(_case(tmp_path, unseen)[3], tiny).draws
    out = frames.copy()
    shapes = Shapes(tiny)
    encoded = []
    with shapes.watching(), torch.inference_mode():
        hook = tiny.vae.encoder.register_forward_pre_hook(lambda module, args: encoded.append(len(args[0])))
        try:
            refine(out, keyframes, fused, parts, tiny, lambda *a: None)
        finally:
            hook.remove()
        crop = 2 * unet_multiple(tiny) * tiny.vae_scale_factor
        (clip,) = refine_clips(fused, tiny.vae_scale_factor, unet_multiple(tiny))
        rows, columns = clip.box.rows(tiny.vae_scale_factor), clip.box.columns(tiny.vae_scale_factor)
        latents = sampling.encode_frames(tiny, frames[1:, rows, columns], parts.engine.chunk)
        trip = sampling.decode_latents(tiny, latents, parts.engine.chunk)[0].astype(np.float32)
    assert not shapes.seen["unet"] and encoded == [1]  # the member's crop alone
    assert shapes.seen["encoder"] == {(crop, crop)}
    soft = composite_mask(unseen)[rows, columns, None]
    expected = np.clip((soft * trip + (1 - soft) * frames[1, rows, columns]).round(), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[1, rows, columns], expected)
    np.testing.assert_array_equal(out[1][~unseen], frames[1][~unseen])
    assert not np.array_equal(out[1][unseen], frames[1][unseen])


def _whole_frame_refine(out, fused, parts, backbone):
    """The path before crops, for comparison: the group [keyframe, members] encoded, denoised and decoded whole."""
    from editing import sampling
    from editing.keyframes import Refiner

    refiner = Refiner.of(parts, backbone)
    (frame,) = fused
    clip = np.stack([out[fused[frame].nearest], out[frame]])
    clean = sampling.encode_frames(backbone, clip, parts.engine.chunk)
    keep = torch.from_numpy(~np.stack([np.zeros(clean.shape[-2:], bool), latent_mask(fused[frame].unseen, 8)]))[:, None]
    noise = sampling.shared_noise(tuple(clean.shape), parts.edit.seed, clean.device, clean.dtype)
    noising, following = backbone.scheduler(), [*(int(t) for t in refiner.timesteps[1:]), None]

    def hold(index, timestep, latents):
        target = clean if following[index] is None else sampling.noise_to_timestep(noising, clean, noise, following[index])
        return torch.where(keep, target, latents)

    start = sampling.noise_to_timestep(noising, clean, noise, refiner.timesteps[0])
    plan = sampling.plan_frames(2, parts.engine.chunk, "first")
    schedule = sampling.Schedule(refiner.scheduler, refiner.timesteps)
    latents = sampling.denoise(
        backbone, schedule, start, refiner.guidance, plan, sampling.LoopHooks(callback=hold, seed=parts.edit.seed)
    )
    decoded = sampling.decode_latents(backbone, latents, parts.engine.chunk, (1,))[0].astype(np.float32)
    soft = composite_mask(fused[frame].unseen)[..., None]
    return np.clip((soft * decoded + (1 - soft) * out[frame].astype(np.float32)).round(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("spread", [False, True])
def test_where_the_boxes_would_cover_the_frame_the_whole_frame_is_refined_as_before(tmp_path, tiny, spread):
    unseen = np.zeros((128, 128), bool)
    if spread:
        unseen[::40, ::40] = True  # small holes all over: their boxes together cover the frame
    else:
        unseen[10:118, 10:118] = True
    frames, keyframes, fused, parts = _case(tmp_path, unseen)
    out = frames.copy()
    shapes = Shapes(tiny)
    with shapes.watching(), torch.inference_mode():
        refine(out, keyframes, fused, parts, tiny, lambda *a: None)
        expected = _whole_frame_refine(frames.copy(), fused, parts, tiny)
    assert shapes.seen["encoder"] == {(128, 128)}
    np.testing.assert_array_equal(out[1], expected)


def test_a_frames_crops_are_its_own_whichever_frames_share_its_keyframe():
    """Frames near keyframe 4 with holes close enough that one box would cover both: each is refined in
    the box around its own hole, the same as when it is refined alone (a segment of the clip on another
    worker), not in one covering both; frames whose holes give the same box share one re-diffusion."""
    frame = np.zeros((64, 64, 3), np.uint8)

    def fused(*corners: tuple[int, int]) -> Fused:
        unseen = np.zeros((64, 64), bool)
        for y, x in corners:
            unseen[y : y + 3, x : x + 3] = True
        return Fused(frame, unseen, nearest=4)

    together = {2: fused((2, 2)), 3: fused((26, 26)), 5: fused((2, 2))}
    clips = refine_clips(together, scale=4, multiple=4)
    for member in together:
        alone = refine_clips({member: together[member]}, scale=4, multiple=4)
        assert [c.box for c in clips if member in c.members] == [c.box for c in alone]
    assert sorted(c.members for c in clips) == [(2, 5), (3,)] and all(c.key == 4 for c in clips)
