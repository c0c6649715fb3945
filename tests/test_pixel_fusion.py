"""Pixel-space flow fusion (Rerender-style, `--smooth pixel`): the fusion of frames, the split of a step
into clean latents and noise, occlusion masks, and edits through the engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from editing.config import EditConfig, EngineConfig, FrameSelection
from editing.core import EditParts, edit_frames
from editing.errors import ConfigError
from editing.flows import source_flows
from editing.temporal import PixelFusion, fuse_frames, make_pixel_fusion_callback, split_step, step_alphas, vae_codec
from shapes_world.world import occlusion_clip


def frames_and_flows(count=3, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((count, 3, size, size), generator=generator) * 2 - 1
    backward = torch.rand((count - 1, size, size, 2), generator=generator) * 4 - 2
    valid = torch.rand((count - 1, size, size), generator=generator) > 0.3
    return images, backward, valid


def test_fusing_at_strength_zero_changes_nothing():
    images, backward, valid = frames_and_flows()
    assert torch.equal(fuse_frames(images, backward, valid, 0.0), images)


def test_pixels_failing_the_check_keep_their_own_value_and_the_first_frame_is_kept():
    images, backward, valid = frames_and_flows()
    fused = fuse_frames(images, backward, valid, 0.8)
    assert torch.equal(fused[0], images[0])
    for t in range(1, len(images)):
        assert torch.equal(fused[t][:, ~valid[t - 1]], images[t][:, ~valid[t - 1]])
        assert not torch.equal(fused[t][:, valid[t - 1]], images[t][:, valid[t - 1]])


def test_full_strength_with_zero_flow_carries_the_first_frame_down_the_clip():
    images, _, _ = frames_and_flows(count=4)
    fused = fuse_frames(images, torch.zeros(3, 16, 16, 2), torch.ones(3, 16, 16, dtype=torch.bool), 1.0)
    assert all(torch.allclose(frame, images[0], atol=1e-5) for frame in fused)


def test_the_occlusion_mask_excludes_every_pixel_failing_the_forward_backward_check():
    """On an occlusion clip of the shapes world, every pixel the fusion may touch passes
    |b + f(x + b)|^2 < rel (|b|^2 + |f(x + b)|^2) + abs, and the disoccluded pixels are excluded."""
    import cv2

    clip = occlusion_clip(1005)
    flows = source_flows(clip.frames)
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    for t in range(flows.num_frames - 1):
        back, fore = flows.backward[t], flows.forward[t]
        there = cv2.remap(fore, xs + back[..., 0], ys + back[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        passes = np.square(back + there).sum(-1) < 0.01 * (np.square(back).sum(-1) + np.square(there).sum(-1)) + 0.5
        assert not (flows.valid[t] & ~passes).any()
    assert (~flows.valid).any(), "the object passing behind the other one breaks the flow somewhere"
    images = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    fused = fuse_frames(images, torch.from_numpy(flows.backward), torch.from_numpy(flows.valid), 1.0)
    for t in range(1, len(images)):
        assert torch.equal(
            fused[t][:, ~torch.from_numpy(flows.valid[t - 1])], images[t][:, ~torch.from_numpy(flows.valid[t - 1])]
        )


@pytest.mark.parametrize("index", [0, 5, 9])
def test_a_ddim_step_splits_into_the_clean_latents_and_noise_the_scheduler_used(index):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    scheduler.set_timesteps(10)
    timestep = scheduler.timesteps[index]
    generator = torch.Generator().manual_seed(index)
    x_t, eps = torch.randn(2, 2, 4, 8, 8, dtype=torch.float64, generator=generator)
    output = scheduler.step(eps, timestep, x_t)
    alphas = step_alphas(scheduler, scheduler.timesteps)
    clean, noise = split_step(x_t, output.prev_sample, alphas[index], alphas[index + 1])
    # the clean latents divide by sqrt(alpha_bar), about 0.07 at the first step: rounding grows 14-fold
    assert torch.allclose(clean, output.pred_original_sample, atol=1e-5) and torch.allclose(noise, eps, atol=1e-6)
    with pytest.raises(ValueError, match="alpha_bar"):
        split_step(x_t, x_t, 0.5, 0.4)


def test_pixel_fusion_settings_are_checked():
    with pytest.raises(ConfigError, match="strength"):
        PixelFusion(strength=1.5)
    with pytest.raises(ConfigError, match="start"):
        PixelFusion(start=1.0)


def _callback_run(tiny, latents_per_step, fusion):
    """The callback's outputs for a sequence of step latents (fed back as the loop does)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny.scheduler().config)
    scheduler.set_timesteps(len(latents_per_step))
    frames = np.zeros((latents_per_step[0].shape[0], 64, 64, 3), np.uint8)
    flows = source_flows(frames)
    callback = make_pixel_fusion_callback(flows, fusion, step_alphas(scheduler, scheduler.timesteps), *vae_codec(tiny, 8))
    return [callback(i, int(t), x) for i, (t, x) in enumerate(zip(scheduler.timesteps, latents_per_step))]


