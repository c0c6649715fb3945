"""Temporal smoothing along the source clip's optical flow (editing.flows, whose convention `warp` follows):
latent flow fusion, pixel fusion, and colour matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import autoencoder
from .errors import require
from .flows import Flows
from .frames import check_frames

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from .models import Backbone
    from .sampling import StepCallback


def _pixel_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    return torch.meshgrid(ys, xs, indexing="ij")


def warp(tensor: torch.Tensor, flow: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Backward warp: output(x) = tensor(x + flow(x)), bilinear, edges extended; tensor (C, H, W) or (N, C, H, W)."""
    if tensor.dim() not in (3, 4):
        raise ValueError(f"warp takes a (C, H, W) or (N, C, H, W) tensor, got {tuple(tensor.shape)}")
    compute = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    images = (tensor[None] if tensor.dim() == 3 else tensor).to(compute)
    count, _, height, width = images.shape
    flow = torch.as_tensor(flow, device=tensor.device).to(compute)
    flow = flow[None] if flow.dim() == 3 else flow
    if flow.dim() != 4 or flow.shape[1:] != (height, width, 2) or flow.shape[0] not in (1, count):
        raise ValueError(f"flow must be ({height}, {width}, 2) or ({count}, {height}, {width}, 2), got {tuple(flow.shape)}")
    ys, xs = _pixel_grid(height, width, tensor.device, compute)
    # With align_corners=True, -1 and +1 are the centres of the first and last pixels.
    grid_x = 2 * (xs + flow[..., 0]) / max(width - 1, 1) - 1
    grid_y = 2 * (ys + flow[..., 1]) / max(height - 1, 1) - 1
    grid = torch.stack((grid_x, grid_y), dim=-1).expand(count, -1, -1, -1)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    warped = warped.to(tensor.dtype)
    return warped[0] if tensor.dim() == 3 else warped


@dataclass(frozen=True)
class FlowFusion:
    """Blend each frame's latents with its predecessor's, warped by the source flow, early in denoising."""

    strength: float = field(default=0.5, metadata={"help": "blend weight of the warped previous frame, 0..1"})
    until: float = field(default=0.5, metadata={"help": "share of the denoising steps with fusion on, (0, 1]"})

    def __post_init__(self):
        require(
            math.isfinite(self.strength) and 0 <= self.strength <= 1,
            f"flow fusion strength must be between 0 and 1, got {self.strength}",
        )
        require(
            math.isfinite(self.until) and 0 < self.until <= 1,
            f"flow fusion 'until' must be a share of the steps in (0, 1], got {self.until}",
        )


