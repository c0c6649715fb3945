"""The editing core: frames in, frames out.

`edit_frames` takes decoded RGB frames and the request's parts (what to make, how the engine edits,
attention editing, tuned weights) and returns the edited frames. Stages: load tuned weights and a
reference image's IP-Adapter (embedding the reference once, editing.reference); encode the
prompts; extract condition maps (cached by frame content); DDIM-invert the source (cached by content,
so a second prompt skips it) or noise it (SDEdit); denoise with the request's sampler, cross-frame
attention, chunk by chunk around shared anchor frames, with ControlNets and optional flow-guided
fusion; decode; match colours (optional). Reading and writing files is `editing.pipeline`'s job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import control as conditions  # its extractors load on first use (editing.control)
from . import sampling
from .attention.bank import FeatureBankControl
from .attention.modes import mode_control
from .cache import TensorCache, cache_key, content_hash, default_cache_dir
from .compat import check as check_combination
from .config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection, parse_keyframes
from .errors import ConfigError
from .flows import source_flows
from .frames import check_frames
from .held import hold_callback, noised_states, trajectory_states
from .inversion import ddim_invert, load_trajectory, save_trajectory
from .keyframes import Keyframes, choose_keyframes, clip_flows, propagate
from .memo import current_memo
from .models import Backbone, default_controlnet, load_controlnet, load_image_adapter
from .pinned import Pinning, guided_start, pinned_frames
from .prompt_edit import prepare_attention_edit
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

if TYPE_CHECKING:
    from .requests import EditRequest

log = logging.getLogger(__name__)

STAGES = (
    "decode",
    "load_model",
    "encode_text",
    "conditions",
    "invert",
    "denoise",
    "decode_latents",
    "propagate",
    "refine",
    "encode_video",
)

# progress(stage, done, total); raising Cancelled from it stops the edit.
ProgressFn = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


class StageTimer:
    """Wall-clock seconds per named stage (synchronising the GPU so its time is not misattributed)."""

    def __init__(self, device: torch.device | None = None):
        self.seconds = {name: 0.0 for name in STAGES}
        self.device = device

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin


@dataclass(frozen=True)
class SourceKey:
    """What identifies the frames being edited, for cache keys: their content and size."""

    content: str
    indices: tuple[int, ...]
    width: int
    height: int


def frames_key(frames: np.ndarray) -> SourceKey:
    """The cache identity of an (N, H, W, 3) uint8 frame array: SHA-256 of its bytes and shape."""
    frames = np.ascontiguousarray(frames)
    digest = hashlib.sha256(repr(frames.shape).encode() + frames.tobytes()).hexdigest()
    return SourceKey(digest, tuple(range(len(frames))), int(frames.shape[2]), int(frames.shape[1]))


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
class EditParts:
    """The parts of a request the core needs (the clip's file, output and model spec stay outside)."""

    edit: EditConfig
    engine: EngineConfig = EngineConfig()
    attention_edit: AttentionEditConfig | None = None
    tuned: str | None = None  # one-shot tuned weights (editing.tuning)
    selection: FrameSelection = FrameSelection()  # how the frames were selected (condition videos follow it)
    decode_frames: tuple[int, ...] | None = None  # decode only these frames (a preview's); None = all
    masking: object = None  # editing.masks.MaskConfig: a mask and what to do in it (region edit, removal); None = none
    held: object = None  # editing.region.HeldRegion: the region an edit may change, the rest held to the source

    @classmethod
    def of(cls, request: EditRequest) -> EditParts:
        masking = request.masking if request.masking.given else None
        return cls(
            request.edit, request.engine, request.attention_edit, request.tuned, request.selection, request.decode_frames, masking
        )


def edit_frames(
    frames: np.ndarray,
    parts: EditParts,
    backbone: Backbone,
    progress: ProgressFn = _no_progress,
    timer: StageTimer | None = None,
    start: np.ndarray | None = None,
) -> EditedFrames:
    """Edit (N, H, W, 3) uint8 RGB frames (sides multiples of 8) and return the edited frames.

    `start`, when given, is what is inverted (or noised) instead of the frames themselves; the frames
    still give the structure (condition maps, flow). Supplied keyframes make it themselves (editing.pinned).
    """
    frames = check_frames(frames)
    check_combination(parts)
    timer = timer or StageTimer(backbone.device)
    timer.device = backbone.device
    if parts.masking is not None:  # a mask: region edit or removal run above the core and come back here without it
        raise ConfigError("an edit with a mask (region or removal) runs through editing.region.masked_edit")
    if parts.engine.keyframes_every:
        return edit_by_keyframes(frames, parts, backbone, progress, timer)
    if parts.engine.keyframe_images:  # the frames follow the supplied images, with the guidance chosen for that
        parts = dataclasses.replace(parts, edit=dataclasses.replace(parts.edit, guidance=parts.engine.keyframe_guidance))
    config, engine = parts.edit, parts.engine
    with timer.stage("load_model"):
        tuned = None
        if parts.tuned is not None:
            tuned = load_tuned(parts.tuned, backbone)
        reference = prepare_reference(
            engine, backbone, load_image_adapter
        )  # read, its IP-Adapter loaded, embedded once (None without one)
    with timer.stage("encode_text"):
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
    source = frames_key(frames)
    cache_root = engine.cache_dir or default_cache_dir()
    with timer.stage("conditions"):
        controls = prepare_controls(parts, frames, backbone, source, cache_root, progress)
    pins, fitted = (), ()
    if engine.keyframe_images:
        pins, fitted = pinned_frames(engine, frames)
        warnings.extend(fitted)
        if start is None:
            start = guided_start(frames, pins)
    start = frames if start is None else check_frames(start)
    start_key = source if start is frames else frames_key(start)
    anchors = tuple(index for index, _ in pins) or (0,)
    context = edit_context(engine.context, backbone.unet)  # context windows (editing.windows), by default with a motion module
    plan = sampling.plan_frames(
        len(frames),
        engine.chunk,
        engine.attention,
        engine.window,
        anchors=anchors,
        merge=engine.token_merge,
        context=context,
        step_cache=parse_step_caches(engine.step_cache),
    )
    scheduler = backbone.scheduler(config.sampler)
    timesteps = sampling.sampling_timesteps(scheduler, config.steps, config.strength)
    prepared = None
    with timer.stage("invert"):
        control = attention_control(parts, frames, backbone, tuned) if parts.attention_edit is None else None
        if parts.attention_edit is None:
            latents, cached = start_latents(
                parts, start, backbone, plan, start_key, cache_root, timesteps, progress, tuned, control
            )
        else:
            prepared = prepare_attention_edit(
                parts, frames, backbone, plan, source, cache_root, timesteps, controls, progress, tuned
            )
            latents, cached = prepared.latents, False
    callback = step_callback(engine, frames, backbone, len(timesteps), progress, scheduler, timesteps)
    if parts.held is not None:  # outside the region, the source's latents at every step (editing.region)
        callback = hold_outside(
            parts, start, backbone, plan, start_key, cache_root, timesteps, tuned, prepared, scheduler, callback
        )
    if pins:
        pinning = Pinning.make(pins, backbone, parts, timesteps)
        latents, callback = pinning.start(latents), pinning.wrap(callback)
    with timer.stage("denoise"):
        progress("denoise", 0, len(timesteps))
        guidance = sampling.Guidance(text, config.guidance, controls, None if prepared is None else prepared.negatives, reference)
        control = control if prepared is None else prepared.control
        callback = callback if prepared is None else prepared.wrap(callback)
        latents = sampling.denoise(backbone, scheduler, latents, timesteps, guidance, plan, callback, control, seed=config.seed)
    with timer.stage("decode_latents"):
        progress("decode_latents", 0, 1)
        wanted = decoded_indices(parts.decode_frames, len(frames))
        edited = sampling.decode_latents(backbone, latents, engine.chunk, wanted)
        if engine.smooth_color:
            edited = match_colors(edited)
    wanted = wanted or tuple(range(len(frames)))
    for index, image in pins:
        if index in wanted:
            edited[wanted.index(index)] = image  # the supplied frame is the result, exactly
    summary = None if prepared is None else prepared.summary(parts.attention_edit)
    return EditedFrames(edited, cached, summary, timer.seconds, tuple(warnings))


def edit_by_keyframes(frames, parts: EditParts, backbone, progress, timer) -> EditedFrames:
    """Keyframes, then propagation (editing.keyframes): edit the keyframes jointly, then make the
    other frames from them along the source's flow."""
    keyframes = edit_keyframes(frames, parts, backbone, progress, timer)
    edited = propagate(frames, keyframes, parts, backbone, progress, timer)
    wanted = decoded_indices(parts.decode_frames, len(frames))
    if wanted is not None:
        edited = edited[list(wanted)]
    return EditedFrames(edited, keyframes.inversion_cached, None, timer.seconds, keyframes.warnings, keyframes.indices)


def edit_keyframes(
    frames: np.ndarray, parts, backbone, progress=None, timer=None, keys: tuple[int, ...] | None = None
) -> Keyframes:
    """Stage 1: choose the keyframes (unless given) and edit them jointly with the core."""
    every = parse_keyframes(parts.engine.keyframes)
    supplied = parts.engine.keyframe_images
    for image in supplied:
        if image.index >= len(frames):
            raise ConfigError(
                f"keyframe_image {image.index} names frame {image.index}, but the clip has frames 0 to {len(frames) - 1}"
            )
    flows = (
        clip_flows(frames) if keys is None or supplied else None
    )  # once, for the choice (cuts), the supplied frames' warps and propagation
    if keys is None:
        keys = choose_keyframes(len(frames), every or 8, flows)
        keys = tuple(sorted(set(keys) | {image.index for image in supplied}))  # a supplied frame is a keyframe
    if any(not 0 <= k < len(frames) for k in keys) or list(keys) != sorted(set(keys)) or not keys:
        raise ConfigError(f"keyframes must be distinct frames 0 to {len(frames) - 1} in order, got {list(keys)}")
    if any(image.index not in keys for image in supplied):
        raise ConfigError(f"every keyframe_image must be one of the keyframes {list(keys)}")
    report = _prefixed(progress, "keyframes")
    remapped = tuple(dataclasses.replace(image, index=keys.index(image.index), given_index=image.index) for image in supplied)
    engine = dataclasses.replace(parts.engine, keyframes=None, keyframe_images=remapped)
    sub = dataclasses.replace(
        parts, engine=engine, decode_frames=None, held=None if parts.held is None else parts.held.subset(keys)
    )
    start = None
    if supplied:  # the supplied frames warped onto the other keyframes through every frame between (editing.pinned)
        start = guided_start(frames, pinned_frames(parts.engine, frames)[0], flows)[list(keys)]
    edited = edit_frames(frames[list(keys)], sub, backbone, report, timer, start=start)
    return Keyframes(tuple(keys), edited.frames, edited.inversion_cached, edited.warnings, flows)


def _prefixed(progress, prefix: str):
    if progress is None:
        return lambda stage, done, total: None
    return lambda stage, done, total: progress(f"{prefix}: {stage}", done, total)


def attention_control(parts: EditParts, frames, backbone, tuned=None):
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
    parts: EditParts,
    frames,
    backbone,
    plan,
    source: SourceKey,
    cache_root,
    timesteps,
    progress,
    tuned=None,
    sampling_control=None,
) -> tuple[torch.Tensor, bool]:
    """The latents sampling starts from: the cached or new DDIM inversion (through the tuned model when
    given), or noised source latents. A `sampling_control` receives (`use_source`) what the inversion's
    control recorded (TokenFlow's source features), from the cache or from the new inversion."""
    config, engine = parts.edit, parts.engine
    if engine.inversion == "none":
        progress("invert", 0, 1)
        clean = sampling.encode_frames(backbone, frames, engine.chunk)
        noise = sampling.shared_noise(tuple(clean.shape), config.seed, backbone.device, clean.dtype)
        return sampling.noise_to_timestep(backbone.scheduler(), clean, noise, timesteps[0]), False
    inverting = attention_control(parts, frames, backbone, tuned)
    key = inversion_key(parts, backbone, plan, source, len(timesteps), None if inverting is None else inverting.cache_key())
    cache = TensorCache(cache_root, "inversions", engine.cache_bytes)
    trajectory = load_trajectory(cache, key)
    if trajectory is not None:
        log.info("inversion from cache %s", key)
        if sampling_control is not None:
            sampling_control.use_source(trajectory.features, len(trajectory.timesteps))
        return trajectory.final.to(backbone.device, backbone.dtype), True
    progress("invert", 0, len(timesteps))
    clean = sampling.encode_frames(backbone, frames, engine.chunk)
    prompt = sampling.encode_text(backbone, engine.inversion_prompt, "", guided=False)

    def report(index: int, timestep: int, latents: torch.Tensor) -> None:
        progress("invert", index + 1, len(timesteps))

    trajectory = ddim_invert(backbone, clean, config.steps, config.strength, prompt, plan, report, attention_control=inverting)
    save_trajectory(cache, key, trajectory)
    if sampling_control is not None:
        sampling_control.use_source(trajectory.features, len(trajectory.timesteps))
    return trajectory.final.to(backbone.device, backbone.dtype), False


