"""Encode and decode with the autoencoder in its own dtype, upcast to fp32 where diffusers would.

fp16 can overflow inside an autoencoder. diffusers marks the ones at risk with the config flag
`force_upcast`, and its SDXL pipelines run a flagged fp16 autoencoder in fp32 (`upcast_vae`). Only a flag the
autoencoder's own config sets counts here (SDXL's sets it true; AutoencoderTiny and fp16-fixed ones false):
configs that predate it, SD-1.5's among them, inherit AutoencoderKL's default true, and run in fp16 as
diffusers' StableDiffusionPipeline runs them. Here a flagged autoencoder is
placed in fp32 once, when its model loads, instead of being cast back and forth on every call: the module is
shared between requests. An fp16 autoencoder that returns a non-finite batch runs that batch again on an fp32
copy. bf16 has fp32's range and is never upcast.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

_fp32_copies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


def needs_upcast(vae: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether the autoencoder runs in fp32 when the model is in `dtype`: fp16, with `force_upcast` set true by
    its own config (not inherited as AutoencoderKL's default)."""
    inherited = "force_upcast" in (vae.config.get("_use_default_values") or ())
    return dtype == torch.float16 and bool(vae.config.get("force_upcast", False)) and not inherited


def placed_dtype(vae: torch.nn.Module, dtype: torch.dtype) -> torch.dtype:
    """The dtype to place the autoencoder of a model in `dtype` in: fp32 where it needs an upcast, else `dtype`."""
    return torch.float32 if needs_upcast(vae, dtype) else dtype


def fp32_copy(vae: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of the autoencoder, made on first use and kept while the autoencoder lives: built from its
    config and weights, so hooks or methods set on the module itself are not copied."""
    if vae.dtype == torch.float32:
        return vae
    with _copies_lock:
        if vae not in _fp32_copies:
            copied = type(vae).from_config(vae.config)
            copied.load_state_dict(vae.state_dict())
            _fp32_copies[vae] = copied.requires_grad_(False).eval().to(device=vae.device, dtype=torch.float32)
        return _fp32_copies[vae]


def encoded_latents(output: Any) -> torch.Tensor:
    """The latents an autoencoder's `encode` returns: a posterior's mean (AutoencoderKL) or `.latents` (AutoencoderTiny)."""
    if hasattr(output, "latent_dist"):
        return output.latent_dist.mean
    return output.latents


def encode(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1], in the dtype the autoencoder ran in."""
    return _run(vae, lambda model, x: encoded_latents(model.encode(x)), images)


def decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from unscaled latents, in the dtype the autoencoder ran in."""
    return _run(vae, lambda model, x: model.decode(x).sample, latents)


def _run(vae: torch.nn.Module, call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], inputs: torch.Tensor):
    """`call(model, inputs)` on the autoencoder, or on its fp32 copy where it needs an upcast; an fp16 result
    that is not finite is computed again in fp32."""
    model = fp32_copy(vae) if needs_upcast(vae, vae.dtype) else vae
    output = call(model, inputs.to(model.dtype))
    if model.dtype == torch.float16 and not bool(torch.isfinite(output).all()):
        log.warning("the fp16 autoencoder gave non-finite values for a batch of %d; running it in fp32", len(inputs))
        model = fp32_copy(vae)
        output = call(model, inputs.to(torch.float32))
    return output
