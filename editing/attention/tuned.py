"""Tune-A-Video's inflated UNet, built only from attention processors that hold their own parameters.

Every attention layer of the frozen UNet gets a processor with a tuned copy of its query projection
(initialised from the frozen one). Self-attention (attn1) is cross-frame over the FrameLayout the loop
passes (sparse-causal when tuning). Each cross-attention layer (attn2) also owns a temporal attention:
at every spatial position, attention across the frames of the batch.

Placement: Tune-A-Video adds its temporal layer after the transformer block's feed-forward; a processor
cannot hook there, so the temporal layer runs at the end of the block's attention instead:
attn2 returns cross(x) + temporal(x + cross(x)), where x is the block's normed input to attn2. Its output
projection starts at zero, so the untuned inflated UNet computes exactly what the frozen one does.

The frozen UNet's parameters are never touched: the processors are installed only inside
`TunedControl.processors`, which restores the originals in `finally`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .control import AttentionControl
from .cross_frame import NO_CALL, CrossFrameAttnProcessor, LayerCall, attention_processors
from .p2p import ControlledAttnProcessor


class TemporalAttention(nn.Module):
    """Attention across the frames of a batch at each spatial position, with a zero-initialised output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden_states: torch.Tensor, frames: int) -> torch.Tensor:
        """(branches * frames, tokens, dim) -> the same shape, each token attending to itself in every frame."""
        batch, tokens, dim = hidden_states.shape
        if batch % frames:
            raise ValueError(f"a batch of {batch} cannot hold whole guidance branches of {frames} frames")
        x = hidden_states.to(self.to_q.weight.dtype)
        x = x.view(batch // frames, frames, tokens, dim).transpose(1, 2).reshape(-1, frames, dim)
        x = self.norm(x)
        q, k, v = (self._heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, frames, dim)
        out = self.to_out(out).view(batch // frames, tokens, frames, dim).transpose(1, 2).reshape(batch, tokens, dim)
        return out.to(hidden_states.dtype)

    def _heads(self, tensor: torch.Tensor) -> torch.Tensor:
        sequences, length, dim = tensor.shape
        return tensor.view(sequences, length, self.heads, dim // self.heads).transpose(1, 2)


class LayerWeights(nn.Module):
    """The tuned parameters of one attention layer: its query projection, and a temporal layer for attn2."""

    def __init__(self, to_q: nn.Linear, temporal: TemporalAttention | None = None):
        super().__init__()
        self.to_q = to_q
        self.temporal = temporal

    def query(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The tuned query projection, computed in the weights' dtype and returned in the input's."""
        return self.to_q(hidden_states.to(self.to_q.weight.dtype)).to(hidden_states.dtype)


def copy_linear(linear: nn.Linear) -> nn.Linear:
    """A trainable fp32 copy of a frozen linear layer."""
    copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device=linear.weight.device)
    with torch.no_grad():
        copy.weight.copy_(linear.weight.float())
        if linear.bias is not None:
            copy.bias.copy_(linear.bias.float())
    return copy


def module_key(layer: str) -> str:
    """A module name for a processor's layer name (module names may not hold dots)."""
    return layer.removesuffix(".processor").replace(".", "__")


class InflatedWeights(nn.Module):
    """Every tuned parameter of an inflated UNet, one LayerWeights per attention layer."""

    def __init__(self, layers: dict[str, LayerWeights]):
        super().__init__()
        self.layers = nn.ModuleDict({module_key(name): weights for name, weights in layers.items()})
        self.names = tuple(layers)

    @classmethod
    def inflate(cls, unet: torch.nn.Module) -> InflatedWeights:
        """Fresh weights for `unet`: query copies of every attention layer, zero-output temporal layers after attn2."""
        layers = {}
        for name in unet.attn_processors:
            attn = unet.get_submodule(name.removesuffix(".processor"))
            temporal = None
            if name.endswith("attn2.processor"):
                temporal = TemporalAttention(attn.to_q.in_features, attn.heads).to(attn.to_q.weight.device)
            layers[name] = LayerWeights(copy_linear(attn.to_q), temporal)
        return cls(layers)

    def layer(self, name: str) -> LayerWeights:
        return self.layers[module_key(name)]


class TunedAttnProcessor:
    """One layer of the inflated UNet: cross-frame attention with the tuned query, then temporal attention.

    `base` does the attention itself (plain cross-frame, or a Prompt-to-Prompt controlled processor), so
    attention editing composes with the tuned model.
    """

    def __init__(self, weights: LayerWeights, base: CrossFrameAttnProcessor):
        self.weights, self.base = weights, base

    def with_image_adapter(self, adapter: torch.nn.Module) -> TunedAttnProcessor:
        """The same layer whose base also attends to an IP-Adapter's image tokens (editing.reference)."""
        return TunedAttnProcessor(self.weights, self.base.with_image_adapter(adapter))

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        call: LayerCall | None = None,
    ):
        call = dataclasses.replace(call or NO_CALL, to_q=self.weights.query)
        out = self.base.process(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call)
        if self.weights.temporal is None:
            return out
        if call.frames is None:
            raise ValueError("the tuned model's temporal layers need a frame layout (cross-frame attention other than 'none')")
        return out + self.weights.temporal(hidden_states + out, call.frames.num_frames)


class TunedControl(AttentionControl):
    """An attention control for the one denoising loop: installs the inflated UNet's processors.

    It wraps an optional inner control (editing.attention.p2p), whose processors do the attention inside
    the tuned ones and whose per-call state is passed through.
    """

    def __init__(self, weights: InflatedWeights, inner: AttentionControl | None = None):
        self.weights, self.inner = weights, inner

    def wrap(self, inner: AttentionControl) -> TunedControl:
        """The same tuned weights around another inner control."""
        return TunedControl(self.weights, inner)

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        return {} if self.inner is None else self.inner.call(step, frames, targets, borrowed)

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        """Install a tuned processor on every attention layer; the originals come back after."""
        names = tuple(unet.attn_processors)
        if set(names) != set(self.weights.names):
            raise ValueError("the tuned weights were made for a UNet with other attention layers")
        processors = {}
        for name in names:
            base = CrossFrameAttnProcessor() if self.inner is None else ControlledAttnProcessor(name)
            processors[name] = TunedAttnProcessor(self.weights.layer(name), base)
        with attention_processors(unet, processors):
            yield
