"""The library call behind the CLI and the app: read a clip, edit its frames, write the result.

`edit_video` decodes the selected frames, loads the model, hands the frames to the core
(`editing.core.edit_frames`: frames in, frames out) and writes the video with the source's audio. The
result carries the edited frames, so callers need not read the written file back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from . import video_io
from .core import STAGES, EditParts, ProgressFn, StageTimer, _no_progress, edit_frames
from .models import load_backbone
from .requests import EditRequest  # noqa: F401 (EditRequest lives in editing.requests; old imports work)

log = logging.getLogger(__name__)

__all__ = ["STAGES", "EditRequest", "EditResult", "ProgressFn", "edit_video"]


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
        backbone = load_backbone(request.model, request.device, request.dtype)
    edited = edit_frames(clip.frames, EditParts.of(request), backbone, progress, timer)
    with timer.stage("encode_video"):
        progress("encode_video", 0, 1)
        audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
        for path in (request.output, *request.also_write):
            video_io.write_video(path, edited.frames, clip.fps, audio)
    return EditResult(
        output=str(request.output),
        frames=clip.num_frames,
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
    )