def make_flow_fusion_callback(flows: Flows, fusion: FlowFusion, total_steps: int) -> StepCallback:
    """A denoising-loop callback that fuses latents along the flow during the first `until` share of the steps.

    `flows` must be at latent resolution (see `Flows.resized`). For t = 1..N-1 in order,
    z_t <- where(valid_t, (1 - s) z_t + s warp(z_{t-1}, b_t), z_t), with z_{t-1} already fused, so
    the first frame's content propagates down the clip.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    backward = torch.from_numpy(np.ascontiguousarray(flows.backward, dtype=np.float32))
    valid = torch.from_numpy(np.ascontiguousarray(flows.valid))[:, None]  # (N-1, 1, h, w), broadcast over channels
    active_steps = fusion.until * total_steps
    strength = fusion.strength

    def fuse(step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
        if step_index >= active_steps:
            return None
        if latents.shape[0] != flows.num_frames or tuple(latents.shape[-2:]) != (flows.height, flows.width):
            raise ValueError(
                f"latents {tuple(latents.shape)} do not match flows of {flows.num_frames} frames at {flows.height}x{flows.width}"
            )
        flow = backward.to(latents.device)
        mask = valid.to(latents.device)
        with torch.no_grad():
            fused = [latents[0]]
            for t in range(1, latents.shape[0]):
                blended = (1 - strength) * latents[t] + strength * warp(fused[-1], flow[t - 1])
                fused.append(torch.where(mask[t - 1], blended, latents[t]))
            return torch.stack(fused)

    return fuse


@dataclass(frozen=True)
class PixelFusion:
    """Rerender-style fusion late in denoising: each step's predicted clean frames are decoded, the
    previous (already fused) frame is warped onto the next along the source flow and blended in pixel
    space where the flow passes the forward-backward check, and the change is put back into the latents."""

    strength: float = field(default=0.8, metadata={"help": "blend weight of the warped previous output frame, 0..1"})
    start: float = field(default=0.5, metadata={"help": "share of the denoising steps before pixel fusion starts, [0, 1)"})

    def __post_init__(self):
        require(
            math.isfinite(self.strength) and 0 <= self.strength <= 1,
            f"pixel fusion strength must be between 0 and 1, got {self.strength}",
        )
        require(
            math.isfinite(self.start) and 0 <= self.start < 1,
            f"pixel fusion 'start' must be a share of the steps in [0, 1), got {self.start}",
        )


def fuse_frames(images: torch.Tensor, backward: torch.Tensor, valid: torch.Tensor, strength: float) -> torch.Tensor:
    """Sequential occlusion-aware fusion of (N, C, H, W) frames: frame 0 is kept and, for t = 1..N-1,
    y_t = where(valid_t, (1 - s) x_t + s warp(y_{t-1}, b_t), x_t), so the fused previous frame carries
    on down the clip and pixels failing the forward-backward check (occlusions, new content) keep x_t."""
    if (
        images.dim() != 4
        or backward.shape != (images.shape[0] - 1, *images.shape[-2:], 2)
        or valid.shape != (images.shape[0] - 1, *images.shape[-2:])
    ):
        raise ValueError(
            f"frames {tuple(images.shape)} do not match flows {tuple(backward.shape)} and masks {tuple(valid.shape)}"
        )
    fused = [images[0]]
    for t in range(1, images.shape[0]):
        blended = images[t] + strength * (warp(fused[-1], backward[t - 1]) - images[t])
        fused.append(torch.where(valid[t - 1][None], blended, images[t]))
    return torch.stack(fused)


def split_step(x_t: torch.Tensor, x_next: torch.Tensor, alpha_t: float, alpha_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean latents x0 and noise eps of one step from x_t (alpha_bar_t) to x_next (alpha_bar_next):
    the solution of x = sqrt(a) x0 + sqrt(1 - a) eps at both ends (DDIM, Song et al. 2021, eq. 12 with
    sigma 0: exact for DDIM; for other samplers the DDIM step that lands on the same latents)."""
    if not 0 < alpha_t < alpha_next <= 1:
        raise ValueError(f"a denoising step needs 0 < alpha_bar_t < alpha_bar_next <= 1, got {alpha_t} and {alpha_next}")
    a, b = math.sqrt(alpha_t), math.sqrt(1 - alpha_t)
    c, d = math.sqrt(alpha_next), math.sqrt(1 - alpha_next)
    determinant = a * d - b * c
    return (d * x_t - b * x_next) / determinant, (a * x_next - c * x_t) / determinant


