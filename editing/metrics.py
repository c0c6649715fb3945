"""Quality metrics for edited clips: temporal warp error, reconstruction PSNR / SSIM, CLIP scores.

Frames are (N, H, W, 3) uint8 RGB arrays. Errors and PSNR are in 8-bit levels (0..255); CLIP scores
are 100 x cosine similarity, as Tune-A-Video and FateZero report them. Everything here is a pure
function of its inputs; loading a CLIP model is `editing.clip_score.load_clip`'s job.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from .flows import Flows, source_flows
from .frames import check_frames
from .temporal import warp

if TYPE_CHECKING:
    from .clip_score import ClipScorer

DATA_RANGE = 255.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # an 11x11 window: the Gaussian truncated at 3.5 sigma, as Wang et al. (2004) and skimage use
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _frames(frames: np.ndarray, name: str) -> np.ndarray:
    return check_frames(frames, name, minimum=0)


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"frames to compare must have the same shape, got {a.shape} and {b.shape}")


# ---------------------------------------------------------------- temporal consistency


def warp_errors(source_frames: np.ndarray, output_frames: np.ndarray, flows: Flows | None = None) -> np.ndarray:
    """Per frame pair t -> t+1: mean |warp(output_t) - output_{t+1}| over pixels the SOURCE flow tracks reliably.

    The flow is the source clip's (DIS, `flows.source_flows`), resized to the output if needed;
    occluded pixels fail its forward-backward check and are left out. Returns N-1 values in 8-bit
    levels (NaN for a pair with no trackable pixel): index t is the pair (t, t+1), ready to plot.
    """
    source = _frames(source_frames, "source_frames")
    output = _frames(output_frames, "output_frames")
    if len(source) != len(output) or len(source) < 2:
        raise ValueError(f"need the same number (>= 2) of source and output frames, got {len(source)} and {len(output)}")
    flows = flows if flows is not None else source_flows(source)
    flows = flows.resized(output.shape[1], output.shape[2])
    pixels = torch.from_numpy(output).permute(0, 3, 1, 2).float()
    # warp(frame_t, b_{t+1}) lines frame t up with frame t+1 (see temporal's flow convention).
    warped = warp(pixels[:-1], flows.backward)
    error = (warped - pixels[1:]).abs().mean(1).numpy()  # (N-1, H, W)
    valid = flows.valid
    counts = valid.sum(axis=(1, 2))
    sums = np.where(valid, error, 0.0).sum(axis=(1, 2))
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float64)


def mean_warp_error(errors: np.ndarray) -> float:
    """The clip's warp error: the mean of its per-pair values, ignoring pairs with nothing trackable."""
    errors = np.asarray(errors, dtype=np.float64)
    return float(np.nanmean(errors)) if np.isfinite(errors).any() else math.nan


# ---------------------------------------------------------------- reconstruction fidelity


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all pixels: 10 log10(255^2 / MSE); inf when identical."""
    reference, test = np.asarray(reference), np.asarray(test)
    _same_shape(reference, test)
    mse = float(np.mean(np.square(reference.astype(np.float64) - test.astype(np.float64))))
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """The normalised 1-D Gaussian of SSIM's window, 2 * radius + 1 taps."""
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering of a float64 (H, W) image, keeping only the 'valid' region (no edge effects)."""
    radius = len(window) // 2
    filtered = cv2.sepFilter2D(image, cv2.CV_64F, window, window, borderType=cv2.BORDER_REFLECT)
    return filtered[radius:-radius, radius:-radius]


def ssim_map(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Local SSIM of two (H, W) or (H, W, C) images (Wang et al. 2004, eq. 13), per channel, on the valid region."""
    reference, test = np.asarray(reference), np.asarray(test)
    _same_shape(reference, test)
    size = 2 * SSIM_RADIUS + 1
    if reference.ndim not in (2, 3) or min(reference.shape[:2]) < size:
        raise ValueError(f"SSIM needs (H, W) or (H, W, C) images of at least {size}x{size} pixels, got {reference.shape}")
    window = gaussian_window()
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    channels = []
    for x, y in zip(np.atleast_3d(reference).transpose(2, 0, 1), np.atleast_3d(test).transpose(2, 0, 1)):
        x, y = x.astype(np.float64), y.astype(np.float64)
        mu_x, mu_y = _filter(x, window), _filter(y, window)
        # Population (not sample) moments under the window, as in the paper.
        var_x = _filter(x * x, window) - mu_x**2
        var_y = _filter(y * y, window) - mu_y**2
        cov = _filter(x * y, window) - mu_x * mu_y
        channels.append(((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)))
    return np.stack(channels, axis=-1)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM of two images (H, W[, C]) with an 11x11 Gaussian window, sigma 1.5, on 8-bit levels."""
    return float(ssim_map(reference, test).mean())


def frame_psnr_ssim(reference_frames: np.ndarray, test_frames: np.ndarray) -> tuple[float, float]:
    """PSNR over the whole clip and SSIM averaged over its frames."""
    reference = _frames(reference_frames, "reference_frames")
    test = _frames(test_frames, "test_frames")
    _same_shape(reference, test)
    return psnr(reference, test), float(np.mean([ssim(a, b) for a, b in zip(reference, test)]))


# ---------------------------------------------------------------- CLIP scores


def text_score(image_embeddings: torch.Tensor, text_embedding: torch.Tensor) -> float:
    """CLIP text score: 100 x the mean cosine similarity of each frame with the prompt (unit-length inputs)."""
    return float(100.0 * (image_embeddings @ text_embedding.reshape(-1)).mean())


def frame_consistency(image_embeddings: torch.Tensor) -> float:
    """CLIP frame consistency: 100 x the mean cosine similarity of consecutive frames (unit-length inputs)."""
    if len(image_embeddings) < 2:
        raise ValueError("frame consistency needs at least 2 frames")
    return float(100.0 * (image_embeddings[:-1] * image_embeddings[1:]).sum(-1).mean())


def frame_accuracy(image_embeddings: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> float:
    """Frame accuracy (FateZero): percent of frames more similar to the target prompt than to the source prompt."""
    closer = image_embeddings @ target.reshape(-1) > image_embeddings @ source.reshape(-1)
    return float(100.0 * closer.float().mean())


def clip_scores(scorer: ClipScorer, frames: np.ndarray, prompt: str, source_prompt: str = "") -> dict[str, float]:
    """Text score and frame consistency of edited frames; frame accuracy too when the source prompt is known."""
    images = scorer.image_embeddings(_frames(frames, "frames"))
    texts = scorer.text_embeddings([prompt, source_prompt] if source_prompt else [prompt])
    scores = {"clip_text": text_score(images, texts[0]), "clip_consistency": frame_consistency(images)}
    if source_prompt:
        scores["frame_accuracy"] = frame_accuracy(images, texts[0], texts[1])
    return scores
