"""Temporal smoothing: optical flow of the source clip, latent flow fusion, and colour matching.

Flow convention (for the pair t-1 -> t, stored at index t-1): the backward flow b_t gives, for each
pixel x of frame t, where it came from in frame t-1, so frame_t(x) ~ frame_{t-1}(x + b_t(x)) and
`warp(frame_{t-1}, b_t)` lines frame t-1 up with frame t. The forward flow f_t is the same for the
pixels of frame t-1. Vectors are (dx, dy) in pixels of the field's own resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError
from .frames import check_frames

if TYPE_CHECKING:
    from .sampling import StepCallback


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True, eq=False)
class Flows:
    """Optical flow between consecutive frames of a clip; index i holds the pair (i, i + 1)."""

    backward: np.ndarray  # (N-1, H, W, 2) float32: frame i+1 at x came from frame i at x + backward[i](x)
    forward: np.ndarray  # (N-1, H, W, 2) float32: frame i at x moves to frame i+1 at x + forward[i](x)
    valid: np.ndarray  # (N-1, H, W) bool: pixels of frame i+1 whose backward flow is trustworthy

    def __post_init__(self):
        pairs, height, width = self.valid.shape
        expected = (pairs, height, width, 2)
        if self.backward.shape != expected or self.forward.shape != expected:
            raise ValueError(
                f"flow fields must be {expected} to match the mask, got {self.backward.shape} and {self.forward.shape}"
            )

    @property
    def num_frames(self) -> int:
        return int(self.valid.shape[0]) + 1

    @property
    def height(self) -> int:
        return int(self.valid.shape[1])

    @property
    def width(self) -> int:
        return int(self.valid.shape[2])

    def resized(self, height: int, width: int, min_valid: float = 0.5) -> Flows:
        """The same flows at another resolution; a resized pixel is valid when >= `min_valid` of it was."""
        if (height, width) == (self.height, self.width):
            return self
        share = _resize_fields(self.valid.astype(np.float32)[..., None], height, width)[..., 0]
        return Flows(
            resize_flow(self.backward, height, width),
            resize_flow(self.forward, height, width),
            share >= min_valid - 1e-6,
        )


def _resize_fields(fields: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (N, H, W, C) float fields: area average when shrinking, bilinear when enlarging."""
    shrinking = height * width < fields.shape[1] * fields.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = [cv2.resize(item, (width, height), interpolation=interpolation) for item in fields]
    return np.stack([item.reshape(height, width, fields.shape[-1]) for item in resized])


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flow field (H, W, 2) or (N, H, W, 2) resampled to (height, width), its vectors scaled to match."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim not in (3, 4) or flow.shape[-1] != 2:
        raise ValueError(f"flow must be (H, W, 2) or (N, H, W, 2), got {flow.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"flow size must be positive, got {height}x{width}")
    fields = flow[None] if flow.ndim == 3 else flow
    source_height, source_width = fields.shape[1:3]
    resized = _resize_fields(fields, height, width)
    # A displacement of d pixels at the source size is d * (new size / old size) pixels at the new size.
    resized = resized * np.array([width / source_width, height / source_height], dtype=np.float32)
    return resized[0] if flow.ndim == 3 else resized


def _landing(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each pixel's flow lands (columns, rows) and whether that lies inside the frame."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (map_x >= -0.5) & (map_x <= width - 0.5) & (map_y >= -0.5) & (map_y <= height - 0.5)
    return map_x, map_y, inside


def consistent(
    backward: np.ndarray,
    forward: np.ndarray,
    occlusion_rel: float = 0.01,
    occlusion_abs: float = 0.5,
) -> np.ndarray:
    """Pixels of frame t whose backward flow, followed back by the forward flow, returns to where it
    started (swap the arguments for the pixels of frame t-1 and their forward flow)."""
    map_x, map_y, inside = _landing(backward)
    forward_there = cv2.remap(forward, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Forward-backward check (Sundaram, Brox and Keutzer 2010; Ruder et al. 2016, eq. 2):
    # |b + f(x + b)|^2 < rel (|b|^2 + |f(x + b)|^2) + abs.
    round_trip = np.square(backward + forward_there).sum(-1)
    magnitude = np.square(backward).sum(-1) + np.square(forward_there).sum(-1)
    consistent = round_trip < occlusion_rel * magnitude + occlusion_abs
    # A pixel that came from outside frame t-1 has nothing to be warped from.
    return consistent & inside


def _colour_error(previous: np.ndarray, current: np.ndarray, backward: np.ndarray, landing=None) -> np.ndarray:
    """Mean absolute RGB difference between frame t and frame t-1 warped onto it by the backward flow
    (`landing`: the flow's `_landing`, where the caller has it already)."""
    map_x, map_y, _ = _landing(backward) if landing is None else landing
    warped = cv2.remap(previous.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.abs(warped - current.astype(np.float32)).mean(-1)


def colour_match(source: np.ndarray, target: np.ndarray, flow: np.ndarray, tolerance: float) -> np.ndarray:
    """(H, W) bool, pixels of `target`: its flow into `source` stays inside the frame and the colour found
    there differs from the pixel's own by at most `tolerance` (mean absolute RGB, 8-bit)."""
    landing = _landing(flow)
    return landing[2] & (_colour_error(source, target, flow, landing) <= tolerance)


FLOW_MIN_SIDE = 256  # DIS runs on frames whose short side is at least this: smaller clips are upscaled for the flow


def flow_upscale(height: int, width: int) -> int:
    """The integer factor small frames are enlarged by before DIS flow: its 8-pixel patches on 4-pixel
    strides see too little of a 64 px frame (on the shapes benchmark, propagating the source's own frame 0
    along the chained flow misses the true motion by 16.2 levels on striped clips at 64 px, 9.4 upscaled
    4x; 4.2 against 2.7 on plain ones). Frames of FLOW_MIN_SIDE px and more are used as they are."""
    return max(1, math.ceil(FLOW_MIN_SIDE / max(1, min(height, width))))


ENLARGED_PATCH_STRIDE = 1  # DIS patch stride on enlarged small frames (the medium preset's is 3)
ENLARGED_SMOOTHNESS = 10.0  # DIS variational refinement alpha on enlarged small frames (the preset's is 20)


def dis_flow(enlarged: bool) -> cv2.DISOpticalFlow:
    """OpenCV's DIS at its medium preset; on enlarged small frames, a patch at every pixel and half of the
    preset's smoothness, so the flow keeps to the motion boundaries of objects a few dozen pixels wide. On
    the shapes benchmark (16 clips, each edit's ideal frame 0 propagated along the chained flow, true-motion
    warp error) this took the mean from 4.21 to 3.81 (textured clips 10.1 to 8.47, occlusion 4.38 to 3.71,
    plain 3.42 to 3.49). A quarter of the smoothness scored 3.74 but let a few border pixels of a pan keep a
    path to content outside the frame. At 512 px the dense setting would cost 0.11 s a pair against 0.027 s,
    so frames large enough to need no enlarging keep the preset."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    if enlarged:
        dis.setPatchStride(ENLARGED_PATCH_STRIDE)
        dis.setVariationalRefinementAlpha(ENLARGED_SMOOTHNESS)
    return dis


def flow_channels(frame: np.ndarray, colour: bool) -> list[np.ndarray]:
    """The single-channel images DIS runs on: grey, and with `colour` also Lab's two chroma channels."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if not colour:
        return [grey]
    lab = cv2.cvtColor(frame, cv2.COLOR_RGB2LAB)
    return [grey, np.ascontiguousarray(lab[..., 1]), np.ascontiguousarray(lab[..., 2])]


def pick_per_pixel(candidates: list[np.ndarray], frame: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Of candidate flows u (frame(x) ~ other(x + u(x))), each pixel's whose warp of `other` explains
    `frame` best: the least RGB error, averaged over the pixel's 3 x 3 neighbourhood so one noisy match
    does not win (the fusion of flow candidates by their data cost)."""
    if len(candidates) == 1:
        return candidates[0]
    errors = np.stack([cv2.blur(_colour_error(other, frame, flow), (3, 3)) for flow in candidates])
    return np.take_along_axis(np.stack(candidates), errors.argmin(0)[None, ..., None], 0)[0]


def source_flows(
    frames: np.ndarray,
    occlusion_rel: float = 0.01,
    occlusion_abs: float = 0.5,
    max_color_error: float | None = None,
    colour_candidates: bool = False,
) -> Flows:
    """DIS optical flow (Kroeger et al. 2016) of each consecutive pair of RGB frames, both ways, with validity masks.

    A pixel is valid when the forward-backward check passes with the given relative and absolute
    thresholds and, if `max_color_error` (0..255) is set, when warping frame t-1 onto it changes the
    colour by at most that much. With `colour_candidates` DIS also runs on the Lab chroma channels and
    each pixel takes the candidate that explains its colour best (`pick_per_pixel`): grey alone loses
    objects whose grey level is close to what they move over (a green circle on red and pink stripes).
    """
    frames = check_frames(frames, minimum=2)
    _check(occlusion_rel >= 0 and math.isfinite(occlusion_rel), f"occlusion_rel must be >= 0, got {occlusion_rel}")
    _check(occlusion_abs >= 0 and math.isfinite(occlusion_abs), f"occlusion_abs must be >= 0, got {occlusion_abs}")
    _check(max_color_error is None or max_color_error >= 0, f"max_color_error must be >= 0, got {max_color_error}")
    height, width = frames.shape[1:3]
    scale = flow_upscale(height, width)
    dis = dis_flow(enlarged=scale > 1)
    channels = [flow_channels(frame, colour_candidates) for frame in frames]
    if scale > 1:
        channels = [[cv2.resize(c, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC) for c in cs] for cs in channels]

    def calc(first: int, second: int) -> np.ndarray:
        """DIS flow u with I_first(x) ~ I_second(x + u(x)), at the frames' own size and in their pixels."""
        candidates = []
        for one, two in zip(channels[first], channels[second]):
            flow = dis.calc(one, two, None)
            candidates.append(flow if scale == 1 else resize_flow(flow, height, width))
        return pick_per_pixel(candidates, frames[first], frames[second])

    backward, forward, valid = [], [], []
    for t in range(1, len(frames)):
        back, fore = calc(t, t - 1), calc(t - 1, t)
        mask = consistent(back, fore, occlusion_rel, occlusion_abs)
        if max_color_error is not None:
            mask &= _colour_error(frames[t - 1], frames[t], back) <= max_color_error
        backward.append(back)
        forward.append(fore)
        valid.append(mask)
    return Flows(np.stack(backward), np.stack(forward), np.stack(valid))


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
        _check(
            math.isfinite(self.strength) and 0 <= self.strength <= 1,
            f"flow fusion strength must be between 0 and 1, got {self.strength}",
        )
        _check(
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
        _check(math.isfinite(self.strength) and 0 <= self.strength <= 1, f"pixel fusion strength must be between 0 and 1, got {self.strength}")
        _check(math.isfinite(self.start) and 0 <= self.start < 1, f"pixel fusion 'start' must be a share of the steps in [0, 1), got {self.start}")


def fuse_frames(images: torch.Tensor, backward: torch.Tensor, valid: torch.Tensor, strength: float) -> torch.Tensor:
    """Sequential occlusion-aware fusion of (N, C, H, W) frames: frame 0 is kept and, for t = 1..N-1,
    y_t = where(valid_t, (1 - s) x_t + s warp(y_{t-1}, b_t), x_t), so the fused previous frame carries
    on down the clip and pixels failing the forward-backward check (occlusions, new content) keep x_t."""
    if images.dim() != 4 or backward.shape != (images.shape[0] - 1, *images.shape[-2:], 2) or valid.shape != (images.shape[0] - 1, *images.shape[-2:]):
        raise ValueError(f"frames {tuple(images.shape)} do not match flows {tuple(backward.shape)} and masks {tuple(valid.shape)}")
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


def make_pixel_fusion_callback(flows: Flows, fusion: PixelFusion, alphas: list[float], decode, encode) -> StepCallback:
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


def step_alphas(scheduler, timesteps) -> list[float]:
    """alpha_bar before the first step, then after each step of `timesteps` (1 after the last for
    samplers that end at sigma 0; DDIM's own final alpha for DDIM)."""
    table = scheduler.alphas_cumprod
    after_last = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    return [float(table[int(t)]) for t in timesteps] + [after_last]


def vae_codec(backbone, batch_size: int):
    """(decode, encode) for pixel fusion: scaled latents to [-1, 1] image tensors and back, a batch at a time."""
    from .sampling import encoded_latents

    factor = backbone.vae.config.scaling_factor

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone.vae.decode(latents[i : i + batch_size].to(backbone.dtype) / factor).sample for i in range(0, len(latents), batch_size)])

    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoded_latents(backbone.vae.encode(images[i : i + batch_size].to(backbone.dtype))) * factor for i in range(0, len(images), batch_size)])

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