def hold_outside(
    parts: EditParts, frames, backbone, plan, source: SourceKey, cache_root, timesteps, tuned, prepared, scheduler, callback
):
    """The step callback with the region hold (editing.region): outside the region the source's inversion
    trajectory (the attention edit's own, or the cached one), or without inversion the source noised with the edit's noise."""
    if prepared is not None:
        states = trajectory_states(prepared.trajectory)
    elif parts.engine.inversion == "none":
        clean = sampling.encode_frames(backbone, frames, parts.engine.chunk)
        noise = sampling.shared_noise(tuple(clean.shape), parts.edit.seed, backbone.device, clean.dtype)
        states = noised_states(backbone.scheduler(), clean, noise, timesteps)
    else:
        inverting = attention_control(parts, frames, backbone, tuned)
        key = inversion_key(parts, backbone, plan, source, len(timesteps), None if inverting is None else inverting.cache_key())
        trajectory = load_trajectory(TensorCache(cache_root, "inversions", parts.engine.cache_bytes), key)
        if trajectory is None:  # not kept by the cache (too small): invert again, deterministically the same
            clean = sampling.encode_frames(backbone, frames, parts.engine.chunk)
            prompt = sampling.encode_text(backbone, parts.engine.inversion_prompt, "", guided=False)
            trajectory = ddim_invert(
                backbone, clean, parts.edit.steps, parts.edit.strength, prompt, plan, attention_control=inverting
            )
        states = trajectory_states(trajectory)
    return hold_callback(parts.held, backbone.vae_scale_factor, states, callback)


