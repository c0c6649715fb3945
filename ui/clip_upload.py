"""The clip upload every tab shares: a file box, the clip as the browser plays it (the upload itself or its
H.264 preview), and one line under it: the frame plan the trim widgets give, or what is wrong with the file.

The upload is a gr.File, not gr.Video's own upload: that one has the browser try the file first and toasts
"Video not playable" for anything it cannot play (a Cinepak AVI, a file that is no video). The buttons that
need a readable clip stay disabled until one is there; those that also need a plan stay disabled while the
trim widgets give none, e.g. while a number is still being typed ("1" on the way to "16" is below the
Frames slider's minimum), which the line says calmly instead of Gradio's red Error badge."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import gradio as gr

from editing.errors import EditingError
from editing.video_io import plan_frames, probe

from .forms import make_request, option_values
from .preview import browser_playable, preview_for

PICK = "Pick a clip to see how many frames it gives."
TRIMS = ("start", "end", "stride", "frames", "size")  # the widgets the plan follows, in plan_text's order


def plan_of(video: str | None, start, end, stride, frames, size) -> tuple[str, bool]:
    """The frame count and output size the trim settings give, or why they give nothing; and whether they give frames."""
    if not video:
        return PICK, False
    trim = {"start": start, "end": end, "stride": stride, "frames": frames, "size": size, "prompt": "plan", "model": "tiny"}
    try:
        selection = make_request(option_values(trim), video, "plan").selection
        info = probe(video)
        return (
            f"**{plan_frames(info, selection).summary()}** from {info.frame_count} source frames ({info.width}x{info.height})",
            True,
        )
    except EditingError as exc:
        return f"Cannot edit with these settings: {exc}", False


def plan_text(video: str | None, start, end, stride, frames, size) -> str:
    """The plan line for these trim settings."""
    return plan_of(video, start, end, stride, frames, size)[0]


def check_clip(video: str | None, preview_folder: str | None = None) -> tuple[Any, str | None, str | None]:
    """A new upload: (what the browser plays, the clip or its H.264 preview in `preview_folder`, else None;
    the line to show when the file gives no plan, else None; the readable clip's path, else None)."""
    if not video:
        return None, PICK, None
    try:
        probe(video)
    except EditingError as exc:
        return None, f"**{exc}.** Upload another clip (mp4, webm, mov or avi).", None
    if browser_playable(video):
        return video, None, video
    from .backend import fresh_output_dir

    try:
        return preview_for(video, preview_folder or fresh_output_dir()), None, video  # a run folder only for a preview
    except (EditingError, av.error.FFmpegError) as exc:
        reason = (
            str(exc) if isinstance(exc, EditingError) else f"its video stream is damaged ({exc.strerror or type(exc).__name__})"
        )
        return (
            None,
            f"**{Path(video).name} cannot be shown or edited: {reason}.** Upload another clip (mp4, webm, mov or avi).",
            None,
        )


def unfinished(widgets: dict[str, gr.components.Component], values: dict[str, Any]) -> str | None:
    """A one-line hint for the first trim value that is still being typed (a slider's box empty or not a
    number, a value outside its widget's range), else None."""
    for name, value in values.items():
        widget = widgets[name]
        low, high = getattr(widget, "minimum", None), getattr(widget, "maximum", None)
        if value is None and not isinstance(widget, gr.Slider):
            continue  # a blank number box keeps the option's default
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or (low is not None and value < low) or (high is not None and value > high):
            span = (
                f" from {low:g} to {high:g}"
                if low is not None and high is not None
                else f" of {low:g} or more"
                if low is not None
                else ""
            )
            return f"{widget.label}: type a number{span} to see the plan."
    return None


def follow_plan(widgets: dict[str, gr.components.Component], clip: str | None, values: dict[str, Any]) -> tuple[str | None, bool]:
    """The plan line for raw trim values (as the browser sent them, unchecked) and whether they give frames;
    None for the line when there is no readable clip (the line says why already)."""
    if clip is None:
        return None, False
    hint = unfinished(widgets, values)
    if hint is not None:
        return hint, False
    checked = {name: widgets[name].preprocess(value) for name, value in values.items()}  # what an event gets
    return plan_of(clip, *(checked[name] for name in TRIMS))


@dataclasses.dataclass
class ClipUpload:
    """The upload's widgets: the file box (the handlers' and the API's `video`), the clip shown, the line
    under it, and the readable clip's path (None until one is there)."""

    file: gr.File
    shown: gr.Video
    plan: gr.Markdown
    clip: gr.State

    @classmethod
    def create(cls, prefix: str = "") -> ClipUpload:
        """Lay out the upload in the current block; element ids are `prefix` + source-file, source-video, frame-plan."""
        file = gr.File(label="Upload a clip", file_types=["video"], elem_id=f"{prefix}source-file", height=130)
        shown = gr.Video(
            label="Source clip", interactive=False, elem_id=f"{prefix}source-video", height=260, visible=False
        )  # once a readable clip is there
        plan = gr.Markdown(PICK, elem_id=f"{prefix}frame-plan")
        return cls(file, shown, plan, gr.State(None))

    def wire(
        self,
        trims: dict[str, gr.components.Component],
        needs_plan: Sequence[gr.components.Component] = (),
        needs_clip: Sequence[gr.components.Component] = (),
    ) -> None:
        """Check each new upload, keep the line following `trims` (the five TRIMS widgets), and enable
        `needs_plan` only while there is a readable clip and a plan, `needs_clip` while there is a readable clip."""
        widgets = {name: trims[name] for name in TRIMS}

        def arrived(video):
            shown, line, clip = check_clip(video)
            readable = gr.update(interactive=clip is not None)
            return (
                gr.update(value=shown, visible=shown is not None),
                gr.skip() if line is None else line,
                clip,
                *(readable for _ in needs_clip),
            )

        def follow(clip, *values):
            line, ok = follow_plan(widgets, clip, dict(zip(TRIMS, values)))
            shown = gr.skip() if line is None else line
            return (
                (shown, *(gr.update(interactive=ok) for _ in needs_plan)) if needs_plan else shown
            )  # one output: its value alone

        followers = [self.plan, *needs_plan]
        checked = self.file.change(arrived, self.file, [self.shown, self.plan, self.clip, *needs_clip], api_visibility="private")
        # preprocess=False: the numbers as typed reach `follow`, which hints at an unfinished one, where
        # Gradio's own check (Slider.preprocess) would fail the event and badge the line "Error"
        checked.then(
            follow,
            [self.clip, *widgets.values()],
            followers,
            queue=False,
            preprocess=False,
            show_progress="hidden",
            api_visibility="private",
        )
        gr.on(
            [w.change for w in widgets.values()],
            follow,
            [self.clip, *widgets.values()],
            followers,
            queue=False,
            preprocess=False,
            show_progress="hidden",
            api_visibility="private",
        )
