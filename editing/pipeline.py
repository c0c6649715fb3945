"""The library call behind the CLI and the app: read a clip, edit its frames, write the result.

`edit_video` decodes the selected frames, loads the model, hands the frames to the core
(`editing.staging.edit_clip`: frames in, frames out) and writes the video with the source's audio. The
result carries the edited frames, so callers need not read the written file back. A staged edit
(the app's "Edit keyframes", then "Propagate") is `edit_keyframes_of`, then `edit_video` with the
`propagating` editor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import video_io
from .compat import check as check_combination
from .context import STAGES, EditParts, ProgressFn, StageTimer, frames_key, no_progress
from .core import EditedFrames
from .errors import ConfigError, EditingError
from .files import check_writable
from .frames import check_frames
from .keyframes import Keyframes, propagate
from .models import load_backbone
from .region import masked_edit
from .requests import EditRequest
from .staging import edit_keyframes
from .tuning import check_base

if TYPE_CHECKING:
    from .models import Backbone

log = logging.getLogger(__name__)

__all__ = ["STAGES", "EditRequest", "EditResult", "FramesEditor", "ModelInfo", "ProgressFn", "edit_here", "edit_video"]


@dataclass(frozen=True)
class ModelInfo:
    """What a result says about the backbone that made it (the backbone itself may live in another process)."""

    name: str
    random_weights: bool
    notes: tuple[str, ...] = ()


# editor(frames, request, progress, timer) -> the edited frames and the model that made them: where the
# core runs (this process by default; editing.distributed sends it to a Ray worker)
FramesEditor = Callable[[np.ndarray, "EditRequest", ProgressFn, StageTimer], tuple[EditedFrames, ModelInfo]]


def edit_here(
    frames: np.ndarray, request: EditRequest, progress: ProgressFn, timer: StageTimer
) -> tuple[EditedFrames, ModelInfo]:
    """Load the request's model in this process and run the core on the frames."""
    backbone = request_backbone(request, progress, timer)
    edited = masked_edit(frames, EditParts.of(request), backbone, progress, timer)  # edit_frames when no mask
    return edited, model_info(backbone)


def request_backbone(request: EditRequest, progress: ProgressFn = no_progress, timer: StageTimer | None = None):
    """The request's model, loaded (or cached) in this process, with its tuned weights' base checked."""
    with timer.stage("load_model") if timer is not None else contextlib.nullcontext():
        progress("load_model", 0, 1)
        if request.tuned is not None:
            check_base(request.tuned, request.model)
        return load_backbone(request.model, request.device, request.dtype, options=request.model_options)


def model_info(backbone: Backbone) -> ModelInfo:
    return ModelInfo(backbone.name, backbone.random_weights, tuple(backbone.extras.get("notes", ())))


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
    warnings: tuple[str, ...] = ()  # what was left out (damaged audio, a file that could not be written), one sentence each
    notes: tuple[str, ...] = ()  # what the user should know about the output (e.g. a random LoRA's effect means nothing)
    keyframes: tuple[int, ...] | None = None  # with --keyframes: the frames edited; the others were propagated from them
    removal: dict | None = None  # with --remove: hole pixels filled from other frames and diffused (editing.removal)

    def to_dict(self) -> dict:
        return (
            {
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
            }
            | ({} if self.attention_edit is None else {"attention_edit": self.attention_edit})
            | ({} if self.tuned is None else {"tuned": self.tuned})
            | ({"also_written": list(self.also_written)} if self.also_written else {})
            | ({"warnings": list(self.warnings)} if self.warnings else {})
            | ({"notes": list(self.notes)} if self.notes else {})
            | ({} if self.keyframes is None else {"keyframes": list(self.keyframes)})
            | ({} if self.removal is None else {"removal": self.removal})
        )


def edit_video(request: EditRequest, progress: ProgressFn = no_progress, editor: FramesEditor = edit_here) -> EditResult:
    """Edit a clip end to end and write the result atomically to `request.output`; `editor` runs the core
    (here by default), so decoding and writing stay in this process wherever the frames are edited."""
    for path in (request.output, *request.also_write):  # before any work: an output that cannot be written
        check_writable(path)
    timer = StageTimer()
    with timer.stage("decode"):
        progress("decode", 0, 1)
        clip = video_io.read_clip(request.video, request.selection, request.limits)
    edited, model = editor(clip.frames, request, progress, timer)
    if edited.seconds is not timer.seconds:  # timed elsewhere (a worker): add its stages to ours
        for stage, seconds in edited.seconds.items():
            timer.seconds[stage] = timer.seconds.get(stage, 0.0) + seconds
    with timer.stage("encode_video"):
        progress("encode_video", 0, 1)
        audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
        written, notes = write_outputs([request.output, *request.also_write], edited.frames, clip.fps, audio)
    return EditResult(
        output=written[0],
        frames=len(edited.frames),
        fps=float(clip.fps),
        width=clip.width,
        height=clip.height,
        model=model.name,
        random_weights=model.random_weights,
        inversion=request.engine.inversion,
        inversion_cached=edited.inversion_cached,
        seconds=timer.seconds,
        attention_edit=edited.attention_edit,
        tuned=request.tuned,
        also_written=tuple(written[1:]),
        warnings=(*edited.warnings, *notes),
        images=edited.frames,
        notes=model.notes,
        keyframes=edited.keyframes,
        removal=edited.removal,
    )


