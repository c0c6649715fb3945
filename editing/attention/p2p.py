"""Prompt-to-Prompt / FateZero attention control on top of cross-frame attention.

One processor class (`ControlledAttnProcessor`, a CrossFrameAttnProcessor) computes attention
probabilities explicitly only in the layers its controller asks for and keeps fused SDPA elsewhere.
The controller sees every such map through one hook, `forward(probs, is_cross, place, call)` (as in
prompt-to-prompt's AttentionControl; `PromptControl` here); each edit type overrides one method, `replace_cross`.

The loop makes the step boundary explicit: `denoise(..., LoopHooks(attention_control=controller))` passes
the controller's `call(step, batch)` to each layer (as `LayerCall.extra["control"]`), naming the step and the clip frames
the UNet batch holds. The recorder stores the inversion's maps per step, layer and frame; the edit pass
reads them in reverse order (edit step k uses inversion step n - 1 - k).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .blend import LocalBlend
from .control import AttentionControl
from .cross_frame import CrossFrameAttnProcessor, Heads, attention_processors
from .store import AttentionStore, StorePolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionCall:
    """Per-UNet-call state: the controller, the step, the clip frames in the batch and those it produces."""

    controller: PromptControl
    step: int
    frames: tuple[int, ...]
    targets: tuple[int, ...]


class ControlledAttnProcessor(CrossFrameAttnProcessor):
    """Cross-frame attention whose probabilities a controller may read or replace, layer by layer."""

    def __init__(self, place: str):
        self.place = place

    def attend(self, attn: torch.nn.Module, heads: Heads, is_self: bool, control: AttentionCall | None = None) -> torch.Tensor:
        """Fused attention, unless the controller wants this layer's probabilities."""
        query, key, value, mask = heads.query, heads.key, heads.value, heads.mask
        if control is None or not control.controller.wants(self.place, not is_self, query.shape[2], control):
            return super().attend(attn, heads, is_self)
        scores = (query @ key.transpose(-1, -2)) * attn.scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.float().softmax(-1)
        probs = control.controller.forward(probs, not is_self, self.place, control)
        return probs.to(value.dtype) @ value


class PromptControl(AttentionControl):
    """Base Prompt-to-Prompt controller: installs the controlled processors and is told each call's step and frames."""

    def __init__(self, latent_height: int, latent_width: int):
        self.latent_height, self.latent_width = latent_height, latent_width

    @property
    def latent_tokens(self) -> int:
        return self.latent_height * self.latent_width

    def call(self, step: int, frames: tuple[int, ...], targets: tuple[int, ...], borrowed: tuple[int, ...] = ()) -> dict:
        """The cross_attention_kwargs entry for one UNet call."""
        return {"control": AttentionCall(self, step, tuple(frames), tuple(targets))}

    @contextlib.contextmanager
    def processors(self, unet: torch.nn.Module) -> Iterator[None]:
        """Install a controlled processor on every attention layer; the originals come back after."""
        with attention_processors(unet, {name: ControlledAttnProcessor(name) for name in unet.attn_processors}):
            yield

    def wants(self, place: str, is_cross: bool, tokens: int, call: AttentionCall) -> bool:
        return False

    def forward(self, probs: torch.Tensor, is_cross: bool, place: str, call: AttentionCall) -> torch.Tensor:
        return probs


def conditional(probs: torch.Tensor, frames: int) -> torch.Tensor:
    """The conditional-branch rows of a (branches * frames, ...) batch (the last `frames`)."""
    return probs[-frames:]


class AttentionRecorder(PromptControl):
    """Stores the inversion's head-averaged maps of the layers and steps the policy keeps."""

    def __init__(self, store: AttentionStore, policy: StorePolicy, latent_height: int, latent_width: int, self_steps: set[int]):
        super().__init__(latent_height, latent_width)
        self.store, self.policy, self.self_steps = store, policy, self_steps

    def wants(self, place: str, is_cross: bool, tokens: int, call: AttentionCall) -> bool:
        if not is_cross and call.step not in self.self_steps:
            return False
        return self.policy.keeps(is_cross, tokens, self.latent_tokens)

    def forward(self, probs: torch.Tensor, is_cross: bool, place: str, call: AttentionCall):
        mean = conditional(probs, len(call.frames)).mean(1)
        for position, frame in enumerate(call.frames):
            if frame in call.targets:
                self.store.put(call.step, place, is_cross, frame, mean[position])
        return probs


