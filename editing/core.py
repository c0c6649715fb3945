"""The editing core: one pass over the frames, frames in, frames out.

`edit_frames` takes decoded RGB frames and the request's parts (what to make, how the engine edits,
attention editing, tuned weights) and returns the edited frames, in stages that each take the pass's
`EditContext` (editing.context): load tuned weights and a reference image's IP-Adapter (embedded once,
editing.reference); encode the prompts; extract condition maps (cached by frame content); DDIM-invert
the source (cached by content, so a second prompt skips it) or noise it (SDEdit); denoise with the
request's sampler, cross-frame attention, chunk by chunk around shared anchor frames, with ControlNets
and optional flow-guided fusion; decode; match colours (optional). Keyframes then propagation run above
it (editing.staging), and reading and writing files is `editing.pipeline`'s job.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from . import control as conditions  # its extractors load on first use (editing.control)
from . import sampling
from .attention.bank import FeatureBankControl
from .attention.control import AttentionControl
from .attention.modes import mode_control
from .cache import cache_key, content_hash, default_cache_dir
from .compat import check as check_combination
from .context import EditContext, EditParts, KeyedFrames, ProgressFn, SourceKey, StageTimer, frames_key, no_progress
from .errors import ConfigError
from .flows import source_flows
from .frames import check_frames
from .held import first_held, hold_callback, noised_states, trajectory_states
from .inversion import Trajectory, ddim_invert, inverse_schedule, load_trajectory, save_trajectory
from .memo import current_memo
from .models import Backbone, default_controlnet, load_controlnet, load_image_adapter
from .pinned import Pinning, guided_start, pinned_frames
from .prompt_edit import PreparedEdit, prepare_attention_edit
from .reference import prepare_reference
from .stepcache import parse_step_caches
from .temporal import (
    FlowFusion,
    PixelFusion,
    make_flow_fusion_callback,
    make_pixel_fusion_callback,
    match_colors,
    step_alphas,
    vae_codec,
)
from .tuning import load_tuned
from .windows import edit_context

log = logging.getLogger(__name__)


@dataclass
class EditedFrames:
    """What `edit_frames` made: the frames, and how."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    inversion_cached: bool = False
    attention_edit: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what the user should be told, one sentence each (a prompt that was cut)
    keyframes: tuple[int, ...] | None = None  # with --keyframes: the frames that were edited, the rest propagated
    removal: dict | None = None  # with --remove: hole pixels filled from other frames and diffused (editing.removal)


@dataclass(frozen=True)
class Begun:
    """Where denoising starts: the latents, whether the inversion came from the cache, the attention
    control of the loop, and an attention edit's prepared state (None for a plain edit)."""

    latents: torch.Tensor
    cached: bool
    control: AttentionControl | None
    prepared: PreparedEdit | None = None


def edit_frames(
    frames: np.ndarray,
    parts: EditParts,
    backbone: Backbone,
    progress: ProgressFn = no_progress,
    timer: StageTimer | None = None,
    start: np.ndarray | None = None,
) -> EditedFrames:
    """Edit (N, H, W, 3) uint8 RGB frames (sides multiples of 8) in one pass and return the edited frames.

    `start`, when given, is what is inverted (or noised) instead of the frames themselves; the frames
    still give the structure (condition maps, flow). Supplied keyframes make it themselves (editing.pinned).
    """
    frames = check_frames(frames)
    check_combination(parts)
    timer = timer or StageTimer(backbone.device)
    timer.device = backbone.device
    check_one_pass(parts)
    if parts.engine.keyframe_images:  # the frames follow the supplied images, with the guidance chosen for that
        parts = dataclasses.replace(parts, edit=dataclasses.replace(parts.edit, guidance=parts.engine.keyframe_guidance))
    with timer.stage("load_model"):
        tuned = None if parts.tuned is None else load_tuned(parts.tuned, backbone)
        reference = prepare_reference(parts.engine, backbone, load_image_adapter)  # embedded once (None without one)
    with timer.stage("encode_text"):
        text, warnings = encode_prompts(parts, backbone)
    pins, fitted = pinned_frames(parts.engine, frames) if parts.engine.keyframe_images else ((), ())
    context = pass_context(frames, parts, backbone, tuple(index for index, _ in pins) or (0,), tuned)
    context = dataclasses.replace(context, progress=progress, timer=timer)
    with timer.stage("conditions"):
        controls = prepare_controls(context, frames)
    warnings.extend(fitted)
    inverted = start_frames(frames, context.source, start, pins)
    with timer.stage("invert"):
        begun = begin(context, frames, inverted, controls)
    callback = step_callback(context, frames)
    if parts.held is not None:  # outside the region, the source's latents at every step (editing.region)
        callback = hold_outside(context, inverted, begun.prepared, callback)
    latents = begun.latents
    if pins:
        pinning = Pinning.make(pins, backbone, parts, context.timesteps)
        latents, callback = pinning.start(latents), pinning.wrap(callback)
    with timer.stage("denoise"):
        latents = run_denoise(
            context,
            dataclasses.replace(begun, latents=latents),
            sampling.Guidance(text, parts.edit.guidance, controls),
            reference,
            callback,
        )
    with timer.stage("decode_latents"):
        edited = decode(context, latents, len(frames), pins)
    summary = None if begun.prepared is None else begun.prepared.summary(parts.attention_edit)
    return EditedFrames(edited, begun.cached, summary, timer.seconds, tuple(warnings))


