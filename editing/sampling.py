"""Stage functions of the one denoising loop: encode text and frames, noise, denoise, decode.

Every pipeline is composed from these; none copies the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

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


def guided_noise(
    backbone: Backbone,
    scheduler,
    latents: torch.Tensor,
    timestep,
    text: TextConditioning,
    guidance: float,
) -> torch.Tensor:
    """Predicted noise with classifier-free guidance: e_u + g (e_c - e_u) (Ho and Salimans, 2022)."""
    count = latents.shape[0]
    model_input = scheduler.scale_model_input(latents, timestep)
    if text.negative is None:
        context = text.positive.expand(count, -1, -1)
    else:
        model_input = torch.cat([model_input, model_input])
        context = torch.cat([text.negative.expand(count, -1, -1), text.positive.expand(count, -1, -1)])
    with torch.inference_mode():
        noise = backbone.unet(model_input, timestep, encoder_hidden_states=context).sample
    if text.negative is None:
        return noise
    unconditional, conditional = noise.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def denoise(
    backbone: Backbone,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    text: TextConditioning,
    guidance: float,
    batch_size: int,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The denoising loop: every step runs the frames through the UNet in batches and takes a DDIM step.

    `callback(step_index, timestep, latents)` runs after each step; it may return replacement latents
    (for blending) or raise to cancel.
    """
    for index, timestep in enumerate(timesteps):
        stepped = torch.empty_like(latents)
        for start in range(0, latents.shape[0], batch_size):
            chunk = latents[start : start + batch_size]
            noise = guided_noise(backbone, scheduler, chunk, timestep, text, guidance)
            stepped[start : start + batch_size] = scheduler.step(noise, timestep, chunk).prev_sample
        latents = stepped
        if callback is not None:
            replacement = callback(index, int(timestep), latents)
            if replacement is not None:
                latents = replacement
    return latents
