"""A bounded feature bank (StreamV2V, Liang et al., 2024): frames of later chunks also attend to the
self-attention keys and values of the most recent frames of earlier chunks, not only to the anchor.

Within one denoising step the loop runs the clip's chunks in order; after each chunk, every
self-attention layer appends its target frames' keys and values to the bank (per guidance branch),
keeping the last `frames` of them. The next chunk's frames attend to their mode's frames plus the bank.
The bank is emptied at each step, so every entry is from the same noise level. It is a sequential
mode: a chunk needs the chunks before it. Memory: `bank_nbytes` (per step, all layers).

The anchors are computed once per step (editing.attention.anchor): later chunks borrow the first
chunk's anchor keys and values, which saw an empty bank, and leave the anchors out of what the bank adds.
(Before, each later chunk recomputed the anchor, and that copy of the anchor also attended to the bank.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .control import AttentionControl
from .cross_frame import CrossFrameAttnProcessor, FrameLayout, attention_processors
from .store import layer_downsampling, level_tokens


@dataclass
class FeatureBank:
    """The bank's entries: per self-attention layer, (frame, keys, values), keys (branches, tokens, inner)."""

    frames: int  # most past frames kept per layer
    step: int | None = None
    entries: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def begin(self, step: int) -> None:
        if step != self.step:
            self.step, self.entries = step, {}

    def read(self, layer: str, exclude: set[int]) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        return [entry for entry in self.entries.get(layer, []) if entry[0] not in exclude]

    def write(self, layer: str, frame: int, key: torch.Tensor, value: torch.Tensor) -> None:
        kept = [entry for entry in self.entries.get(layer, []) if entry[0] != frame]
        kept.append((frame, key.detach(), value.detach()))
        self.entries[layer] = kept[-self.frames :] if self.frames > 0 else []

    def nbytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size() for layer in self.entries.values() for _, k, v in layer
        )


@dataclass(frozen=True)
class BankCall:
    """Per-UNet-call state: the bank, the clip frames in the batch and those it produces."""

    bank: FeatureBank
    frames: tuple[int, ...]
    targets: tuple[int, ...]
    borrowed: tuple[int, ...] = ()  # anchors the call attends to without holding them (already in its context)


class BankAttnProcessor(CrossFrameAttnProcessor):
    """Cross-frame self-attention that also attends to the bank's frames, then banks its target frames."""

    every_frame_kv = True  # extend_context reads the batch's own keys and values

    def __init__(self, layer: str):
        self.layer = layer

    def extend_context(
        self,
        own: tuple[torch.Tensor, torch.Tensor],
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        frames: FrameLayout,
        bank: BankCall | None = None,
        **extra,
    ):
        if bank is None:
            return key, value, mask
        own_key, own_value = own
        batch, length, inner = own_key.shape
        branches = batch // frames.num_frames
        per_frame_key = own_key.view(branches, frames.num_frames, length, inner)
        per_frame_value = own_value.view(branches, frames.num_frames, length, inner)
        past = bank.bank.read(self.layer, set(bank.frames) | set(bank.borrowed))
        if past:
            extra_key = torch.cat([k for _, k, _ in past], dim=1).to(key.dtype)  # (branches, m * length, inner)
            extra_value = torch.cat([v for _, _, v in past], dim=1).to(value.dtype)
            repeat = lambda t: t[:, None].expand(branches, frames.num_frames, *t.shape[1:]).reshape(batch, t.shape[1], inner)  # noqa: E731
            key = torch.cat([key, repeat(extra_key)], dim=1)
            value = torch.cat([value, repeat(extra_value)], dim=1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((*mask.shape[:-1], extra_key.shape[1]))], dim=-1)
        for position, frame in enumerate(bank.frames):
            if frame in bank.targets:
                bank.bank.write(self.layer, frame, per_frame_key[:, position], per_frame_value[:, position])
        return key, value, mask


class FeatureBankControl(AttentionControl):
    """The loop's attention control for `--feature-bank N`: installs bank processors on self-attention
    and hands each UNet call the bank; the bank starts empty at every step. The loop may share the
    anchors' keys and values across chunks with it (`shares_anchors`)."""

    shares_anchors = True

    def __init__(self, frames: int):
        self.bank = FeatureBank(frames)

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        self.bank.begin(step)
        return {"bank": BankCall(self.bank, tuple(frames), tuple(targets), tuple(borrowed))}

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        # every layer takes the call's `bank` (diffusers warns on each call of a processor that does not);
        # only self-attention (attn1) reads and writes it
        installed = {name: BankAttnProcessor(name) for name in unet.attn_processors}
        with attention_processors(unet, installed):
            yield


def bank_nbytes(
    unet_config: dict, latent_height: int, latent_width: int, frames: int, branches: int, bytes_per_value: int
) -> int:
    """Bytes the bank holds at most: frames x branches x (keys + values) over every self-attention layer."""
    channels = list(unet_config["block_out_channels"])
    total = 0
    for name, kind, downsample in layer_downsampling(unet_config):
        if kind == "self":
            total += 2 * frames * branches * level_tokens(latent_height, latent_width, downsample) * _width(name, channels)
    return total * bytes_per_value


def _width(name: str, channels: list[int]) -> int:
    """The inner width of the attention layers of a UNet place (down_blocks.i / mid_block / up_blocks.i)."""
    if name.startswith("mid_block"):
        return channels[-1]
    index = int(name.split(".")[1])
    return channels[index] if name.startswith("down_blocks") else list(reversed(channels))[index]
