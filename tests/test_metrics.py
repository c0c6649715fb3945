"""Quality metrics: warp error on real frames moved by a known shift, PSNR / SSIM by hand and vs skimage, CLIP scores."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from editing.clip_score import load_clip
from editing.config import FrameSelection
from editing.errors import ModelLoadError
from editing.flows import Flows, source_flows
from editing.metrics import (
    clip_scores,
    frame_accuracy,
    frame_consistency,
    frame_psnr_ssim,
    gaussian_window,
    mean_warp_error,
    psnr,
    ssim,
    text_score,
    warp_errors,
)
from editing.video_io import read_clip

SHIFT = (3, -2)  # the camera pans: each frame's window moves 3 px right and 2 px up


@pytest.fixture(scope="module")
def car_frames(car) -> np.ndarray:
    """Four real frames of the car clip, 10 source frames apart, at 128x128."""
    return read_clip(car, FrameSelection(start=2.0, stride=10, max_frames=4, size=128)).frames


@pytest.fixture(scope="module")
def panned(car) -> np.ndarray:
    """A 5-frame clip made by sliding a 160x160 window over one real 256x256 frame: a known, pure translation."""
    image = read_clip(car, FrameSelection(start=4.0, max_frames=2, size=256)).frames[0]
    dx, dy = SHIFT
    top, left, size = 40, 20, 160
    return np.stack([image[top + dy * t : top + dy * t + size, left + dx * t : left + dx * t + size] for t in range(5)])


@pytest.fixture(scope="module")
def random_clip():
    return load_clip("random", device="cpu")


# ---------------------------------------------------------------- warp error


def test_warp_error_is_near_zero_for_a_translated_real_frame(panned):
    errors = warp_errors(panned, panned)
    assert errors.shape == (len(panned) - 1,)
    # Without following the flow, consecutive frames differ a lot; along it they agree to about a grey level.
    unwarped = np.abs(panned[1:].astype(float) - panned[:-1].astype(float)).mean()
    assert unwarped > 10
    assert errors.max() < 1.0
    assert mean_warp_error(errors) == pytest.approx(errors.mean())


def test_warp_error_is_large_when_the_frames_are_shuffled(panned):
    ordered = warp_errors(panned, panned)
    shuffled = warp_errors(panned, panned[[0, 3, 1, 4, 2]])
    assert shuffled.min() > 10 * ordered.max()
    assert mean_warp_error(shuffled) > 5.0


def test_warp_error_ignores_occluded_pixels(panned):
    flows = source_flows(panned)
    assert 0.02 < 1 - flows.valid.mean() < 0.2  # the strip that enters the window each frame, and little else
    noisy = panned.copy()
    hidden = ~flows.valid[-1]  # pixels of the last frame with no source in the one before
    noisy[-1][hidden] = np.random.default_rng(0).integers(0, 256, size=(int(hidden.sum()), 3), dtype=np.uint8)
    # Garbage only where the source flow says "occluded" does not change the error...
    np.testing.assert_allclose(warp_errors(panned, noisy, flows), warp_errors(panned, panned, flows), rtol=1e-9)
    # ...but the same garbage on trackable pixels does.
    moved = panned.copy()
    moved[-1][~hidden] = np.random.default_rng(0).integers(0, 256, size=(int((~hidden).sum()), 3), dtype=np.uint8)
    assert warp_errors(panned, moved, flows)[-1] > 50


def test_warp_error_by_hand_with_zero_flow():
    frames = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (10, 30, 30, 90)])
    flows = Flows(np.zeros((3, 16, 16, 2), np.float32), np.zeros((3, 16, 16, 2), np.float32), np.ones((3, 16, 16), bool))
    np.testing.assert_allclose(warp_errors(frames, frames, flows), [20.0, 0.0, 60.0])
    none_valid = Flows(flows.backward, flows.forward, np.zeros((3, 16, 16), bool))
    errors = warp_errors(frames, frames, none_valid)
    assert np.isnan(errors).all() and math.isnan(mean_warp_error(errors))
    assert mean_warp_error(np.array([1.0, np.nan, 3.0])) == 2.0


def test_warp_error_uses_the_source_flow_at_the_output_size(panned):
    import cv2

    half = np.stack([cv2.resize(frame, (80, 80), interpolation=cv2.INTER_AREA) for frame in panned])
    errors = warp_errors(panned, half)
    unwarped = np.abs(half[1:].astype(float) - half[:-1].astype(float)).mean(axis=(1, 2, 3))
    assert errors.shape == (4,) and (errors < 0.3 * unwarped).all()
    with pytest.raises(ValueError, match="same number"):
        warp_errors(panned, panned[:3])


# ---------------------------------------------------------------- PSNR and SSIM


def test_psnr_by_hand():
    zeros = np.zeros((4, 8, 8, 3), np.uint8)
    assert psnr(zeros, zeros + 10) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE = 100
    assert psnr(zeros, zeros) == math.inf
    half = zeros.copy()
    half[:2] = 20  # MSE = 400 / 2 = 200
    assert psnr(zeros, half) == pytest.approx(10 * math.log10(255**2 / 200))


def test_ssim_by_hand_on_flat_images():
    c1 = (0.01 * 255) ** 2
    x, y = np.full((16, 16), 100, np.uint8), np.full((16, 16), 110, np.uint8)
    # No variance: SSIM reduces to the luminance term times (c2 / c2).
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert ssim(x, y) == pytest.approx(expected, rel=1e-12)
    assert ssim(x, x) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[:10, :10], y[:10, :10])


def test_ssim_window_is_the_standard_gaussian():
    window = gaussian_window()
    assert window.shape == (11,) and window.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(window, window[::-1])
    assert window[5] / window[6] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_psnr_and_ssim_match_skimage_on_real_frames(car_frames):
    a, b = car_frames[0], car_frames[3]
    reference = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert ssim(a, b) == pytest.approx(reference, abs=1e-9)
    grey_a, grey_b = a[..., 1], b[..., 1]
    grey = structural_similarity(grey_a, grey_b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(grey_a, grey_b) == pytest.approx(grey, abs=1e-9)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    clip_psnr, clip_ssim = frame_psnr_ssim(car_frames[:2], car_frames[2:])
    assert clip_psnr == pytest.approx(peak_signal_noise_ratio(car_frames[:2], car_frames[2:], data_range=255))
    assert clip_ssim == pytest.approx((ssim(car_frames[0], car_frames[2]) + ssim(car_frames[1], car_frames[3])) / 2)


# ---------------------------------------------------------------- CLIP scores


def test_clip_scores_by_hand_on_unit_vectors():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    target, source = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert text_score(images, target) == pytest.approx(100 * 2 / 3)
    assert frame_consistency(images) == pytest.approx(0.0)
    assert frame_consistency(images[[0, 2]]) == pytest.approx(100.0)
    assert frame_accuracy(images, target, source) == pytest.approx(100 * 2 / 3)
    assert frame_accuracy(images, source, target) == pytest.approx(100 / 3)


def test_clip_scores_run_with_a_random_clip(random_clip, car_frames):
    assert random_clip.random_weights
    scores = clip_scores(random_clip, car_frames, "a red car", "a grey car")
    assert set(scores) == {"clip_text", "clip_consistency", "frame_accuracy"}
    assert all(math.isfinite(v) for v in scores.values()) and -100 <= scores["clip_text"] <= 100
    # A still clip is perfectly consistent; swapping the prompts flips which frames count as accurate.
    still = clip_scores(random_clip, car_frames[[1, 1, 1]], "a red car")
    assert still["clip_consistency"] == pytest.approx(100.0, abs=1e-3) and "frame_accuracy" not in still
    swapped = clip_scores(random_clip, car_frames, "a grey car", "a red car")
    assert scores["frame_accuracy"] + swapped["frame_accuracy"] == pytest.approx(100.0)
    assert swapped["clip_consistency"] == pytest.approx(scores["clip_consistency"])
    # Embeddings are unit length, one per frame.
    images = random_clip.image_embeddings(car_frames)
    assert images.shape[0] == 4 and torch.allclose(images.norm(dim=-1), torch.ones(4))


@pytest.mark.parametrize("spec", ["openai/clip-vit-base-patch32", "open_clip:ViT-B-32"])
def test_clip_without_weights_is_reported_unavailable(spec):
    begin = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub.*'random'"):
        load_clip(spec, device="cpu")
    assert time.perf_counter() - begin < 30


def test_clip_spec_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no model named"):
        load_clip("open_clip:no-such-model", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip(str(tmp_path / "missing-clip"), device="cpu")
    with pytest.raises(ModelLoadError, match="could not load CLIP model"):
        load_clip(str(tmp_path), device="cpu")  # an existing folder with no CLIP in it