def check_one_pass(parts: EditParts) -> None:
    """Refuse what runs above the core: a mask (editing.region) and keyframes then propagation (editing.staging)."""
    if parts.masking is not None:  # a mask: region edit or removal run above the core and come back here without it
        raise ConfigError("an edit with a mask (region or removal) runs through editing.region.masked_edit")
    if parts.engine.keyframes_every:
        raise ConfigError("an edit with keyframes runs through editing.staging.edit_clip (keyframes, then propagation)")


def encode_prompts(parts: EditParts, backbone: Backbone) -> tuple[sampling.TextConditioning, list[str]]:
    """The edit's text conditioning, and one warning for each prompt longer than the text encoder takes."""
    config, engine = parts.edit, parts.engine
    text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
    prompts = [
        (config.prompt, "prompt"),
        (config.negative_prompt, "negative prompt"),
        (engine.inversion_prompt, "inversion prompt"),
    ]
    if parts.attention_edit is not None:
        prompts.append((parts.attention_edit.source_prompt, "source prompt"))
    warnings = [cut for cut in (sampling.prompt_cut(backbone.tokenizer, p, name) for p, name in prompts if p) if cut]
    for warning in warnings:
        log.warning(warning)
    return text, warnings


def pass_context(
    frames: np.ndarray, parts: EditParts, backbone: Backbone, anchors: tuple[int, ...], tuned: AttentionControl | None
) -> EditContext:
    """The context of one pass: the frame plan around `anchors`, the frames' cache identity, the sampler and its timesteps."""
    engine = parts.engine
    windows = edit_context(engine.context, backbone.unet)  # context windows (editing.windows), by default with a motion module
    plan = sampling.plan_frames(len(frames), engine.chunk, engine.attention, engine.window, anchors, windows)
    plan = plan.with_calls(engine.token_merge, parse_step_caches(engine.step_cache))
    scheduler = backbone.scheduler(parts.edit.sampler)
    timesteps = sampling.sampling_timesteps(scheduler, parts.edit.steps, parts.edit.strength)
    cache_root = engine.cache_dir or default_cache_dir()
    return EditContext(parts, backbone, plan, frames_key(frames), cache_root, scheduler, timesteps, tuned=tuned)


def start_frames(
    frames: np.ndarray, source: SourceKey, start: np.ndarray | None, pins: tuple[tuple[int, np.ndarray], ...]
) -> KeyedFrames:
    """What is inverted (or noised): `start`, the frames guided by supplied keyframes, or the frames themselves."""
    if pins and start is None:
        start = guided_start(frames, pins)
    if start is None:
        return KeyedFrames(frames, source)
    start = check_frames(start)
    return KeyedFrames(start, frames_key(start))


def begin(context: EditContext, frames: np.ndarray, start: KeyedFrames, controls: tuple[sampling.ControlSignal, ...]) -> Begun:
    """The start of denoising: an attention edit's inversion and controller, or the plain edit's start latents and control."""
    parts = context.parts
    if parts.attention_edit is not None:
        prepared = prepare_attention_edit(context, frames, controls)
        return Begun(prepared.latents, False, prepared.control, prepared)
    control = attention_control(parts, frames, context.backbone, context.tuned)
    latents, cached = start_latents(context, start, control)
    return Begun(latents, cached, control)


def run_denoise(
    context: EditContext, begun: Begun, guidance: sampling.Guidance, reference: object, callback: sampling.StepCallback
) -> torch.Tensor:
    """Denoise from where `begun` starts, with the request's sampler and the pass's plan."""
    context.progress("denoise", 0, len(context.timesteps))
    prepared = begun.prepared
    guidance = dataclasses.replace(guidance, negatives=None if prepared is None else prepared.negatives, reference=reference)
    callback = callback if prepared is None else prepared.wrap(callback)
    return sampling.denoise(
        context.backbone,
        sampling.Schedule(context.scheduler, context.timesteps),
        begun.latents,
        guidance,
        context.plan,
        sampling.LoopHooks(callback=callback, attention_control=begun.control, seed=context.parts.edit.seed),
    )