def test_the_callback_at_weight_zero_or_before_its_start_changes_nothing(tiny):
    steps = [torch.randn(3, 4, 8, 8) for _ in range(4)]
    assert _callback_run(tiny, steps, PixelFusion(strength=0.0, start=0.0)) == [None] * 4
    outputs = _callback_run(tiny, steps, PixelFusion(strength=0.8, start=0.5))
    assert outputs[:2] == [None, None] and all(o is not None for o in outputs[2:])
    changed = outputs[3]
    assert torch.allclose(changed[0], steps[3][0], atol=1e-4), "the first frame is never fused"
    assert not torch.allclose(changed[1:], steps[3][1:], atol=1e-3)


def test_the_callback_on_identical_frames_changes_nothing_beyond_rounding(tiny):
    steps = [torch.randn(1, 4, 8, 8).expand(3, -1, -1, -1).clone() for _ in range(3)]
    outputs = _callback_run(tiny, steps, PixelFusion(strength=1.0, start=0.0))
    assert outputs[0] is None  # step 0: its input latents were never seen
    assert all(torch.allclose(o, x, atol=1e-4) for o, x in zip(outputs[1:], steps[1:]))


def _edit(tiny, frames, **engine):
    parts = EditParts(
        EditConfig(prompt="a red circle on a blue background", steps=4, guidance=1.0),
        EngineConfig(attention="first", inversion="none", **engine),
        selection=FrameSelection(size=64),
    )
    return edit_frames(frames, parts, tiny).frames


def test_an_edit_with_pixel_fusion_runs_and_fuses_the_frames_after_the_first(tiny, tmp_path):
    clip = occlusion_clip(1005, frames=4)
    plain = _edit(tiny, clip.frames, cache_dir=str(tmp_path))
    fused = _edit(tiny, clip.frames, cache_dir=str(tmp_path), smooth_pixel=True)
    assert fused.shape == plain.shape == clip.frames.shape
    assert np.abs(fused[0].astype(int) - plain[0]).max() <= 1, "frame 0 attends only to itself and is never fused"
    assert np.abs(fused[1:].astype(int) - plain[1:]).max() > 0, "the later frames are fused"


def test_on_a_static_clip_pixel_fusion_changes_nothing_beyond_rounding(tiny, tmp_path):
    frame = occlusion_clip(1005, frames=2).frames[0]
    static = np.stack([frame] * 4)
    plain = _edit(tiny, static, cache_dir=str(tmp_path))
    fused = _edit(tiny, static, cache_dir=str(tmp_path), smooth_pixel=True)
    assert np.abs(fused.astype(int) - plain).max() <= 1


def test_pixel_fusion_is_an_option_of_the_one_schema():
    from editing.requests import defaults, edit_request

    request = edit_request(defaults("edit") | {"prompt": "p", "video": "v.mp4", "out": "o.mp4", "smooth": "pixel"})
    assert request.engine.smooth_pixel and not request.engine.smooth_flow
    assert dataclasses.replace(request.engine, smooth_pixel=False) == EngineConfig(
        **{**dataclasses.asdict(request.engine), "smooth_pixel": False, "controls": request.engine.controls}
    )
