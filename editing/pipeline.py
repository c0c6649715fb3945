"""The library call behind the CLI and the app: read a clip, edit its frames, write the result.

`edit_video` decodes the selected frames, loads the model, hands the frames to the core
(`editing.core.edit_frames`: frames in, frames out) and writes the video with the source's audio. The
result carries the edited frames, so callers need not read the written file back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import video_io
from .config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection, VideoLimits
from .core import STAGES, EditParts, ProgressFn, StageTimer, _no_progress, edit_frames
from .errors import ConfigError
from .lora import ModelOptions
from .models import DEFAULT_MODEL, ModelSpec, load_backbone
from .samplers import follows_inversion

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".gif", ".zip")
__all__ = ["STAGES", "EditRequest", "EditResult", "ProgressFn", "edit_video"]


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
    model_options: ModelOptions = ModelOptions()  # LoRAs (fused or not) and the autoencoder (editing.lora)
    decode_frames: tuple[int, ...] | None = None  # decode (and write) only these edited frames, e.g. a preview's; None = all

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
        if self.attention_edit is not None and self.attention_edit.null_text and self.edit.sampler != "ddim":
            raise ConfigError(f"null-text inversion fits DDIM steps; use sampler ddim, not {self.edit.sampler}")
        if self.tuned is not None and self.attention_edit is not None and self.attention_edit.null_text:
            raise ConfigError("null-text inversion cannot be combined with --tuned (it installs its own attention processors)")
        if self.engine.inversion == "ddim" and not follows_inversion(self.edit.sampler):
            raise ConfigError(f"sampler {self.edit.sampler} steps on its own timesteps, not DDIM inversion's; use --inversion none (SDEdit)")
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
    images: np.ndarray | None = field(default=None, repr=False)  # the edited (N, H, W, 3) uint8 frames, as written
    notes: tuple[str, ...] = ()  # what the user should know about the output (e.g. a random LoRA's effect means nothing)

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
        ) | ({"also_written": list(self.also_written)} if self.also_written else {}) | ({"notes": list(self.notes)} if self.notes else {})


def edit_video(request: EditRequest, progress: ProgressFn = _no_progress) -> EditResult:
    """Edit a clip end to end and write the result atomically to `request.output`."""
    timer = StageTimer()
    with timer.stage("decode"):
        progress("decode", 0, 1)
        clip = video_io.read_clip(request.video, request.selection, request.limits)
    with timer.stage("load_model"):
        progress("load_model", 0, 1)
        if request.tuned is not None:
            from .tuning import check_base

            check_base(request.tuned, request.model)
        backbone = load_backbone(request.model, request.device, request.dtype, options=request.model_options)
    edited = edit_frames(clip.frames, EditParts.of(request), backbone, progress, timer)
    with timer.stage("encode_video"):
        progress("encode_video", 0, 1)
        audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
        for path in (request.output, *request.also_write):
            video_io.write_video(path, edited.frames, clip.fps, audio)
    return EditResult(
        output=str(request.output),
        frames=len(edited.frames),
        fps=float(clip.fps),
        width=clip.width,
        height=clip.height,
        model=backbone.name,
        random_weights=backbone.random_weights,
        inversion=request.engine.inversion,
        inversion_cached=edited.inversion_cached,
        seconds=timer.seconds,
        attention_edit=edited.attention_edit,
        tuned=request.tuned,
        also_written=tuple(request.also_write),
        images=edited.frames,
        notes=tuple(backbone.extras.get("notes", ())),
    )