def inversion_key(parts: EditParts, backbone, plan, source: SourceKey, inverted_steps: int, recorded: str | None = None) -> str:
    """The cache key of a DDIM inversion: everything that changes the inverted latents, and nothing else
    (not the edit prompt, guidance, seed or sampler: inversion is deterministic DDIM whatever samples after);
    `recorded` names what else the entry holds (the inversion control's record, e.g. TokenFlow's store)."""
    config, engine = parts.edit, parts.engine
    return cache_key(
        kind="ddim",
        source=source,
        model=backbone.name,
        dtype=str(backbone.dtype),
        steps=config.steps,
        inverted_steps=inverted_steps,
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


def prepare_controls(
    parts: EditParts, frames, backbone, source: SourceKey, cache_root, progress
) -> tuple[sampling.ControlSignal, ...]:
    """Condition images (extracted from the frames, or a given condition video) and their ControlNets."""
    engine = parts.engine
    if not engine.controls:
        return ()
    cache = TensorCache(cache_root, "conditions", engine.cache_bytes)
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


def step_callback(
    engine: EngineConfig, frames, backbone, total_steps: int, progress, scheduler=None, timesteps=None
) -> sampling.StepCallback:
    """After each denoising step: report progress and, when enabled, fuse latents along the source's flow
    (early steps) and fuse the predicted frames in pixel space (late steps; needs the scheduler and timesteps)."""
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
        if scheduler is None or timesteps is None:
            raise ConfigError("pixel fusion needs the scheduler and its timesteps")
        fusions.append(
            make_pixel_fusion_callback(
                flows, PixelFusion(), step_alphas(scheduler, timesteps), *vae_codec(backbone, engine.chunk)
            )
        )

    def on_step(index: int, timestep: int, latents: torch.Tensor):
        progress("denoise", index + 1, total_steps)
        changed = None
        for fuse in fusions:
            replacement = fuse(index, timestep, latents if changed is None else changed)
            changed = changed if replacement is None else replacement
        return changed

    return on_step
