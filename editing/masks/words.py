"""Mask source `words`: where the model itself sees words of the prompt (`--mask-words "red star"`).

The source is inverted a few DDIM steps under a prompt holding the words (the inversion prompt when it
holds them, else the edit's prompt, else the words alone), and the cross-attention of their tokens (of
the words in a row where the prompt has them so: "green square", not the other square) is
summed over layers and steps for every frame (Prompt-to-Prompt's maps, through the controlled attention
processors). Each frame's map is scaled to [0, 1], made steady over time (the median of each frame and
its neighbours), enlarged to the frame's size, thresholded and snapped to the frame's edges (GrabCut
seeded by the map). The attention is coarse and spills onto neighbouring regions in some frames, so the
mask is the tightest frame's, carried through the clip along the source's flow (the `flow` mask
source's tracker). It needs only the model, so it works offline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..attention.blend import word_map
from ..attention.p2p import PromptControl, conditional
from ..errors import ConfigError
from ..inversion import ddim_invert, inverse_schedule
from ..prompts import phrase_positions
from ..sampling import LoopHooks, encode_frames, encode_text, plan_frames
from .flow_track import track_by_flow
from .registry import MaskInputs, MaskSource, register_mask_source

if TYPE_CHECKING:
    from ..attention.p2p import AttentionCall
    from ..models import Backbone

THRESHOLD = 0.5  # share of a frame's strongest attention above which a pixel is probably in the mask
SURE, OUTSIDE = 0.85, 0.15  # above: surely in the mask; below: surely not
GRABCUT_ROUNDS = 5
STEPS, STRENGTH = 10, 0.5  # the DDIM inversion whose attention is read: half of a 10-step schedule
STEADY = 1  # frames on each side of the temporal median


def prompt_with(words: str, *prompts: str) -> str:
    """The first prompt holding every word, else the words themselves."""
    wanted = words.lower().split()
    for prompt in prompts:
        if prompt and all(word in prompt.lower().replace(",", " ").split() for word in wanted):
            return prompt
    return words


def _recorder(positions: list[int], latent_height: int, latent_width: int):
    class WordsRecorder(PromptControl):
        """Sums, per clip frame, the cross-attention of the given token positions over layers and steps."""

        def __init__(self):
            super().__init__(latent_height, latent_width)
            self.sums: dict[int, torch.Tensor] = {}

        def wants(self, place: str, is_cross: bool, tokens: int, call: AttentionCall) -> bool:
            return is_cross

        def forward(self, probs: torch.Tensor, is_cross: bool, place: str, call: AttentionCall):
            maps = word_map(conditional(probs, len(call.frames)).mean(1), positions, latent_height, latent_width)
            maps = maps / maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            for position, frame in enumerate(call.frames):
                if frame in call.targets:
                    self.sums[frame] = self.sums.get(frame, 0) + maps[position, 0].float().cpu()
            return probs

    return WordsRecorder()


def attention_maps(frames: np.ndarray, words: str, prompt: str, backbone: Backbone, chunk: int = 8) -> np.ndarray:
    """(N, h, w) float: the words' summed cross-attention on each frame, at latent size."""
    positions = phrase_positions(backbone.tokenizer, prompt, words)
    if not positions:
        raise ConfigError(f"mask_words {words!r} are not words the text encoder reads in {prompt!r}")
    clean = encode_frames(backbone, frames, chunk)
    recorder = _recorder(positions, *clean.shape[-2:])
    text = encode_text(backbone, prompt, "", guided=False)
    ddim_invert(
        backbone,
        clean,
        inverse_schedule(backbone, STEPS, STRENGTH),
        text,
        plan_frames(len(frames), chunk, "first"),
        LoopHooks(attention_control=recorder),
    )
    return torch.stack([recorder.sums[f] for f in range(len(frames))]).numpy()


def steady_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) float in [0, 1]: each frame's map scaled to [0, 1], the temporal median of it and its
    neighbours, enlarged to the frame's size (bilinear)."""
    low = maps.reshape(len(maps), -1).min(1)[:, None, None]
    span = np.maximum(maps.reshape(len(maps), -1).max(1)[:, None, None] - low, 1e-12)
    unit = (maps - low) / span
    steady = np.stack([np.median(unit[max(0, t - STEADY) : t + STEADY + 1], axis=0) for t in range(len(unit))])
    return F.interpolate(torch.from_numpy(steady)[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[
        :, 0
    ].numpy()


def snapped(frame: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """(H, W) bool: the thresholded map snapped to the frame's edges by GrabCut (Rother et al., 2004), seeded
    sure inside above SURE, probably inside above THRESHOLD, sure outside below OUTSIDE: attention is 8 times
    coarser than the frame."""
    seeds = np.full(soft.shape, cv2.GC_PR_BGD, np.uint8)
    seeds[soft > THRESHOLD] = cv2.GC_PR_FGD
    seeds[soft > SURE] = cv2.GC_FGD
    seeds[soft < OUTSIDE] = cv2.GC_BGD
    seeds[np.unravel_index(int(soft.argmax()), soft.shape)] = cv2.GC_FGD
    if not (seeds == cv2.GC_BGD).any() and not (seeds == cv2.GC_PR_BGD).any():
        return np.ones(soft.shape, bool)
    models = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(np.ascontiguousarray(frame[..., ::-1]), seeds, None, *models, GRABCUT_ROUNDS, cv2.GC_INIT_WITH_MASK)
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


def words_masks(inputs: MaskInputs) -> np.ndarray:
    words = inputs.config.mask_words.strip()
    prompt = prompt_with(words, inputs.describe, inputs.prompt)
    maps = attention_maps(inputs.frames, words, prompt, inputs.backbone)
    soft = steady_maps(maps, *inputs.frames.shape[1:3])
    return tightest_tracked(inputs.frames, [snapped(frame, weights) for frame, weights in zip(inputs.frames, soft)])


def tightest_tracked(frames: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """(N, H, W) bool: the smallest of the frames' masks carried to every frame along the flow. Each
    snapped mask covers the words' object and, in some frames, a neighbour the attention spilled onto;
    the smallest holds the fewest strays."""
    index = int(np.argmin([mask.sum() for mask in masks]))
    return track_by_flow(frames, masks[index], index)


register_mask_source(
    MaskSource("words", words_masks, needs=("backbone",), help="the model's cross-attention of words of the prompt on the source")
)
