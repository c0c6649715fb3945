"""Turn widget values into one validated request, run it, and report failures as gr.Error."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import gradio as gr

from editing.config import EditConfig, FrameSelection
from editing.errors import EditingError
from editing.models import BUILTIN_MODELS, RANDOM_WEIGHTS_NOTE
from editing.pipeline import EditRequest, EditResult, ProgressFn, edit_video

EditFn = Callable[[EditRequest, ProgressFn], EditResult]
OUTPUT_MAX_AGE = 3600  # seconds an edited clip stays on disk after Gradio has copied it to its own cache


def fresh_output_dir(root: Path | None = None) -> str:
    """A new folder for one run's output; folders of runs older than an hour are removed."""
    root = root or Path(tempfile.gettempdir()) / "video-edit-outputs"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > OUTPUT_MAX_AGE:
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix="run-", dir=root)


def make_request(
    video: str | None,
    prompt: str,
    model: str,
    start: float,
    end: float | None,
    stride: int,
    frames: int,
    size: int,
    steps: int,
    guidance: float,
    strength: float,
    seed: int,
    output_dir: str,
) -> EditRequest:
    """One validated EditRequest from the form's values (raises EditingError on bad values)."""
    if not video:
        raise EditingError("upload a video or pick an example first")
    return EditRequest(
        video=video,
        output=str(Path(output_dir) / f"{Path(video).stem}-edited.mp4"),
        edit=EditConfig(prompt=prompt or "", steps=int(steps), guidance=float(guidance), strength=float(strength), seed=int(seed)),
        selection=FrameSelection(
            start=float(start or 0),
            end=float(end) if end else None,
            stride=int(stride),
            max_frames=int(frames) or None,
            size=int(size),
        ),
        model=(model or "").strip() or "tiny",
    )


def gradio_progress(progress: gr.Progress) -> ProgressFn:
    """Report library stages on Gradio's progress bar."""

    def report(stage: str, done: int, total: int) -> None:
        progress((done, total), desc=stage.replace("_", " "))

    return report


def make_edit_handler(edit_fn: EditFn = edit_video):
    """The Run button's handler: returns the edited video's path and a summary."""

    def run(video, prompt, model, start, end, stride, frames, size, steps, guidance, strength, seed, progress=gr.Progress()):
        try:
            request = make_request(
                video, prompt, model, start, end, stride, frames, size, steps, guidance, strength, seed, fresh_output_dir()
            )
            result = edit_fn(request, gradio_progress(progress))
        except EditingError as exc:
            raise gr.Error(str(exc)) from exc
        summary = result.to_dict()
        if result.random_weights:
            summary["note"] = RANDOM_WEIGHTS_NOTE
        return result.output, summary

    return run


def model_choices() -> list[str]:
    from editing.models import DEFAULT_MODEL

    return [DEFAULT_MODEL, *BUILTIN_MODELS]