def decode(context: EditContext, latents: torch.Tensor, count: int, pins: tuple[tuple[int, np.ndarray], ...]) -> np.ndarray:
    """The wanted frames decoded (colours matched when asked), each supplied keyframe exactly the supplied image."""
    context.progress("decode_latents", 0, 1)
    engine = context.parts.engine
    wanted = decoded_indices(context.parts.decode_frames, count)
    edited = sampling.decode_latents(context.backbone, latents, engine.chunk, wanted)
    if engine.smooth_color:
        edited = match_colors(edited)
    wanted = wanted or tuple(range(count))
    for index, image in pins:
        if index in wanted:
            edited[wanted.index(index)] = image  # the supplied frame is the result, exactly
    return edited


def attention_control(
    parts: EditParts, frames: np.ndarray, backbone: Backbone, tuned: AttentionControl | None = None
) -> AttentionControl | None:
    """The attention control of a plain edit: the tuned model's, a fresh feature bank, the mode's own
    (flow trajectories), or None for the plain cross-frame processor."""
    if parts.engine.feature_bank:
        return FeatureBankControl(parts.engine.feature_bank)
    scale = backbone.vae_scale_factor
    return mode_control(parts.engine.attention, frames, frames.shape[1] // scale, frames.shape[2] // scale) or tuned


def decoded_indices(wanted: tuple[int, ...] | None, count: int) -> tuple[int, ...] | None:
    """The frames to decode (None = all), checked against the clip's frame count."""
    if wanted is None:
        return None
    if not wanted or any(not 0 <= i < count for i in wanted):
        raise ConfigError(f"decode_frames must name frames 0 to {count - 1}, got {list(wanted)}")
    return tuple(wanted)


def start_latents(
    context: EditContext, start: KeyedFrames, sampling_control: AttentionControl | None
) -> tuple[torch.Tensor, bool]:
    """The latents sampling starts from: the cached or new DDIM inversion of `start` (through the tuned
    model when given), or noised source latents. A `sampling_control` receives (`use_source`) what the
    inversion's control recorded (TokenFlow's source features), from the cache or from the new inversion."""
    parts, backbone, progress, timesteps = context.parts, context.backbone, context.progress, context.timesteps
    if parts.engine.inversion == "none":
        progress("invert", 0, 1)
        clean = sampling.encode_frames(backbone, start.frames, parts.engine.chunk)
        noise = sampling.shared_noise(tuple(clean.shape), parts.edit.seed, backbone.device, clean.dtype)
        return sampling.noise_to_timestep(backbone.scheduler(), clean, noise, timesteps[0]), False
    inverting = attention_control(parts, start.frames, backbone, context.tuned)
    cache = context.cache("inversions")
    key = inversion_key(context, start.key, inverting)
    trajectory = load_trajectory(cache, key)
    cached = trajectory is not None
    if cached:
        log.info("inversion from cache %s", key)
    else:
        progress("invert", 0, len(timesteps))

        def report(index: int, timestep: int, latents: torch.Tensor) -> None:
            progress("invert", index + 1, len(timesteps))

        trajectory = invert(context, start.frames, inverting, report)
        save_trajectory(cache, key, trajectory)
    if sampling_control is not None:
        sampling_control.use_source(trajectory.features, len(trajectory.timesteps))
    return trajectory.final.to(backbone.device, backbone.dtype), cached


def invert(
    context: EditContext,
    frames: np.ndarray,
    inverting: AttentionControl | None,
    report: sampling.StepCallback | None = None,
) -> Trajectory:
    """The DDIM inversion of the frames under the inversion prompt, through the inversion's attention control."""
    parts, backbone = context.parts, context.backbone
    clean = sampling.encode_frames(backbone, frames, parts.engine.chunk)
    prompt = sampling.encode_text(backbone, parts.engine.inversion_prompt, "", guided=False)
    config = parts.edit
    return ddim_invert(
        backbone,
        clean,
        inverse_schedule(backbone, config.steps, config.strength),
        prompt,
        context.plan,
        sampling.LoopHooks(callback=report, attention_control=inverting),
    )


def hold_outside(
    context: EditContext, start: KeyedFrames, prepared: PreparedEdit | None, callback: sampling.StepCallback
) -> sampling.StepCallback:
    """The step callback with the region hold (editing.region) from step `first_held` on: outside the region
    the source's inversion trajectory (the attention edit's own, or the cached one), or without inversion
    the source noised with the edit's noise."""
    parts, backbone = context.parts, context.backbone
    if prepared is not None:
        states = trajectory_states(prepared.trajectory)
    elif parts.engine.inversion == "none":
        clean = sampling.encode_frames(backbone, start.frames, parts.engine.chunk)
        noise = sampling.shared_noise(tuple(clean.shape), parts.edit.seed, backbone.device, clean.dtype)
        states = noised_states(backbone.scheduler(), clean, noise, context.timesteps)
    else:
        inverting = attention_control(parts, start.frames, backbone, context.tuned)
        trajectory = load_trajectory(context.cache("inversions"), inversion_key(context, start.key, inverting))
        if trajectory is None:  # not kept by the cache (too small): invert again, deterministically the same
            trajectory = invert(context, start.frames, inverting)
        states = trajectory_states(trajectory)
    return hold_callback(parts.held, backbone.vae_scale_factor, states, callback, first_held(len(context.timesteps)))


def inversion_key(context: EditContext, source: SourceKey, inverting: AttentionControl | None) -> str:
    """The cache key of a DDIM inversion of `source`: everything that changes the inverted latents, and nothing else
    (not the edit prompt, guidance, seed or sampler: inversion is deterministic DDIM whatever samples after);
    the inversion control's `cache_key` names what else the entry holds (e.g. TokenFlow's store)."""
    parts, backbone, plan = context.parts, context.backbone, context.plan
    config, engine = parts.edit, parts.engine
    recorded = None if inverting is None else inverting.cache_key()
    return cache_key(
        kind="ddim",
        source=source,
        model=backbone.name,
        dtype=str(backbone.dtype),
        steps=config.steps,
        inverted_steps=len(context.timesteps),
        prompt=engine.inversion_prompt,
        attention=plan.mode,
        window=plan.window,
        chunk=engine.chunk,
        **({} if parts.tuned is None else {"tuned": content_hash(parts.tuned)}),
        **(
            {} if not engine.feature_bank else {"feature_bank": engine.feature_bank, "anchor": "shared"}
        ),  # later chunks borrow the first chunk's anchor (editing.attention.anchor)
        **({} if not engine.token_merge else {"token_merge": engine.token_merge}),
        **({} if plan.anchors == (0,) else {"anchors": plan.anchors}),
        **({} if recorded is None else {"recorded": recorded}),
    )


def prepare_controls(context: EditContext, frames: np.ndarray) -> tuple[sampling.ControlSignal, ...]:
    """Condition images (extracted from the frames, or a given condition video) and their ControlNets."""
    parts, backbone, progress, source = context.parts, context.backbone, context.progress, context.source
    engine = parts.engine
    if not engine.controls:
        return ()
    cache = context.cache("conditions")
    memo = current_memo()
    height, width = frames.shape[1:3]
    signals = []
    for number, spec in enumerate(engine.controls):
        progress("conditions", number, len(engine.controls))
        if spec.video:
            images = conditions.conditions_from_video(spec.video, len(frames), width, height, parts.selection)
        else:
            options = {"annotator_source": engine.annotators}
            key = conditions.condition_cache_key(spec.kind, source.content, parts.selection, (width, height), options)
            images = None if memo is None else memo.get(("conditions", key))  # a session's clip: kept in memory (editing.memo)
            if images is None:
                stored = cache.load(key)
                if stored is not None:
                    images = stored["images"].numpy()
                else:
                    images = conditions.extract_conditions(spec.kind, frames, **options)
                    cache.save(key, {"images": torch.from_numpy(images)})
                if memo is not None:
                    memo.put(("conditions", key), images)
        model = load_controlnet(spec.model or default_controlnet(spec.kind, backbone), backbone)
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        signals.append(sampling.ControlSignal(model, tensor, spec.scale, spec.start, spec.end))
    progress("conditions", len(signals), len(signals))
    return tuple(signals)


def step_callback(context: EditContext, frames: np.ndarray) -> sampling.StepCallback:
    """After each denoising step: report progress and, when enabled, fuse latents along the source's flow
    (early steps) and fuse the predicted frames in pixel space (late steps)."""
    engine, backbone, progress = context.parts.engine, context.backbone, context.progress
    scheduler, timesteps = context.scheduler, context.timesteps
    total_steps = len(timesteps)
    fusions = []
    # one frame (e.g. the only keyframe) has no neighbour to fuse with
    smooth_flow, smooth_pixel = (engine.smooth_flow, engine.smooth_pixel) if len(frames) > 1 else (False, False)
    if smooth_flow or smooth_pixel:
        flows = source_flows(frames)
    if smooth_flow:
        scale = backbone.vae_scale_factor
        height, width = frames.shape[1:3]
        fusions.append(make_flow_fusion_callback(flows.resized(height // scale, width // scale), FlowFusion(), total_steps))
    if smooth_pixel:
        fusions.append(
            make_pixel_fusion_callback(
                flows, PixelFusion(), step_alphas(scheduler, timesteps), *vae_codec(backbone, engine.chunk)
            )
        )

    def on_step(index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor | None:
        progress("denoise", index + 1, total_steps)
        changed = None
        for fuse in fusions:
            replacement = fuse(index, timestep, latents if changed is None else changed)
            changed = changed if replacement is None else replacement
        return changed

    return on_step
