"""The anchor frames' self-attention keys and values, computed once per denoising step and shared by
every chunk of the clip.

A clip longer than one chunk runs, at each step, its chunks one after another through the UNet, and
every chunk attends to the shared anchor frames (frame 0 for `first`). Where the anchors' own attention
names only anchors, the same in every chunk (`FramePlan.sharing_anchors` checks this from the mode's
rows), an anchor carried into a later chunk would be computed from the same inputs as in the first: so
the first chunk keeps, in every self-attention layer, the anchors' keys and values (`AnchorStore`), and
the later chunks leave the anchors out of their UNet batch and read them from the store instead.

What it saves: one UNet image per non-anchor chunk, per guidance branch and step (16 frames at chunk 8
with `first`: 16 images per step instead of 17). What it holds, at most: for each self-attention layer
the anchors' keys and values of every guidance branch, `anchor_nbytes` =
anchors x branches x 2 x sum over self-attention layers of (tokens x width) x bytes per value; for
SD-1.5 at 512 px, one anchor, guidance on, fp16 that is 92 MB (at 256 px 23 MB; fp32 doubles it). The store is
overwritten by the first chunk at every step (every entry is from the current noise level) and dropped
when the loop ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .bank import bank_nbytes

if TYPE_CHECKING:
    from .cross_frame import FrameLayout


@dataclass
class AnchorStore:
    """Per self-attention module (by identity): the anchor frames and their keys and values,
    each (branches, anchors, tokens, inner)."""

    entries: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def keep(self, attn: torch.nn.Module, frames: tuple[int, ...], key: torch.Tensor, value: torch.Tensor) -> None:
        self.entries[id(attn)] = (frames, key.detach(), value.detach())

    def take(self, attn: torch.nn.Module, frames: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept keys and values of `frames`, in that order."""
        if id(attn) not in self.entries:
            raise RuntimeError("a chunk borrowed the anchors' keys and values before the chunk that holds the anchors ran")
        kept, key, value = self.entries[id(attn)]
        order = [kept.index(frame) for frame in frames]
        return key[:, order], value[:, order]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for _, k, v in self.entries.values())


@dataclass(frozen=True)
class AnchorCall:
    """Per-UNet-call state: the store, the anchors this call keeps (their batch positions) and the
    anchors it borrows (clip frames, in the order the frame layout puts them after the batch's own)."""

    store: AnchorStore
    keeps: tuple[tuple[int, int], ...] = ()  # (clip frame, batch position)
    borrows: tuple[int, ...] = ()

    def exchange(
        self, attn: torch.nn.Module, key: torch.Tensor, value: torch.Tensor, frames: FrameLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep this call's anchors' keys/values, or append the borrowed ones after the batch's own frames.

        key, value: (branches x num_frames, tokens, inner) → (branches x kv_frames, tokens, inner)."""
        rows, length, inner = key.shape
        branches = rows // frames.num_frames
        per_key = key.view(branches, frames.num_frames, length, inner)
        per_value = value.view(branches, frames.num_frames, length, inner)
        if self.keeps:
            positions = [position for _, position in self.keeps]
            self.store.keep(attn, tuple(frame for frame, _ in self.keeps), per_key[:, positions], per_value[:, positions])
        if not self.borrows:
            return key, value
        borrowed_key, borrowed_value = self.store.take(attn, self.borrows)
        key = torch.cat([per_key, borrowed_key.to(key.dtype)], dim=1).reshape(branches * frames.kv_frames, length, inner)
        value = torch.cat([per_value, borrowed_value.to(value.dtype)], dim=1).reshape(branches * frames.kv_frames, length, inner)
        return key, value


def anchor_nbytes(
    unet_config: dict, latent_height: int, latent_width: int, anchors: int, branches: int, bytes_per_value: int
) -> int:
    """Bytes the anchor store holds at most: the feature bank's formula for `anchors` frames."""
    return bank_nbytes(unet_config, latent_height, latent_width, anchors, branches, bytes_per_value)
