"""The attention-editing stages of an edit (Prompt-to-Prompt, FateZero, null-text inversion).

Stages: invert the source under the source prompt while recording its attention; optionally fit
null-text embeddings (cached); build the controller the edit type asks for; wrap the step callback with
the local blend. The core calls `prepare_attention_edit` with its pass's context (editing.context)
instead of its plain inversion when the request has an `attention_edit` config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import prompts, sampling
from .attention.blend import LocalBlend, blend_latents
from .attention.p2p import (
    AttentionEdit,
    AttentionRecorder,
    RecordedAttention,
    RefineEdit,
    ReweightEdit,
    SwapEdit,
    replaced_steps,
)
from .attention.store import AttentionStore, StorePolicy
from .cache import cache_key
from .config import AttentionEditConfig
from .context import EditContext
from .errors import ConfigError
from .inversion import Trajectory, ddim_invert, inverse_schedule
from .nulltext import NullTextFit, null_text_invert

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class PreparedEdit:
    """What the denoising stage needs for an attention edit."""

    latents: torch.Tensor
    trajectory: Trajectory
    control: AttentionEdit
    blend: LocalBlend | None
    negatives: tuple[torch.Tensor, ...] | None
    store_bytes: int
    null_text_cached: bool = False

    def wrap(self, callback: sampling.StepCallback | None) -> sampling.StepCallback | None:
        """The step callback followed by the local blend (source latents outside the mask)."""
        if self.blend is None:
            return callback
        return blend_callback(self.blend, self.trajectory, callback)

    def summary(self, config: AttentionEditConfig) -> dict:
        return {
            "edit": config.edit,
            "source_prompt": config.source_prompt,
            "cross_replace": config.cross_replace,
            "self_replace": config.self_replace,
            "blend": self.blend is not None,
            "null_text": self.negatives is not None,
            "null_text_cached": self.null_text_cached,
            "store_bytes": self.store_bytes,
        }


def self_record_steps(self_replace: float, steps: int) -> set[int]:
    """Inversion steps whose self-attention the edit replaces (edit step k reads inversion step n - 1 - k)."""
    return {steps - 1 - k for k in range(replaced_steps(self_replace, steps))}


def make_controller(
    config: AttentionEditConfig,
    target_prompt: str,
    tokenizer: Any,
    recorder: AttentionRecorder,
    steps: int,
    blend: LocalBlend | None,
) -> AttentionEdit:
    """The controller of the configured edit type, with its token alignment, reading what `recorder` stored."""
    recorded = RecordedAttention(recorder.store, recorder.policy, recorder.latent_height, recorder.latent_width, steps)
    common = dict(
        recorded=recorded,
        edit_steps=steps,
        cross_replace=config.cross_replace,
        self_replace=config.self_replace,
        blend=blend,
    )
    if config.edit == "swap":
        return SwapEdit(prompts.swap_mapper(tokenizer, config.source_prompt, target_prompt), **common)
    index, alpha = prompts.refine_alignment(tokenizer, config.source_prompt, target_prompt)
    if config.edit == "refine":
        return RefineEdit(index, alpha, **common)
    weights = prompts.reweight_vector(tokenizer, target_prompt, dict(config.reweight))
    return ReweightEdit(weights, index=index, alpha=alpha, **common)


def make_blend(
    config: AttentionEditConfig, target_prompt: str, tokenizer: PreTrainedTokenizerBase, latent_size: tuple[int, int]
) -> LocalBlend | None:
    """The local blend of the configured words, or None when no blend word is given."""
    if not config.blend_words:
        return None
    source = prompts.blend_positions(tokenizer, config.source_prompt, config.blend_words)
    target = prompts.blend_positions(tokenizer, target_prompt, config.blend_words)
    if not source and not target:
        raise ConfigError(f"blend words {', '.join(config.blend_words)} occur in neither prompt")
    return LocalBlend(source, target, *latent_size, threshold=config.blend_threshold)


def blend_callback(
    blend: LocalBlend, trajectory: Trajectory, inner: sampling.StepCallback | None = None
) -> sampling.StepCallback:
    """After edit step k: latents outside the blend mask become the inversion's state at the same timestep."""
    steps = len(trajectory.timesteps)

    def on_step(index: int, timestep: int, latents: torch.Tensor):
        if inner is not None:
            replaced = inner(index, timestep, latents)
            latents = latents if replaced is None else replaced
        mask = blend.mask(latents.shape[0])
        if mask is None:
            return latents
        return blend_latents(latents, trajectory.states[steps - 1 - index], mask)

    return on_step


