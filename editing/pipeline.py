"""The library call behind the CLI and the app: read a clip, edit it, write the result.

Stages: decode the clip; load the model; encode the prompts; extract condition maps (cached); DDIM-invert
the source (cached by content, so a second prompt skips it) or noise it (SDEdit); denoise with
cross-frame attention, chunk by chunk around shared anchor frames, with ControlNets and optional
flow-guided fusion; decode; match colours (optional); write the video with the source's audio.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

import numpy as np

from . import sampling, video_io
from .config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection, VideoLimits
from .errors import ConfigError
from .inversion import TensorCache, cache_key, content_hash, ddim_invert, default_cache_dir, load_trajectory, save_trajectory
from .models import DEFAULT_MODEL, ModelSpec, default_controlnet, load_backbone, load_controlnet

log = logging.getLogger(__name__)

STAGES = ("decode", "load_model", "encode_text", "conditions", "invert", "denoise", "decode_latents", "encode_video")
OUTPUT_SUFFIXES = (".mp4", ".gif", ".zip")

# progress(stage, done, total); raising Cancelled from it stops the edit.
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EditRequest:
    """One edit: which clip, which frames, which model, what to make, where to write it."""

    video: str
    output: str
    edit: EditConfig
    selection: FrameSelection = FrameSelection()
    engine: EngineConfig = EngineConfig()
    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    limits: VideoLimits = VideoLimits()
    attention_edit: AttentionEditConfig | None = None
    tuned: str | None = None  # one-shot tuned weights (editing.tuning) to edit with
    also_write: tuple[str, ...] = ()  # more files written from the same frames, e.g. a .gif and a .zip beside the .mp4

    def __post_init__(self):
        for output in (self.output, *self.also_write):
            if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
                raise ConfigError(f"output {Path(output).name} must end in {', '.join(OUTPUT_SUFFIXES)}")
        if self.attention_edit is not None and self.engine.inversion != "ddim":
            raise ConfigError("attention editing (--source-prompt) needs --inversion ddim")
        if self.attention_edit is not None and self.attention_edit.null_text and not self.edit.uses_guidance:
            raise ConfigError(f"null-text inversion needs guidance above 1, got {self.edit.guidance}")
        if self.tuned is not None and self.engine.attention == "none":
            raise ConfigError("a tuned model needs cross-frame attention; use --attention sparse-causal, the mode it was tuned with")
        if self.tuned is not None and self.attention_edit is not None and self.attention_edit.null_text:
            raise ConfigError("null-text inversion cannot be combined with --tuned (it installs its own attention processors)")
        ModelSpec.parse(self.model)  # a malformed spec fails now, before any decoding


@dataclass
class EditResult:
    """What an edit produced and how long each stage took."""

    output: str
    frames: int
    fps: float
    width: int
    height: int
    model: str
    random_weights: bool
    inversion: str = "ddim"
    inversion_cached: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    attention_edit: dict | None = None
    tuned: str | None = None
    also_written: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "frames": self.frames,
            "fps": round(self.fps, 6),
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "random_weights": self.random_weights,
            "inversion": self.inversion,
            "inversion_cached": self.inversion_cached,
            "seconds": {name: round(value, 4) for name, value in self.seconds.items()},
        } | ({} if self.attention_edit is None else {"attention_edit": self.attention_edit}) | (
            {} if self.tuned is None else {"tuned": self.tuned}
        ) | ({"also_written": list(self.also_written)} if self.also_written else {})


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


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def edit_video(request: EditRequest, progress: ProgressFn = _no_progress) -> EditResult:
    """Edit a clip end to end and write the result atomically to `request.output`."""
    timer = StageTimer()
    config, engine = request.edit, request.engine
    with timer.stage("decode"):
        progress("decode", 0, 1)
        clip = video_io.read_clip(request.video, request.selection, request.limits)
    with timer.stage("load_model"):
        progress("load_model", 0, 1)
        if request.tuned is not None:
            from .tuning import check_base, load_tuned

            check_base(request.tuned, request.model)
        backbone = load_backbone(request.model, request.device, request.dtype)
        timer.device = backbone.device
        tuned = None if request.tuned is None else load_tuned(request.tuned, backbone)
    with timer.stage("encode_text"):
        text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
    source = SourceKey(content_hash(request.video), clip.indices, clip.width, clip.height)
    cache_root = engine.cache_dir or default_cache_dir()
    with timer.stage("conditions"):
        controls = prepare_controls(request, clip, backbone, source, cache_root, progress)
    plan = sampling.plan_frames(clip.num_frames, engine.chunk, engine.attention, engine.window)
    scheduler = backbone.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, config.steps, config.strength)
    prepared = None
    with timer.stage("invert"):
        if request.attention_edit is None:
            latents, cached = start_latents(request, clip, backbone, plan, source, cache_root, timesteps, progress, tuned)
        else:
            from .prompt_edit import prepare_attention_edit

            prepared = prepare_attention_edit(request, clip, backbone, plan, source, cache_root, timesteps, progress, tuned)
            latents, cached = prepared.latents, False
    callback = step_callback(request, clip, backbone, len(timesteps), progress)
    with timer.stage("denoise"):
        progress("denoise", 0, len(timesteps))
        guidance = sampling.Guidance(text, config.guidance, controls, None if prepared is None else prepared.negatives)
        control = tuned if prepared is None else prepared.control
        callback = callback if prepared is None else prepared.wrap(callback)
        latents = sampling.denoise(backbone, scheduler, latents, timesteps, guidance, plan, callback, control)
    with timer.stage("decode_latents"):
        progress("decode_latents", 0, 1)
        frames = sampling.decode_latents(backbone, latents, engine.chunk)
        if engine.smooth_color:
            from .temporal import match_colors

            frames = match_colors(frames)
    with timer.stage("encode_video"):
        progress("encode_video", 0, 1)
        audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
        video_io.write_videos((request.output, *request.also_write), frames, clip.fps, audio)  # all or none
    return EditResult(
        output=str(request.output),
        frames=clip.num_frames,
        fps=float(clip.fps),
        width=clip.width,
        height=clip.height,
        model=backbone.name,
        random_weights=backbone.random_weights,
        inversion=engine.inversion,
        inversion_cached=cached,
        seconds=timer.seconds,
        attention_edit=None if prepared is None else prepared.summary(request.attention_edit),
        tuned=request.tuned,
        also_written=tuple(request.also_write),
    )


@dataclass(frozen=True)
class SourceKey:
    """What identifies the frames being edited, for cache keys: file content, frames kept, size."""

    content: str
    indices: tuple[int, ...]
    width: int
    height: int


def start_latents(request, clip, backbone, plan, source: SourceKey, cache_root, timesteps, progress, tuned=None) -> tuple[torch.Tensor, bool]:
    """The latents sampling starts from: the cached or new DDIM inversion (through the tuned model when
    given), or noised source latents."""
    config, engine = request.edit, request.engine
    if engine.inversion == "none":
        progress("invert", 0, 1)
        clean = sampling.encode_frames(backbone, clip.frames, engine.chunk)
        noise = sampling.shared_noise(tuple(clean.shape), config.seed, backbone.device, clean.dtype)
        return sampling.noise_to_timestep(backbone.scheduler(), clean, noise, timesteps[0]), False
    key = cache_key(
        kind="ddim",
        source=source,
        model=backbone.name,
        dtype=str(backbone.dtype),
        steps=config.steps,
        inverted_steps=len(timesteps),
        prompt=engine.inversion_prompt,
        attention=plan.mode,
        window=plan.window,
        chunk=engine.chunk,
        **({} if tuned is None else {"tuned": content_hash(request.tuned)}),
    )
    cache = TensorCache(cache_root, "inversions", engine.cache_bytes)
    trajectory = load_trajectory(cache, key)
    if trajectory is not None:
        log.info("inversion from cache %s", key)
        return trajectory.final.to(backbone.device, backbone.dtype), True
    progress("invert", 0, len(timesteps))
    clean = sampling.encode_frames(backbone, clip.frames, engine.chunk)
    prompt = sampling.encode_text(backbone, engine.inversion_prompt, "", guided=False)

    def report(index: int, timestep: int, latents: torch.Tensor) -> None:
        progress("invert", index + 1, len(timesteps))

    trajectory = ddim_invert(backbone, clean, request.edit.steps, request.edit.strength, prompt, plan, report, control=tuned)
    save_trajectory(cache, key, trajectory)
    return trajectory.final.to(backbone.device, backbone.dtype), False


def prepare_controls(request, clip, backbone, source: SourceKey, cache_root, progress) -> tuple[sampling.ControlSignal, ...]:
    """Condition images (extracted from the clip, or a given condition video) and their ControlNets."""
    if not request.engine.controls:
        return ()
    from .control import condition_cache_key, conditions_from_video, extract_conditions

    cache = TensorCache(cache_root, "conditions", request.engine.cache_bytes)
    signals = []
    for number, spec in enumerate(request.engine.controls):
        progress("conditions", number, len(request.engine.controls))
        if spec.video:
            images = conditions_from_video(spec.video, clip.num_frames, clip.width, clip.height, request.selection)
        else:
            options = {"annotator_source": request.engine.annotators}
            key = condition_cache_key(spec.kind, source.content, request.selection, (clip.width, clip.height), options)
            stored = cache.load(key)
            if stored is not None:
                images = stored["images"].numpy()
            else:
                images = extract_conditions(spec.kind, clip.frames, **options)
                cache.save(key, {"images": torch.from_numpy(images)})
        model = load_controlnet(spec.model or default_controlnet(spec.kind, backbone), backbone)
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        signals.append(sampling.ControlSignal(model, tensor, spec.scale, spec.start, spec.end))
    progress("conditions", len(signals), len(signals))
    return tuple(signals)


def step_callback(request, clip, backbone, total_steps: int, progress) -> sampling.StepCallback:
    """After each denoising step: report progress and, when enabled, fuse latents along the source's flow."""
    fuse = None
    if request.engine.smooth_flow:
        from .temporal import FlowFusion, make_flow_fusion_callback, source_flows

        scale = backbone.vae_scale_factor
        flows = source_flows(clip.frames).resized(clip.height // scale, clip.width // scale)
        fuse = make_flow_fusion_callback(flows, FlowFusion(), total_steps)

    def on_step(index: int, timestep: int, latents: torch.Tensor):
        progress("denoise", index + 1, total_steps)
        return fuse(index, timestep, latents) if fuse is not None else None

    return on_step