@dataclass(frozen=True)
class RecordedAttention:
    """What an inversion recorded: the maps, the policy that kept them, the latent size and the inverted steps."""

    store: AttentionStore
    policy: StorePolicy
    latent_height: int
    latent_width: int
    steps: int


class AttentionEdit(PromptControl):
    """Replaces the edit's attention with the inversion's for the first share of the steps.

    Cross-attention of the conditional branch: `replace_cross` (per edit type) for the first
    `cross_replace` share of the steps. Self-attention (both branches: it carries the layout, not the
    text): the stored map for the first `self_replace` share. Blend-word maps feed the local blend.
    """

    def __init__(
        self,
        recorded: RecordedAttention,
        edit_steps: int,
        cross_replace: float,
        self_replace: float,
        blend: LocalBlend | None = None,
    ):
        super().__init__(recorded.latent_height, recorded.latent_width)
        self.store, self.policy = recorded.store, recorded.policy
        self.inverted_steps, self.edit_steps = recorded.steps, edit_steps
        self.cross_steps = replaced_steps(cross_replace, edit_steps)
        self.self_steps = replaced_steps(self_replace, edit_steps)
        self.blend = blend

    def source_step(self, step: int) -> int:
        """The inversion step whose maps edit step `step` uses (reverse order)."""
        return self.inverted_steps - 1 - step

    def wants(self, place: str, is_cross: bool, tokens: int, call: AttentionCall) -> bool:
        if (
            not self.policy.keeps(is_cross, tokens, self.latent_tokens)
            or not 0 <= self.source_step(call.step) < self.inverted_steps
        ):
            return False
        if is_cross:
            return call.step < self.cross_steps or self.blend is not None
        return call.step < self.self_steps

    def stored(self, call: AttentionCall, place: str, is_cross: bool) -> torch.Tensor | None:
        """(frames, tokens, keys) stored maps of the batch's frames, or None when any is missing."""
        maps = [self.store.get(self.source_step(call.step), place, is_cross, f) for f in call.frames]
        if any(m is None for m in maps):
            return None
        return torch.stack(maps).float()

    def forward(self, probs: torch.Tensor, is_cross: bool, place: str, call: AttentionCall):
        frames = len(call.frames)
        source = self.stored(call, place, is_cross)
        if source is not None and source.shape[-1] != probs.shape[-1]:
            log.warning("stored attention of %s has %d keys, the edit %d: not replaced", place, source.shape[-1], probs.shape[-1])
            source = None
        if not is_cross:
            if source is None:
                return probs
            return (
                source[None, :, None]
                .expand(probs.shape[0] // frames, -1, probs.shape[1], -1, -1)
                .reshape(probs.shape)
                .to(probs.dtype)
            )
        current = conditional(probs, frames)
        if self.blend is not None:
            targets = [p for p, f in enumerate(call.frames) if f in call.targets]
            self.blend.add(
                [call.frames[p] for p in targets], None if source is None else source[targets], current.mean(1)[targets]
            )
        if source is None or call.step >= self.cross_steps:
            return probs
        replaced = self.replace_cross(source[:, None], current)
        return torch.cat([probs[:-frames], replaced.to(probs.dtype)])

    def replace_cross(self, source: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """The edit's cross-attention from the source's (frames, 1, tokens, 77) and its own (frames, heads, tokens, 77)."""
        raise NotImplementedError


class SwapEdit(AttentionEdit):
    """Word swap: the target's attention is the source's, mapped token to token (M_t = M_s @ mapper)."""

    def __init__(self, mapper: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.mapper = mapper

    def replace_cross(self, source: torch.Tensor, current: torch.Tensor):
        return (source @ self.mapper.to(source)).expand_as(current)


class RefineEdit(AttentionEdit):
    """Refinement: aligned tokens take the source's attention, added tokens keep their own."""

    def __init__(self, index: torch.Tensor, alpha: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.index, self.alpha = index, alpha

    def replace_cross(self, source: torch.Tensor, current: torch.Tensor):
        alpha = self.alpha.to(current)
        return source[..., self.index.to(source.device)] * alpha + current * (1 - alpha)


class ReweightEdit(RefineEdit):
    """Reweighting: the refined attention with each chosen word's column scaled by its weight."""

    def __init__(self, weights: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.weights = weights

    def replace_cross(self, source: torch.Tensor, current: torch.Tensor):
        return super().replace_cross(source, current) * self.weights.to(current)


def replaced_steps(share: float, steps: int) -> int:
    """How many of the first steps a replacement share covers (0 = none, 1 = all)."""
    return int(round(share * steps))
