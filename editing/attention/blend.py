"""Local blend (Hertz et al., 2022, sec. 3.3; FateZero): a per-frame mask from the cross-attention of the
edited words; outside it the edit keeps the source latents of the inversion at the same timestep."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .store import layer_shape


def word_map(maps: torch.Tensor, positions: list[int], latent_height: int, latent_width: int) -> torch.Tensor:
    """(frames, 1, H, W) attention of the given text positions, from (frames, tokens, 77) maps of one layer."""
    frames, tokens, _ = maps.shape
    height, width = layer_shape(tokens, latent_height, latent_width)
    selected = maps[..., positions].float().sum(-1).view(frames, 1, height, width)
    return F.interpolate(selected, size=(latent_height, latent_width), mode="bilinear", align_corners=False)


def blend_mask(maps: torch.Tensor, threshold: float, dilation: int = 1) -> torch.Tensor:
    """Boolean (frames, 1, H, W) mask: each frame's map dilated (max-pool), scaled to [0, 1] between its
    minimum and maximum (robust to near-uniform maps), above threshold."""
    if dilation > 0:
        maps = F.max_pool2d(maps, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    low = maps.flatten(1).amin(1).view(-1, 1, 1, 1)
    span = (maps.flatten(1).amax(1).view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return (maps - low) / span > threshold


class LocalBlend:
    """Accumulates, per clip frame, the attention of the blend words in the source and target prompts."""

    def __init__(
        self,
        source_positions: list[int],
        target_positions: list[int],
        latent_height: int,
        latent_width: int,
        threshold: float,
        dilation: int = 1,
    ):
        self.source_positions, self.target_positions = source_positions, target_positions
        self.size = (latent_height, latent_width)
        self.threshold, self.dilation = threshold, dilation
        self.sums: dict[int, torch.Tensor] = {}

    def add(self, frames: list[int], source: torch.Tensor | None, target: torch.Tensor) -> None:
        """Add one layer's (frames, tokens, 77) maps: the stored source ones and the edit's own."""
        total = torch.zeros(len(frames), 1, *self.size)
        if source is not None and self.source_positions:
            total += _unit(word_map(source, self.source_positions, *self.size))
        if self.target_positions:
            total += _unit(word_map(target, self.target_positions, *self.size))
        for position, frame in enumerate(frames):
            self.sums[frame] = self.sums.get(frame, 0) + total[position]

    def mask(self, num_frames: int) -> torch.Tensor | None:
        """The (frames, 1, H, W) mask so far, or None before any map was added."""
        if len(self.sums) < num_frames:
            return None
        return blend_mask(torch.stack([self.sums[f] for f in range(num_frames)]), self.threshold, self.dilation)


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Each frame's map scaled to a maximum of 1."""
    return maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)


def blend_latents(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Edited latents inside the mask, source latents outside it (exactly)."""
    return torch.where(mask.to(edited.device), edited, source.to(edited.device, edited.dtype))
