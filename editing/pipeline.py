"""The library call behind the CLI and the app: read a clip, edit it, write the result.

This is the plain per-frame edit (SDEdit: noise the source latents to `strength`, then denoise them
under the prompt with DDIM), the baseline the video engine replaces. Every frame starts from the same
seeded noise, which already keeps frames closer to each other than independent noise would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import sampling, video_io
from .config import EditConfig, FrameSelection, VideoLimits
from .errors import ConfigError
from .models import DEFAULT_MODEL, ModelSpec, load_backbone

log = logging.getLogger(__name__)

STAGES = ("decode", "load_model", "encode_text", "invert", "denoise", "decode_latents", "encode_video")
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
    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    limits: VideoLimits = VideoLimits()

    def __post_init__(self):
        if Path(self.output).suffix.lower() not in OUTPUT_SUFFIXES:
            raise ConfigError(f"output {Path(self.output).name} must end in {', '.join(OUTPUT_SUFFIXES)}")
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
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "frames": self.frames,
            "fps": round(self.fps, 6),
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "random_weights": self.random_weights,
            "seconds": {name: round(value, 4) for name, value in self.seconds.items()},
        }


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
    config = request.edit
    with timer.stage("decode"):
        progress("decode", 0, 1)
        clip = video_io.read_clip(request.video, request.selection, request.limits)
    with timer.stage("load_model"):
        progress("load_model", 0, 1)
        backbone = load_backbone(request.model, request.device, request.dtype)
        timer.device = backbone.device
    with timer.stage("encode_text"):
        text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
    scheduler = backbone.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, config.steps, config.strength)
    with timer.stage("invert"):
        progress("invert", 0, 1)
        source = sampling.encode_frames(backbone, clip.frames, config.batch_size)
        noise = sampling.shared_noise(tuple(source.shape), config.seed, backbone.device, source.dtype)
        latents = sampling.noise_to_timestep(scheduler, source, noise, timesteps[0])

    def on_step(index: int, timestep: int, current: torch.Tensor) -> None:
        progress("denoise", index + 1, len(timesteps))

    with timer.stage("denoise"):
        progress("denoise", 0, len(timesteps))
        latents = sampling.denoise(backbone, scheduler, latents, timesteps, text, config.guidance, config.batch_size, on_step)
    with timer.stage("decode_latents"):
        progress("decode_latents", 0, 1)
        frames = sampling.decode_latents(backbone, latents, config.batch_size)
    with timer.stage("encode_video"):
        progress("encode_video", 0, 1)
        audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
        video_io.write_video(request.output, frames, clip.fps, audio)
    return EditResult(
        output=str(request.output),
        frames=clip.num_frames,
        fps=float(clip.fps),
        width=clip.width,
        height=clip.height,
        model=backbone.name,
        random_weights=backbone.random_weights,
        seconds=timer.seconds,
    )

