"""Stage functions of the one denoising loop: encode text and frames, noise, denoise, decode.

Every pipeline is composed from these; none copies the loop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .attention.cross_frame import MODES, FrameLayout, cross_frame_attention, layout_for
from .errors import ConfigError
from .models import Backbone

StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class TextConditioning:
    """Prompt embeddings, each (1, tokens, width); `negative` is None when guidance is off."""

    positive: torch.Tensor
    negative: torch.Tensor | None


def encode_prompts(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """CLIP text-encoder hidden states for each prompt, padded to the tokenizer's 77 tokens."""
    tokens = backbone.tokenizer(
        prompts,
        padding="max_length",
        max_length=backbone.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = backbone.text_encoder(tokens.input_ids.to(backbone.device))[0]
    return hidden.to(backbone.dtype)


def encode_text(backbone: Backbone, prompt: str, negative_prompt: str, guided: bool) -> TextConditioning:
    """Embeddings of the prompt and, for classifier-free guidance, of the negative prompt."""
    if not guided:
        return TextConditioning(encode_prompts(backbone, [prompt]), None)
    negative, positive = encode_prompts(backbone, [negative_prompt, prompt]).chunk(2)
    return TextConditioning(positive, negative)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB to (N, 3, H, W) floats in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_frames(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] to (N, H, W, 3) uint8 RGB."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def encode_frames(backbone: Backbone, frames: np.ndarray, batch_size: int) -> torch.Tensor:
    """VAE latents (mean of the posterior, times the scaling factor) of RGB frames."""
    latents = []
    for start in range(0, len(frames), batch_size):
        images = frames_to_tensor(frames[start : start + batch_size]).to(backbone.device, backbone.dtype)
        latents.append(backbone.vae.encode(images).latent_dist.mean * backbone.vae.config.scaling_factor)
    return torch.cat(latents)


@torch.inference_mode()
def decode_latents(backbone: Backbone, latents: torch.Tensor, batch_size: int) -> np.ndarray:
    """RGB uint8 frames from latents, decoded a batch at a time."""
    frames = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(backbone.dtype) / backbone.vae.config.scaling_factor
        frames.append(tensor_to_frames(backbone.vae.decode(chunk).sample))
    return np.concatenate(frames)


def sampling_timesteps(scheduler, steps: int, strength: float) -> torch.Tensor:
    """The DDIM timesteps left after skipping the first (1 - strength) share of a `steps` schedule."""
    scheduler.set_timesteps(steps)
    skip = steps - max(1, round(steps * strength))
    return scheduler.timesteps[skip:]


def shared_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One seeded noise image (drawn on the CPU, so every device gets the same) repeated for each frame."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, *shape[1:]), generator=generator, dtype=torch.float32)
    return noise.expand(shape).to(device=device, dtype=dtype).contiguous()


def noise_to_timestep(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
    """Forward-diffuse clean latents to `timestep` (SDEdit): sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    return scheduler.add_noise(latents, noise, torch.as_tensor([timestep]))


@dataclass(frozen=True)
class ControlSignal:
    """One ControlNet and its condition images, with a strength and the share of steps it acts on."""

    model: torch.nn.Module
    images: torch.Tensor  # (frames, 3, H, W) in [0, 1], image resolution
    scale: float = 1.0
    start: float = 0.0  # fraction of the steps where it starts acting
    end: float = 1.0  # fraction of the steps where it stops

    def active(self, fraction: float) -> bool:
        return self.scale != 0 and self.start <= fraction <= self.end


@dataclass(frozen=True)
class Guidance:
    """Everything that steers the UNet: text (with classifier-free guidance scale) and ControlNets."""

    text: TextConditioning
    scale: float
    controls: tuple[ControlSignal, ...] = ()
    negatives: tuple[torch.Tensor, ...] | None = None  # per-step unconditional embeddings (null-text inversion)

    def at_step(self, index: int) -> "Guidance":
        """The guidance of step `index`: its own unconditional embedding when per-step ones are given."""
        if self.negatives is None or self.text.negative is None:
            return self
        text = TextConditioning(self.text.positive, self.negatives[min(index, len(self.negatives) - 1)])
        return Guidance(text, self.scale, self.controls)


@dataclass(frozen=True)
class FrameBatch:
    """One UNet call: the clip frames it holds (sorted) and those whose results it produces."""

    ids: tuple[int, ...]
    targets: tuple[int, ...]


@dataclass(frozen=True)
class FramePlan:
    """How a clip's frames are split into UNet calls and which frames each frame attends to."""

    mode: str
    batches: tuple[FrameBatch, ...]
    anchors: tuple[int, ...] = (0,)
    window: int = 2

    def layout(self, batch: FrameBatch) -> FrameLayout:
        return layout_for(self.mode, batch.ids, self.anchors, self.window)


def plan_frames(num_frames: int, chunk: int, mode: str = "none", window: int = 2, anchors: tuple[int, ...] = (0,)) -> FramePlan:
    """Split frames into chunks of `chunk` targets; each call also holds the context its mode needs.

    Every chunk holds the shared anchor frames (so chunks of a long clip stay consistent with each
    other), the previous frame for `sparse-causal`, and `window` neighbours on each side for `window`.
    Peak memory is that of one chunk plus its context, whatever the clip length.
    """
    if mode not in MODES:
        raise ConfigError(f"attention must be one of {', '.join(MODES)}; got {mode}")
    anchors = tuple(a for a in anchors if a < num_frames) or (0,)
    batches = []
    for start in range(0, num_frames, chunk):
        targets = range(start, min(start + chunk, num_frames))
        context: set[int] = set()
        if mode in ("first", "sparse-causal", "full", "window"):
            context |= set(anchors)
        if mode == "sparse-causal" and start > 0:
            context.add(start - 1)
        if mode == "window":
            context |= {f for f in range(start - window, targets[-1] + window + 1) if 0 <= f < num_frames}
        batches.append(FrameBatch(tuple(sorted(context | set(targets))), tuple(targets)))
    return FramePlan(mode, tuple(batches), anchors, window)


def predict_noise(
    backbone: Backbone,
    scheduler,
    latents: torch.Tensor,
    timestep,
    guidance: Guidance,
    layout: FrameLayout | None = None,
    frame_ids: list[int] | None = None,
    fraction: float = 0.0,
    attention_kwargs: dict | None = None,
) -> torch.Tensor:
    """Predicted noise of a batch of frames with classifier-free guidance, e_u + g (e_c - e_u)
    (Ho and Salimans, 2022), ControlNet residuals added to the UNet's skip connections."""
    count = latents.shape[0]
    text = guidance.text
    model_input = scheduler.scale_model_input(latents, timestep)
    branches = 1 if text.negative is None else 2
    if text.negative is None:
        context = text.positive.expand(count, -1, -1)
    else:
        model_input = torch.cat([model_input, model_input])
        context = torch.cat([text.negative.expand(count, -1, -1), text.positive.expand(count, -1, -1)])
    residuals = control_residuals(guidance.controls, model_input, timestep, context, frame_ids or list(range(count)), branches, fraction)
    extra = {} if residuals is None else dict(down_block_additional_residuals=residuals[0], mid_block_additional_residual=residuals[1])
    with torch.inference_mode():
        noise = backbone.unet(
            model_input,
            timestep,
            encoder_hidden_states=context,
            cross_attention_kwargs=attention_call_kwargs(layout, attention_kwargs),
            **extra,
        ).sample
    if text.negative is None:
        return noise
    unconditional, conditional = noise.chunk(2)
    return unconditional + guidance.scale * (conditional - unconditional)


def attention_call_kwargs(layout: FrameLayout | None, extra: dict | None) -> dict | None:
    """The UNet's cross_attention_kwargs: the frame layout plus any attention-control state."""
    kwargs = ({} if layout is None else {"frames": layout}) | (extra or {})
    return kwargs or None


def control_residuals(controls, model_input, timestep, context, frame_ids, branches, fraction):
    """Sum of the active ControlNets' residuals for this batch, or None when none is active."""
    total = None
    for control in controls:
        if not control.active(fraction):
            continue
        images = control.images[frame_ids].to(model_input.device, model_input.dtype).repeat(branches, 1, 1, 1)
        with torch.inference_mode():
            down, mid = control.model(
                model_input,
                timestep,
                encoder_hidden_states=context,
                controlnet_cond=images,
                conditioning_scale=control.scale,
                return_dict=False,
            )
        if total is None:
            total = (list(down), mid)
        else:
            total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
    return total


def denoise(
    backbone: Backbone,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    guidance: Guidance,
    plan: FramePlan,
    callback: StepCallback | None = None,
    control=None,
) -> torch.Tensor:
    """The one denoising loop: each step runs every planned batch through the UNet and steps the scheduler.

    With DDIMScheduler this samples; with DDIMInverseScheduler (and ascending timesteps) it inverts.
    `callback(step_index, timestep, latents)` runs after each step; it may return replacement latents
    (blending, smoothing) or raise to cancel. An attention `control` (editing.attention.p2p) installs its
    processors and is told each call's step and frames.
    """
    attention = cross_frame_attention(backbone.unet) if plan.mode != "none" else contextlib.nullcontext()
    if control is not None:
        attention = control.processors(backbone.unet)
    with attention:
        for index, timestep in enumerate(timesteps):
            fraction = index / max(1, len(timesteps) - 1)
            stepped = latents.clone()
            for batch in plan.batches:
                ids = list(batch.ids)
                chunk = latents[ids]
                layout = plan.layout(batch) if plan.mode != "none" else None
                extra = None if control is None else control.call(index, batch.ids, batch.targets)
                noise = predict_noise(backbone, scheduler, chunk, timestep, guidance.at_step(index), layout, ids, fraction, extra)
                result = scheduler.step(noise, timestep, chunk).prev_sample
                positions = [ids.index(t) for t in batch.targets]
                stepped[list(batch.targets)] = result[positions]
            latents = stepped
            if callback is not None:
                replacement = callback(index, int(timestep), latents)
                if replacement is not None:
                    latents = replacement
    return latents
