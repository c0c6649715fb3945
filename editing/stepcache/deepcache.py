"""DeepCache (Ma et al., 2024): reuse the UNet's deep features across adjacent denoising steps.

Adjacent steps' high-level features change little; the skip connections carry what changes. Every
`interval` steps (and whenever a call's frames have nothing cached) the whole UNet runs and the hidden
state entering the last `layers` layers of its final up block is kept, per call (the frames it holds and
the batch's shape). In the steps between, only the shallow path runs: `conv_in` (and, for more than one
layer, the first down block) makes the fresh skip features, and the kept deep state goes straight into
those last layers and `conv_out` (DeepCache's shallowest branch with `layers` 1). Interval 1 runs the whole
UNet at every step: the same as no cache.

Works on diffusers' UNet2DConditionModel (ControlNet residuals are added to the skip features the shallow
path uses); a UNet of another class (an AnimateDiff motion UNet) is refused in one sentence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from . import StepCache


class DeepCache(StepCache):
    """Full UNet every `interval` steps, the shallow path over the cached deep features in between."""

    def __init__(self, interval: int, layers: int = 1):
        if interval < 1 or layers < 1:
            raise ValueError(f"interval and layers must be at least 1, got {interval} and {layers}")
        self.interval, self.layers = int(interval), int(layers)
        self.store: dict[tuple, torch.Tensor] = {}
        self.full_calls = self.shallow_calls = 0
        self._current: tuple | None = None
        self._capturing: tuple | None = None

    def begin_call(self, index: int, key: tuple) -> None:
        self._current = (index, key)

    @contextlib.contextmanager
    def installed(self, unet: Any) -> Iterator[None]:
        # here, not at the top: diffusers is heavy, and --help imports this module
        from diffusers import UNet2DConditionModel

        if not isinstance(unet, UNet2DConditionModel):
            raise ConfigError(
                f"step_cache deepcache needs the image UNet (UNet2DConditionModel), not {type(unet).__name__}; "
                "leave out --motion-adapter or the step cache"
            )
        block = unet.up_blocks[-1]
        if self.layers > len(block.resnets):
            raise ConfigError(
                f"step_cache deepcache: the UNet's last up block has {len(block.resnets)} layers, fewer than {self.layers}"
            )
        residual = unet.config.block_out_channels[0]  # channels of conv_in's and the first down block's outputs
        target = block.resnets[len(block.resnets) - self.layers]

        def capture(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self._capturing is not None:  # the resnet's input is (deep hidden state, skip feature) along channels
                self.store[self._capturing] = args[0][:, :-residual].detach()

        had = "forward" in unet.__dict__
        previous = unet.__dict__.get("forward")
        original = unet.forward
        hook = target.register_forward_pre_hook(capture)

        def forward(sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            return self._forward(unet, original, sample, timestep, encoder_hidden_states, *args, **kwargs)

        unet.forward = forward
        try:
            yield
        finally:
            hook.remove()
            if had:
                unet.forward = previous
            else:
                del unet.forward
            self.store.clear()
            self._current = self._capturing = None

    def _forward(
        self,
        unet: Any,
        original: Callable[..., Any],
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,  # the UNet forward's own keyword arguments (UnetInputs)
    ) -> Any:
        call, self._current = self._current, None
        if call is None or self.interval == 1 or args or not _shallow_supported(unet, kwargs):
            return original(sample, timestep, encoder_hidden_states, *args, **kwargs)
        index, frames = call
        key = (frames, tuple(sample.shape))
        if index % self.interval == 0 or key not in self.store:
            self._capturing = key
            try:
                out = original(sample, timestep, encoder_hidden_states, *args, **kwargs)
            finally:
                self._capturing = None
            self.full_calls += 1
            return out
        self.shallow_calls += 1
        return shallow_forward(unet, self.store[key], self.layers, UnetInputs(sample, timestep, encoder_hidden_states, **kwargs))


def _shallow_supported(unet: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the shallow path can stand in for this call (not with T2I adapters, hint images or GLIGEN)."""
    attention = kwargs.get("cross_attention_kwargs") or {}
    return (
        kwargs.get("down_intrablock_additional_residuals") is None
        and unet.config.addition_embed_type != "image_hint"
        and "gligen" not in attention
    )


@dataclass(frozen=True)
class UnetInputs:
    """The arguments of one call of diffusers' UNet2DConditionModel forward, by their names there."""

    sample: torch.Tensor
    timestep: torch.Tensor | float | int
    encoder_hidden_states: torch.Tensor
    class_labels: torch.Tensor | None = None
    timestep_cond: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    added_cond_kwargs: dict[str, Any] | None = None
    down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None
    mid_block_additional_residual: torch.Tensor | None = None
    down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None
    encoder_attention_mask: torch.Tensor | None = None
    return_dict: bool = True


def time_embedding(unet: Any, inputs: UnetInputs, sample: torch.Tensor) -> torch.Tensor:
    """The UNet's timestep embedding (with class and added embeddings) of `sample`, as its forward computes it."""
    timestep, added_cond_kwargs = inputs.timestep, inputs.added_cond_kwargs
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), inputs.timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=inputs.class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=inputs.encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug_emb if aug_emb is not None else emb
    return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


def shallow_forward(unet: Any, deep: torch.Tensor, layers: int, inputs: UnetInputs) -> Any:
    """The UNet's output from its shallow layers: fresh skip features, the `deep` hidden state kept from a
    full pass, then the last `layers` layers of the final up block and the output convolution."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    sample, attention_mask, encoder_attention_mask = inputs.sample, inputs.attention_mask, inputs.encoder_attention_mask
    cross_attention_kwargs, down_block_additional_residuals = (
        inputs.cross_attention_kwargs,
        inputs.down_block_additional_residuals,
    )
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb = time_embedding(unet, inputs, sample)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=inputs.encoder_hidden_states, added_cond_kwargs=inputs.added_cond_kwargs
    )
    hidden = unet.conv_in(sample)
    skips = [hidden]
    if layers > 1:
        first = unet.down_blocks[0]
        if getattr(first, "has_cross_attention", False):
            _, more = first(
                hidden,
                temb=emb,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=encoder_attention_mask,
            )
        else:
            _, more = first(hidden_states=hidden, temb=emb)
        skips += list(more)
    if down_block_additional_residuals is not None:  # ControlNet: its residuals for the same skip features
        skips = [s + r for s, r in zip(skips, down_block_additional_residuals)]
    block = unet.up_blocks[-1]
    count = len(block.resnets)
    attentions = getattr(block, "attentions", None)
    hidden = deep
    for j in range(count - layers, count):
        hidden = block.resnets[j](torch.cat([hidden, skips[count - 1 - j]], dim=1), emb)
        if attentions is not None:
            hidden = attentions[j](
                hidden,
                encoder_hidden_states=encoder_hidden_states,
                cross_attention_kwargs=cross_attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
                return_dict=False,
            )[0]
    if block.upsamplers is not None:
        for upsampler in block.upsamplers:
            hidden = upsampler(hidden)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    out = unet.conv_out(hidden)
    return UNet2DConditionOutput(sample=out) if inputs.return_dict else (out,)


def make_deepcache(value: float) -> DeepCache:
    return DeepCache(int(value))