def write_outputs(
    paths: list[str], frames: np.ndarray, fps: Fraction | float, audio: video_io.AudioSource
) -> tuple[list[str], list[str]]:
    """Write the edited frames to each path: (files written, notes for the user).

    Nothing after denoising may lose the edit: a file that cannot be written is left out with the reason in
    the notes, and when no file at all was written the frames go to `<output>-frames.zip` (PNG), or, when
    that folder takes no file either, to a new temporary folder whose path the note gives; only when that
    fails too is the edit lost, with the reasons."""
    written, notes, failures = [], [], []
    for path in paths:
        try:
            video_io.write_video(path, frames, fps, audio, notes)
            written.append(str(path))
        except Exception as exc:  # a full disk, an encoder failure: keep the frames whatever happened
            log.warning("could not write %s: %s", path, exc, exc_info=True)
            failures.append(f"{Path(path).name} could not be written ({_reason(exc)})")
    if failures and not written:
        fallback = Path(paths[0]).with_name(Path(paths[0]).stem + "-frames.zip")
        try:
            video_io.write_png_zip(fallback, frames)
            where = fallback.name
        except Exception as exc:
            log.warning("could not write %s: %s", fallback, exc)
            try:
                fallback = video_io.write_png_zip(Path(tempfile.mkdtemp(prefix="video-edit-")) / fallback.name, frames)
            except Exception as again:
                raise EditingError(f"{'; '.join(failures)}, nor could the frames be saved as PNGs ({_reason(again)})") from again
            where = str(fallback)
        written.append(str(fallback))
        failures[-1] += f"; the edited frames are saved as PNGs in {where}"
    for text in failures:
        log.warning(text)
    return written, failures + notes


def _reason(exc: Exception) -> str:
    """The failure in a few words, without the server's paths (an OSError's own text names the file)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split())[:160] or type(exc).__name__


@dataclass(frozen=True)
class StagedKeyframes:
    """Edited keyframes waiting for propagation (the app's 'Edit keyframes', then 'Propagate'), with the
    content key of the frames they were made from, so propagation refuses another clip or selection."""

    keyframes: Keyframes
    source: str


def staged_request(request: EditRequest) -> EditRequest:
    """The request with keyframes on (`auto` unless it names its own)."""
    if request.engine.keyframes_every:
        return request
    return dataclasses.replace(request, engine=dataclasses.replace(request.engine, keyframes="auto"))


def edit_keyframes_of(request: EditRequest, progress: ProgressFn = no_progress) -> StagedKeyframes:
    """Stage 1 of a staged edit: decode the clip and edit its keyframes only."""
    request = staged_request(request)
    if request.masking.given:
        raise ConfigError("a mask (--region or --remove) runs as one edit, not as keyframes then propagation: use Edit")
    progress("decode", 0, 1)
    clip = video_io.read_clip(request.video, request.selection, request.limits)
    backbone = request_backbone(request, progress)
    keyframes = edit_keyframes(clip.frames, EditParts.of(request), backbone, progress)
    return StagedKeyframes(keyframes, frames_key(clip.frames).content)


def keyframes_here(
    frames: np.ndarray, request: EditRequest, progress: ProgressFn, timer: StageTimer
) -> tuple[EditedFrames, ModelInfo]:
    """Stage 1 as an editor: the request's keyframes chosen and edited in this process, and only those
    (`EditedFrames.frames` holds them in the order of `EditedFrames.keyframes`). A batch's worker runs it
    before the propagation segments (editing.batch.propagation_tasks)."""
    parts = EditParts.of(staged_request(request))
    check_combination(parts)
    backbone = request_backbone(request, progress, timer)
    timer.device = backbone.device
    keyframes = edit_keyframes(check_frames(frames), parts, backbone, progress, timer)
    edited = EditedFrames(
        keyframes.frames, keyframes.inversion_cached, None, timer.seconds, keyframes.warnings, keyframes.indices
    )
    return edited, model_info(backbone)


def propagating(staged: StagedKeyframes) -> FramesEditor:
    """An editor (for `edit_video`) that fills in the frames around staged keyframes (stage 2)."""

    def editor(
        frames: np.ndarray, request: EditRequest, progress: ProgressFn, timer: StageTimer
    ) -> tuple[EditedFrames, ModelInfo]:
        if frames_key(frames).content != staged.source:
            raise ConfigError("the clip or its frame selection changed since the keyframes were edited: edit the keyframes again")
        backbone = request_backbone(request, progress, timer)
        made = propagate(frames, staged.keyframes, EditParts.of(staged_request(request)), backbone, progress, timer)
        edited = EditedFrames(
            made, staged.keyframes.inversion_cached, None, timer.seconds, staged.keyframes.warnings, staged.keyframes.indices
        )
        return edited, model_info(backbone)

    return editor