def prepare_attention_edit(
    context: EditContext, frames: np.ndarray, controls: tuple[sampling.ControlSignal, ...]
) -> PreparedEdit:
    """Invert the source under the source prompt, recording attention; fit null-text; build the controller.

    With a tuned model (editing.attention.tuned.TunedControl) the recorder and the controller run inside
    its processors, so attention editing composes with one-shot tuning."""
    parts, backbone, progress, tuned = context.parts, context.backbone, context.progress, context.tuned
    config: AttentionEditConfig = parts.attention_edit
    edit, engine = parts.edit, parts.engine
    steps = len(context.timesteps)
    progress("invert", 0, steps)
    clean = sampling.encode_frames(backbone, frames, engine.chunk)
    latent_size = tuple(clean.shape[-2:])
    source_text = sampling.encode_text(backbone, config.source_prompt, edit.negative_prompt, guided=True)
    policy = StorePolicy(cross_downsample=1, self_downsample=config.self_downsample)
    store = AttentionStore()
    recorder = AttentionRecorder(store, policy, *latent_size, self_steps=self_record_steps(config.self_replace, steps))

    def report(index: int, timestep: int, latents: torch.Tensor) -> None:
        progress("invert", index + 1, steps)

    positive = sampling.TextConditioning(source_text.positive, None)
    recording = recorder if tuned is None else tuned.wrap(recorder)
    trajectory = ddim_invert(
        backbone,
        clean,
        inverse_schedule(backbone, edit.steps, edit.strength),
        positive,
        context.plan,
        sampling.LoopHooks(callback=report, attention_control=recording),
    )
    log.info("attention store: %d maps, %.1f MB", len(store), store.nbytes() / 1e6)
    negatives, cached = None, False
    if config.null_text:
        negatives, cached = null_text_embeddings(context, trajectory, sampling.Guidance(source_text, edit.guidance, controls))
    blend = make_blend(config, edit.prompt, backbone.tokenizer, latent_size)
    control = make_controller(config, edit.prompt, backbone.tokenizer, recorder, steps, blend)
    control = control if tuned is None else tuned.wrap(control)
    latents = trajectory.final.to(backbone.device, backbone.dtype)
    return PreparedEdit(latents, trajectory, control, blend, negatives, store.nbytes(), cached)


def null_text_embeddings(
    context: EditContext, trajectory: Trajectory, guidance: sampling.Guidance
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Per-step unconditional embeddings from the cache, or fitted now (`guidance`: the source prompt and the
    request's ControlNets) and cached; and whether they came from the cache."""
    parts, backbone, plan = context.parts, context.backbone, context.plan
    config, edit, engine = parts.attention_edit, parts.edit, parts.engine
    key = cache_key(
        kind="null-text",
        source=context.source,
        model=backbone.name,
        dtype=str(backbone.dtype),
        steps=edit.steps,
        strength=edit.strength,
        prompt=config.source_prompt,
        negative_prompt=edit.negative_prompt,
        guidance=edit.guidance,
        iterations=config.null_text_iterations,
        attention=plan.mode,
        window=plan.window,
        chunk=engine.chunk,
        controls=[(c.kind, c.scale, c.start, c.end, c.model, c.video) for c in engine.controls],
    )
    cache = context.cache("null-text")
    stored = cache.load(key)
    if stored is not None:
        log.info("null-text embeddings from cache %s", key)
        return tuple(e.to(backbone.device, backbone.dtype) for e in stored["embeddings"]), True

    def report(done: int, total: int) -> None:
        context.progress("null_text", done, total)

    fit = NullTextFit(trajectory, config.null_text_iterations, progress=report)
    embeddings, _ = null_text_invert(backbone, fit, guidance, edit.steps, edit.strength, plan)
    cache.save(key, {"embeddings": torch.stack([e.cpu() for e in embeddings])})
    return embeddings, False
