"""Temporal smoothing: DIS flow on real frames, occlusion masks, warping, latent flow fusion, colour matching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from editing.config import FrameSelection
from editing.errors import ConfigError
from editing.flows import Flows, resize_flow, source_flows
from editing.temporal import FlowFusion, make_flow_fusion_callback, match_colors, warp
from editing.video_io import read_clip


@pytest.fixture(scope="module")
def car_pair(car) -> np.ndarray:
    """Two consecutive real frames (40 and 41) of the turning car, where it moves a few pixels, at 256x256."""
    return read_clip(car, FrameSelection(start=4.0, max_frames=2, size=256)).frames


def as_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1).float()


def lab_stats(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def test_flow_recovers_a_known_translation(car_pair):
    dx, dy = 5, -3
    image, top, left, size = car_pair[0], 16, 16, 224
    previous = image[top : top + size, left : left + size]
    current = image[top - dy : top - dy + size, left - dx : left - dx + size]  # current(x) = previous(x - d)
    flows = source_flows(np.stack([previous, current]))
    assert (flows.num_frames, flows.height, flows.width) == (2, size, size)
    np.testing.assert_allclose(np.median(flows.backward[0].reshape(-1, 2), axis=0), [-dx, -dy], atol=0.5)
    np.testing.assert_allclose(np.median(flows.forward[0].reshape(-1, 2), axis=0), [dx, dy], atol=0.5)
    valid = flows.valid[0]
    assert valid.mean() > 0.9
    # The columns that entered from the left edge had no source in the previous frame.
    assert valid[:, : dx - 1].mean() < 0.1

    region = torch.from_numpy(valid)
    warped_error = (warp(as_tensor(previous), flows.backward[0]) - as_tensor(current)).abs().mean(0)[region].mean()
    unwarped_error = (as_tensor(previous) - as_tensor(current)).abs().mean(0)[region].mean()
    assert warped_error < 0.1 * unwarped_error


def test_real_pair_is_mostly_valid_and_a_pasted_patch_is_not(car_pair):
    assert source_flows(car_pair).valid.mean() > 0.85

    current = car_pair[1].copy()
    current[96:160, 96:160] = car_pair[0][8:72, 184:248]  # content that is nowhere near there in the previous frame
    flows = source_flows(np.stack([car_pair[0], current]))
    patch = flows.valid[0, 96:160, 96:160]
    assert patch.mean() < 0.4
    assert flows.valid.mean() > 0.8

    checked = source_flows(np.stack([car_pair[0], current]), max_color_error=30)
    assert not (checked.valid & ~flows.valid).any()  # the colour check only removes pixels
    assert checked.valid[0, 96:160, 96:160].mean() < patch.mean()

    lenient = source_flows(np.stack([car_pair[0], current]), occlusion_rel=0.5, occlusion_abs=50.0)
    assert lenient.valid.mean() > flows.valid.mean()


def test_source_flows_refuses_bad_input(car_pair):
    with pytest.raises(ValueError, match="N >= 2"):
        source_flows(car_pair[:1])
    with pytest.raises(ValueError, match="uint8"):
        source_flows(car_pair.astype(np.float32))
    with pytest.raises(ConfigError, match="occlusion_abs"):
        source_flows(car_pair, occlusion_abs=-1)


def test_resize_flow_scales_vectors_with_the_resolution():
    flow = np.empty((48, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    half = resize_flow(flow, 24, 32)
    assert half.shape == (24, 32, 2)
    np.testing.assert_allclose(half[..., 0], 1.5, atol=1e-6)
    np.testing.assert_allclose(half[..., 1], -1.0, atol=1e-6)

    narrow = resize_flow(np.stack([flow, 2 * flow]), 48, 16)  # only the width shrinks, by 4
    assert narrow.shape == (2, 48, 16, 2)
    np.testing.assert_allclose(narrow[1, ..., 0], 1.5, atol=1e-6)
    np.testing.assert_allclose(narrow[1, ..., 1], -4.0, atol=1e-6)

    ramp = np.zeros((64, 64, 2), np.float32)
    ramp[..., 0] = np.arange(64, dtype=np.float32)[None, :]  # varies along x
    assert np.allclose(resize_flow(ramp, 32, 32)[..., 0], cv2.resize(ramp[..., 0], (32, 32), interpolation=cv2.INTER_AREA) / 2)


def test_flows_resize_to_latent_resolution(car_pair):
    flows = source_flows(car_pair)
    latent = flows.resized(32, 32)
    assert latent.backward.shape == (1, 32, 32, 2) and latent.valid.shape == (1, 32, 32)
    assert latent.valid.dtype == bool
    expected = cv2.resize(flows.backward[0], (32, 32), interpolation=cv2.INTER_AREA) / 8
    np.testing.assert_allclose(latent.backward[0], expected, atol=1e-5)
    assert abs(latent.valid.mean() - flows.valid.mean()) < 0.05
    assert flows.resized(flows.height, flows.width) is flows


def test_warp_with_zero_flow_is_the_identity():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 4, 9, 11, generator=generator)
    torch.testing.assert_close(warp(images, torch.zeros(9, 11, 2)), images, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp(images[0], np.zeros((9, 11, 2), np.float32)), images[0], atol=1e-5, rtol=0)
    half = images.to(torch.bfloat16)
    assert warp(half, torch.zeros(2, 9, 11, 2)).dtype == torch.bfloat16


def test_warp_by_an_integer_flow_equals_roll_in_the_interior():
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(4, 16, 20, generator=generator)
    dx, dy = 3, -2
    flow = torch.empty(16, 20, 2)
    flow[..., 0], flow[..., 1] = -dx, -dy  # output(x) = image(x - d): the content moves by d
    warped = warp(image, flow)
    rolled = torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
    torch.testing.assert_close(warped[:, : 16 + dy, dx:], rolled[:, : 16 + dy, dx:], atol=1e-5, rtol=0)
    assert not torch.allclose(warped, image)


def test_warp_refuses_a_flow_of_the_wrong_size():
    with pytest.raises(ValueError, match="flow must be"):
        warp(torch.zeros(4, 8, 8), torch.zeros(8, 9, 2))


def latent_flows(count: int, height: int, width: int, seed: int, valid: bool | np.ndarray = True) -> Flows:
    rng = np.random.default_rng(seed)
    backward = rng.uniform(-2, 2, (count - 1, height, width, 2)).astype(np.float32)
    mask = np.broadcast_to(np.asarray(valid, bool), (count - 1, height, width)).copy()
    return Flows(backward, -backward, mask)


def test_fusion_with_strength_zero_changes_nothing():
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    fuse = make_flow_fusion_callback(latent_flows(4, 8, 8, seed=0), FlowFusion(strength=0.0, until=1.0), total_steps=5)
    out = fuse(0, 981, latents)
    assert torch.equal(out, latents)


def test_fusion_stops_after_until():
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    fuse = make_flow_fusion_callback(latent_flows(3, 8, 8, seed=1), FlowFusion(strength=0.5, until=0.5), total_steps=10)
    results = [fuse(step, 1000 - 100 * step, latents) for step in range(10)]
    assert all(isinstance(result, torch.Tensor) for result in results[:5])
    assert all(result is None for result in results[5:])
    assert not torch.allclose(results[0], latents)
    short = make_flow_fusion_callback(latent_flows(3, 8, 8, seed=1), FlowFusion(strength=0.5, until=0.01), total_steps=10)
    assert short(0, 999, latents) is not None and short(1, 899, latents) is None  # the first step always fuses


def test_fusion_of_identical_frames_with_zero_flow_is_the_identity():
    frame = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    latents = frame.expand(5, -1, -1, -1).contiguous()
    flows = Flows(np.zeros((4, 8, 8, 2), np.float32), np.zeros((4, 8, 8, 2), np.float32), np.ones((4, 8, 8), bool))
    out = make_flow_fusion_callback(flows, FlowFusion(strength=0.7, until=1.0), total_steps=3)(0, 999, latents)
    torch.testing.assert_close(out, latents, atol=1e-5, rtol=0)


def test_fusion_at_full_strength_propagates_the_first_frame():
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    original = latents.clone()  # kept before the call, to check the input is not modified in place
    flows = latent_flows(4, 8, 8, seed=2)
    out = make_flow_fusion_callback(flows, FlowFusion(strength=1.0, until=1.0), total_steps=1)(0, 999, latents)
    assert out.dtype == latents.dtype and out.shape == latents.shape
    torch.testing.assert_close(out[0], latents[0])
    for t in range(1, 4):
        torch.testing.assert_close(out[t], warp(out[t - 1], flows.backward[t - 1]))
    # Sequential: frame 2 is frame 0 carried through both flows, not a warp of the original frame 1.
    torch.testing.assert_close(out[2], warp(warp(latents[0], flows.backward[0]), flows.backward[1]))
    assert torch.equal(latents, original) and out.data_ptr() != latents.data_ptr()  # the input is not modified in place


def test_fusion_leaves_invalid_pixels_alone():
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    mask = np.ones((2, 8, 8), bool)
    mask[:, :, :4] = False
    flows = latent_flows(3, 8, 8, seed=3, valid=mask)
    out = make_flow_fusion_callback(flows, FlowFusion(strength=0.5, until=1.0), total_steps=1)(0, 999, latents)
    torch.testing.assert_close(out[:, :, :, :4], latents[:, :, :, :4], atol=0, rtol=0)
    assert not torch.allclose(out[1:, :, :, 4:], latents[1:, :, :, 4:])


def test_fusion_refuses_latents_that_do_not_match_the_flows():
    fuse = make_flow_fusion_callback(latent_flows(3, 8, 8, seed=4), FlowFusion(), total_steps=4)
    with pytest.raises(ValueError, match="do not match"):
        fuse(0, 999, torch.zeros(4, 4, 8, 8))
    with pytest.raises(ValueError, match="total_steps"):
        make_flow_fusion_callback(latent_flows(3, 8, 8, seed=4), FlowFusion(), total_steps=0)


@pytest.mark.parametrize(
    "strength, until, message",
    [(-0.1, 0.5, "strength"), (1.5, 0.5, "strength"), (float("nan"), 0.5, "strength"), (0.5, 0.0, "until"), (0.5, 1.2, "until")],
)
def test_flow_fusion_refuses_out_of_range_settings(strength, until, message):
    with pytest.raises(ConfigError, match=message) as error:
        FlowFusion(strength=strength, until=until)
    assert "\n" not in str(error.value)


def shift_lab(frame: np.ndarray, scale: tuple[float, float, float], offset: tuple[float, float, float]) -> np.ndarray:
    lab = cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    lab = lab * np.float32(scale) + np.float32(offset)
    rgb = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def test_match_colors_restores_the_reference_statistics(car_pair):
    reference, other = car_pair
    tinted = shift_lab(other, (0.8, 1.2, 0.9), (8.0, 6.0, -5.0))
    frames = np.stack([reference, tinted, shift_lab(reference, (1.1, 0.8, 1.2), (-6.0, -4.0, 7.0))])
    target_mean, target_std = lab_stats(reference)
    before_mean, _ = lab_stats(tinted)
    assert np.abs(before_mean - target_mean).max() > 4  # the tint is large enough to matter

    out = match_colors(frames)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert np.array_equal(out[0], reference)
    for matched in out[1:]:
        mean, std = lab_stats(matched)
        np.testing.assert_allclose(mean, target_mean, atol=1.0)
        np.testing.assert_allclose(std, target_std, rtol=0.05, atol=0.5)
    # A recoloured copy of the reference comes back to (nearly) the reference itself.
    assert np.abs(out[2].astype(int) - reference.astype(int)).mean() < 3


def test_match_colors_uses_the_chosen_reference(car_pair):
    frames = np.stack([shift_lab(car_pair[0], (1.0, 1.0, 1.0), (10.0, 0.0, 0.0)), car_pair[1]])
    out = match_colors(frames, reference_index=1)
    assert np.array_equal(out[1], car_pair[1])
    np.testing.assert_allclose(lab_stats(out[0])[0], lab_stats(car_pair[1])[0], atol=1.0)
    with pytest.raises(ValueError, match="out of range"):
        match_colors(frames, reference_index=2)


def test_small_frames_get_their_flow_from_enlarged_copies_and_it_is_closer_to_the_true_motion(car_pair, monkeypatch):
    import editing.flows as flows_module

    assert (
        flows_module.flow_upscale(64, 96) == 4
        and flows_module.flow_upscale(256, 480) == 1
        and flows_module.flow_upscale(100, 100) == 3
    )
    small = cv2.resize(car_pair[0], (80, 80), interpolation=cv2.INTER_AREA)
    dx, dy = 2, 1
    previous, current = small[8:72, 8:72], small[8 - dy : 72 - dy, 8 - dx : 72 - dx]  # current(x) = previous(x - d)
    pair = np.stack([previous, current])

    def error(flows: Flows) -> float:
        inner = flows.backward[0][8:-8, 8:-8].reshape(-1, 2)
        return float(np.abs(inner - [-dx, -dy]).sum(-1).mean())

    enlarged = source_flows(pair)
    assert enlarged.backward.shape == (1, 64, 64, 2)  # in the frames' own pixels
    monkeypatch.setattr(flows_module, "FLOW_MIN_SIDE", 1)  # DIS on the 64 px frames themselves
    native = source_flows(pair)
    assert error(enlarged) < error(native)
    assert error(enlarged) < 0.5


def test_dense_flow_on_enlarged_frames_follows_a_textured_clip_closer_than_the_preset(monkeypatch):
    """The source's own frame 0, carried along the chained flow of a striped shapes clip (64 px, so enlarged
    for DIS), misses the clip's true motion less with a patch at every pixel and less smoothing."""
    import editing.flows as flows_module
    from editing import keyframes as kf
    from shapes_world import benchmark as bench

    def propagated_error(clip) -> float:
        flows = kf.clip_flows(clip.frames)
        keyframes = kf.Keyframes((0,), clip.frames[:1])
        out = clip.frames.copy()
        for t in range(1, len(clip.frames)):
            out[t] = kf.fuse_frame(t, keyframes, flows).frame
        return float(np.nanmean(bench.true_warp_errors(out, clip.flow, clip.masks)))

    clips = [bench.benchmark_clip(i) for i in (4, 8)]
    assert {bench.clip_kind(i) for i in (4, 8)} == {"textured"}
    dense = [propagated_error(clip) for clip in clips]
    monkeypatch.setattr(flows_module, "ENLARGED_PATCH_STRIDE", 3)  # the medium preset's own
    monkeypatch.setattr(flows_module, "ENLARGED_SMOOTHNESS", 20.0)
    preset = [propagated_error(clip) for clip in clips]
    assert all(d < p for d, p in zip(dense, preset)), (dense, preset)


