"""What the inversion keeps of its attention for the edit pass, and how much memory that takes.

FateZero keeps every attention map of every layer and step (about 100 GB for 8 frames at 512 px).
We keep only what the edit uses, in fp16, averaged over heads:
  - cross-attention maps (query tokens x 77 text tokens) of layers at least `cross_downsample` times
    smaller than the latent (for word replacement and the local-blend mask);
  - self-attention maps (query tokens x key tokens of the frames attended to) only at layers at least
    `self_downsample` times smaller than the latent, and only for the inversion steps the edit replaces.
Entries are keyed by (inversion step, layer name, kind, clip frame), so chunked clips work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError

TEXT_TOKENS = 77
BYTES_PER_VALUE = 2  # fp16


def layer_downsampling(unet_config: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(layer name, "self" or "cross", downsampling) for every attention layer of an SD-1.x-style UNet."""
    config = dict(unet_config)
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    per_block = config.get("layers_per_block", 2)
    per_block = per_block if isinstance(per_block, int) else per_block[0]
    levels = len(down_types)
    layers: list[tuple[str, int]] = []
    for level, kind in enumerate(down_types):
        if "CrossAttn" in kind:
            layers += [(f"down_blocks.{level}.attentions.{i}", 2**level) for i in range(per_block)]
    if "CrossAttn" in config.get("mid_block_type", "UNetMidBlock2DCrossAttn"):
        layers.append(("mid_block.attentions.0", 2 ** (levels - 1)))
    for position, kind in enumerate(up_types):
        if "CrossAttn" in kind:
            layers += [(f"up_blocks.{position}.attentions.{i}", 2 ** (levels - 1 - position)) for i in range(per_block + 1)]
    return [
        (f"{name}.transformer_blocks.0.{attn}.processor", kind, factor)
        for name, factor in layers
        for attn, kind in (("attn1", "self"), ("attn2", "cross"))
    ]


def level_tokens(latent_height: int, latent_width: int, downsample: int) -> int:
    """Query tokens of a layer `downsample` times smaller than the latent (each halving rounds up)."""
    return math.ceil(latent_height / downsample) * math.ceil(latent_width / downsample)


def layer_shape(tokens: int, latent_height: int, latent_width: int) -> tuple[int, int]:
    """(height, width) of a layer's token grid, found from its token count and the latent size."""
    factor = 1
    while factor <= max(latent_height, latent_width):
        shape = (math.ceil(latent_height / factor), math.ceil(latent_width / factor))
        if shape[0] * shape[1] == tokens:
            return shape
        factor *= 2
    raise ValueError(f"{tokens} tokens match no downsampling of a {latent_height}x{latent_width} latent")


@dataclass(frozen=True)
class StorePolicy:
    """Which attention maps the inversion stores: layer resolutions and the steps self-attention is kept for."""

    cross_downsample: int = field(
        default=1, metadata={"help": "store cross-attention of layers at least this many times smaller than the latent"}
    )
    self_downsample: int = field(
        default=4, metadata={"help": "store self-attention of layers at least this many times smaller than the latent"}
    )

    def __post_init__(self):
        for name in ("cross_downsample", "self_downsample"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ConfigError(f"{name} must be a power of two >= 1, got {value}")

    def keeps(self, is_cross: bool, tokens: int, latent_tokens: int) -> bool:
        """Whether a layer with `tokens` query tokens is stored."""
        downsample = self.cross_downsample if is_cross else self.self_downsample
        return tokens * downsample * downsample <= latent_tokens


class AttentionStore:
    """Head-averaged fp16 attention maps keyed by (step, layer, kind, frame), in memory."""

    def __init__(self):
        self.maps: dict[tuple[int, str, bool, int], torch.Tensor] = {}

    def put(self, step: int, layer: str, is_cross: bool, frame: int, probs: torch.Tensor) -> None:
        self.maps[(step, layer, is_cross, frame)] = probs.detach().to("cpu", torch.float16)

    def get(self, step: int, layer: str, is_cross: bool, frame: int) -> torch.Tensor | None:
        return self.maps.get((step, layer, is_cross, frame))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.maps.values())

    def __len__(self) -> int:
        return len(self.maps)


def store_nbytes(
    unet_config: Mapping[str, Any],
    frames: int,
    latent_size: tuple[int, int],
    steps: tuple[int, int],
    kv_frames: int = 1,
    policy: StorePolicy = StorePolicy(),
) -> int:
    """Bytes an AttentionStore holds for a (height, width) latent and (steps, self_steps) recorded steps:
    frames x steps x (cross maps of kept layers) + frames x self_steps x (self maps of kept layers, query
    tokens x kv_frames x tokens), fp16."""
    (latent_height, latent_width), (steps, self_steps) = latent_size, steps
    latent_tokens = latent_height * latent_width
    cross = self_ = 0
    for _, kind, downsample in layer_downsampling(unet_config):
        tokens = level_tokens(latent_height, latent_width, downsample)
        if kind == "cross" and policy.keeps(True, tokens, latent_tokens):
            cross += tokens * TEXT_TOKENS
        if kind == "self" and policy.keeps(False, tokens, latent_tokens):
            self_ += tokens * tokens * kv_frames
    return BYTES_PER_VALUE * frames * (steps * cross + self_steps * self_)