def make_pixel_fusion_callback(
    flows: Flows,
    fusion: PixelFusion,
    alphas: list[float],
    decode: Callable[[torch.Tensor], torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
) -> StepCallback:
    """A denoising-loop callback fusing the predicted clean frames in pixel space from step
    `start * steps` on (never at step 0, whose input latents it has not seen). `flows` are at pixel
    resolution; `alphas` are `step_alphas` (alpha_bar before the first step, then after each step);
    `decode` maps latents to [-1, 1] images and `encode` images to latents.

    At a fused step: x0 and eps are split from the step's two latents (`split_step`), x0 is decoded to
    D, D is fused (`fuse_frames`) to F, and x0 <- x0 + E(F) - E(D) (so the VAE round trip cancels: where
    nothing was fused the latents do not move), x_next <- sqrt(alpha_next) x0 + sqrt(1 - alpha_next) eps.
    """
    steps = len(alphas) - 1  # alphas[0]: alpha_bar of the first timestep; alphas[i + 1]: after step i
    backward = torch.from_numpy(np.ascontiguousarray(flows.backward, dtype=np.float32))
    valid = torch.from_numpy(np.ascontiguousarray(flows.valid))
    first = math.ceil(fusion.start * steps - 1e-9)
    state: dict[str, torch.Tensor] = {}

    def fuse(step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
        previous, state["latents"] = state.get("latents"), latents
        if step_index < max(first, 1 if previous is None else 0) or previous is None or fusion.strength == 0:
            return None
        if latents.shape[0] != flows.num_frames:
            raise ValueError(f"latents of {latents.shape[0]} frames do not match flows of {flows.num_frames} frames")
        alpha_t, alpha_next = alphas[step_index], alphas[step_index + 1]
        if alpha_next <= alpha_t:  # a step that does not denoise (DDIM from t = 0 to its final alpha): nothing to split
            return None
        with torch.no_grad():
            clean, noise = split_step(previous.float(), latents.float(), alpha_t, alpha_next)
            decoded = decode(clean.to(latents.dtype)).float()
            if tuple(decoded.shape[-2:]) != (flows.height, flows.width):
                raise ValueError(f"decoded frames {tuple(decoded.shape[-2:])} do not match flows at {flows.height}x{flows.width}")
            fused = fuse_frames(decoded, backward.to(decoded.device), valid.to(decoded.device), fusion.strength)
            change = torch.zeros_like(clean)
            change[1:] = encode(fused[1:].to(latents.dtype)).float() - encode(decoded[1:].to(latents.dtype)).float()
            result = (math.sqrt(alpha_next) * (clean + change) + math.sqrt(1 - alpha_next) * noise).to(latents.dtype)
        state["latents"] = result
        return result

    return fuse


def step_alphas(scheduler: SchedulerMixin, timesteps: torch.Tensor) -> list[float]:
    """alpha_bar before the first step, then after each step of `timesteps` (1 after the last for
    samplers that end at sigma 0; DDIM's own final alpha for DDIM)."""
    table = scheduler.alphas_cumprod
    after_last = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    return [float(table[int(t)]) for t in timesteps] + [after_last]


def vae_codec(backbone: Backbone, batch_size: int):
    """(decode, encode) for pixel fusion: scaled latents to [-1, 1] image tensors and back, a batch at a time."""
    factor = backbone.vae.config.scaling_factor

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                autoencoder.decode(backbone.vae, latents[i : i + batch_size].to(backbone.dtype) / factor).to(backbone.dtype)
                for i in range(0, len(latents), batch_size)
            ]
        )

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                autoencoder.encode(backbone.vae, images[i : i + batch_size].to(backbone.dtype)).to(backbone.dtype) * factor
                for i in range(0, len(images), batch_size)
            ]
        )

    return decode, encode


def match_colors(frames: np.ndarray, reference_index: int = 0) -> np.ndarray:
    """Frames whose per-channel LAB mean and standard deviation are moved to the reference frame's (Reinhard et al. 2001)."""
    frames = check_frames(frames)
    if not -len(frames) <= reference_index < len(frames):
        raise ValueError(f"reference_index {reference_index} is out of range for {len(frames)} frames")
    reference_index %= len(frames)
    lab = [cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB) for frame in frames]
    target_mean = lab[reference_index].reshape(-1, 3).mean(0)
    target_std = lab[reference_index].reshape(-1, 3).std(0)
    result = frames.copy()
    for i, image in enumerate(lab):
        if i == reference_index:
            continue
        mean = image.reshape(-1, 3).mean(0)
        std = image.reshape(-1, 3).std(0)
        # l' = (l - mu) * sigma_ref / sigma + mu_ref per channel; a flat channel only has its mean moved.
        scale = np.where(std > 1e-6, target_std / np.maximum(std, 1e-6), 1.0).astype(np.float32)
        matched = (image - mean) * scale + target_mean
        rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB)
        result[i] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return result