def test_pick_per_pixel_takes_the_candidate_that_explains_each_pixel():
    from editing.flows import pick_per_pixel

    other = np.zeros((12, 12, 3), np.uint8)
    other[:, 6:] = 255
    frame = np.zeros_like(other)
    frame[:, :3] = 255  # the left columns are white in frame, found 6 px to the right in other
    still, moved = np.zeros((12, 12, 2), np.float32), np.zeros((12, 12, 2), np.float32)
    moved[..., 0] = 6.0
    picked = pick_per_pixel([still, moved], frame, other)
    assert (picked[:, :2, 0] == 6).all()  # white from 6 px right (the 3 x 3 blur leaves the edge column mixed)
    assert (picked[:, 4:6, 0] == 0).all()  # black where it is: other's black columns 4-5
    assert pick_per_pixel([moved], frame, other) is moved


def test_colour_candidates_track_an_object_grey_alone_cannot_see():
    """A square whose grey level equals the background's, moving 3 px a frame: DIS on grey sees a flat
    image; with the chroma channels as candidates the flow carries the square, so frame 0 warped along
    it explains frame 1 on the square."""
    size, side, step = 64, 16, 3
    clip = np.full((2, size, size, 3), 128, np.uint8)
    colour = np.array([200, 90, 135], np.uint8)  # grey 0.299 R + 0.587 G + 0.114 B = 128
    assert abs(int(cv2.cvtColor(colour[None, None], cv2.COLOR_RGB2GRAY)[0, 0]) - 128) <= 1
    for t in range(2):
        clip[t, 24 : 24 + side, 20 + t * step : 20 + t * step + side] = colour
    square = np.zeros((size, size), bool)
    square[26 : 22 + side, 22 + step : 18 + step + side] = True  # frame 1's square, 2 px in from its edges

    def error(flows):
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        back = flows.backward[0]
        warped = cv2.remap(clip[0].astype(np.float32), xs + back[..., 0], ys + back[..., 1], cv2.INTER_LINEAR)
        return np.abs(warped - clip[1]).mean(-1)[square].mean()

    grey, colour_flow = error(source_flows(clip)), error(source_flows(clip, colour_candidates=True))
    assert colour_flow < 0.25 * grey


def test_sample_points_reads_any_number_of_points():
    """cv2.remap takes maps under 32767 wide: a region or hole of more pixels than that (60,000 at 512 px)
    made sampling them fail."""
    from editing.flows import sample_points

    image = np.random.default_rng(0).integers(0, 256, (200, 210, 3)).astype(np.uint8)
    ys, xs = np.nonzero(np.ones(image.shape[:2], bool))  # 42,000 points on the pixel grid: their own colours
    assert np.array_equal(sample_points(image, xs, ys), image.reshape(-1, 3).astype(np.float32))
    halves = sample_points(image, xs + 0.5, ys)  # between columns: the mean of the two
    assert np.allclose(halves[:5], (image[0, :5].astype(np.float32) + image[0, 1:6]) / 2)
    assert sample_points(image, xs[:0], ys[:0]).shape == (0, 3)
