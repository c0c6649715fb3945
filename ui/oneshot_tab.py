"""The One-shot tab: tune the model on the clip (Tune-A-Video) with a progress bar, then edit with the tuned weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gradio as gr

from editing.errors import EditingError
from editing.pipeline import ProgressFn
from editing.requests import MIXED_PRECISION

from . import widgets
from .clip_upload import ClipUpload
from .backend import Backend, CancelToken, cancellable, freeing_memory
from .edit_tab import GPU_QUEUE, gradio_progress, make_handlers
from .forms import default_values, make_tune_request, one_sentence_errors, option_values
from .gpu import gpu

TUNE_FIELDS = ["video", "source_prompt", "model", "start", "end", "stride", "frames", "size", "tune_steps", "learning_rate", "seed"]
EDIT_FIELDS = ["prompt", "steps", "guidance", "strength"]
MEMORY_FIELDS = ["gradient_checkpointing", "mixed_precision"]  # tuning options, last so positional API calls keep working


def tune_options(values: dict[str, Any]) -> dict[str, Any]:
    """The `tune` command's options from the tab's widgets (the edit's prompt and steps are separate)."""
    values = dict(values)
    values["prompt"] = values.pop("source_prompt", None) or ""
    values["steps"] = values.pop("tune_steps", None)
    return option_values(values)


def run_tuning(values: dict[str, Any], progress: ProgressFn, token: CancelToken | None = None, tune: Callable | None = None) -> dict[str, Any]:
    """Tune on the clip (or reuse a tuning of the same clip and settings); the result describes the weights file."""
    from editing.tuning import tune_video

    fields = [k for k in (*TUNE_FIELDS, *MEMORY_FIELDS) if k != "video"]
    request = make_tune_request(tune_options({k: values.get(k) for k in fields}), values.get("video"))
    with freeing_memory():
        return (tune or tune_video)(request, cancellable(progress, token)).to_dict()


def edit_values(values: dict[str, Any]) -> dict[str, Any]:
    """Edit-tab values for an edit with the tuned model: the tuning's clip and trim, the tab's prompt and sampler.

    No attention mode: as with `edit --tuned`, the edit takes the one the weights were tuned with."""
    edit = {k: values.get(k) for k in ("video", "model", "start", "end", "stride", "frames", "size", "seed", *EDIT_FIELDS)}
    return edit | {"inversion_prompt": values.get("source_prompt") or "", "token": values.get("token")}


def check_tuned_for(tuned: str | None, video: str | None) -> None:
    """Refuse an edit whose tuned weights are missing or were tuned on another clip than the one shown."""
    from editing.cache import content_hash
    from editing.tuning import read_metadata

    if not tuned:
        raise EditingError("tune on the clip first (step 1)")
    if video and read_metadata(tuned).get("clip") != content_hash(video):
        raise EditingError("the tuned weights were made for another clip; tune on this clip first (step 1)")


def create_tab(backend: Backend, default_model: str) -> None:
    """Lay out the One-shot tab and wire its events."""
    tuned = gr.State(None)  # this user's tuned weights file
    token = gr.State(CancelToken())
    form: dict[str, gr.components.Component] = {}
    tune_defaults = default_values("tune")
    gr.Markdown(
        "Tune the model on this clip first (only small attention layers are trained), then edit it with the tuned "
        "model for changes of shape or motion. A tuning of the same clip and settings is reused."
    )
    gr.Markdown("### 1. Tune on the clip")
    with gr.Row():
        with gr.Column():
            upload = ClipUpload.create("oneshot-")
            form["video"] = upload.file
            form["source_prompt"] = gr.Textbox(label="What the clip shows", placeholder="a man skiing")
            form["model"] = widgets.model_widget(default_model)
        with gr.Column():
            with gr.Accordion("Frames", open=False):
                form |= widgets.frame_widgets(form["model"], frames=tune_defaults["frames"], policy=backend.policy)
            with gr.Row():
                form["tune_steps"] = gr.Slider(1, 1000, value=tune_defaults["steps"], step=1, label="Tuning steps")
                form["learning_rate"] = gr.Number(tune_defaults["learning_rate"], label="Learning rate")
                form["seed"] = gr.Number(tune_defaults["seed"], label="Seed", precision=0, minimum=0)
            with gr.Row():
                form["gradient_checkpointing"] = gr.Checkbox(tune_defaults["gradient_checkpointing"], label="Gradient checkpointing (less memory, slower)")
                form["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISION), value=tune_defaults["mixed_precision"], label="Mixed precision (GPU only)")
            tune_button = gr.Button("1. Tune on the clip", variant="primary", interactive=False, elem_id="oneshot-tune")  # once a readable clip is there
            tune_info = gr.JSON(label="Tuned weights")
    gr.Markdown("### 2. Edit with the tuned model")
    with gr.Row():
        with gr.Column():
            form["prompt"] = gr.Textbox(label="Edit prompt", placeholder="a bear skiing")
            with gr.Row():
                form["steps"] = gr.Slider(1, 50, value=10, step=1, label="Steps")
                form["guidance"] = gr.Slider(1, 15, value=7.5, step=0.5, label="Guidance")
                form["strength"] = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
            with gr.Row():
                edit_button = gr.Button("2. Edit with the tuned model", variant="primary", interactive=False, elem_id="oneshot-edit")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            output = gr.Video(label="Edited clip", autoplay=True)
            details = gr.JSON(label="Details")

    upload.wire(form, needs_plan=[tune_button, edit_button])
    edit = make_handlers(backend)["edit"]

    @one_sentence_errors
    def tune(values: dict[str, Any], progress) -> tuple[dict, str]:
        tok = values.get("token") or CancelToken()
        tok.reset()
        result = run_tuning(backend.checked(values), gradio_progress(progress), tok, tune=backend.tune)
        path = result.pop("path")
        return result | {"weights": Path(path).name}, path  # no "path" key: clients would take the JSON for a file

    @one_sentence_errors
    def edit_tuned(values: dict[str, Any], progress) -> tuple:
        check_tuned_for(values.get("tuned"), values.get("video"))
        if values.get("token") is not None:
            values["token"].reset()
        video, _, _, summary, *_ = edit(edit_values(values), progress, tuned=values["tuned"])
        return video, summary

    names = [*TUNE_FIELDS, *EDIT_FIELDS, *MEMORY_FIELDS, "token", "tuned"]
    inputs = [*(form[n] for n in (*TUNE_FIELDS, *EDIT_FIELDS, *MEMORY_FIELDS)), token, tuned]
    defaults = widgets.initial_values(form)
    events = [
        tune_button.click(
            widgets.named_handler(gpu(tune), names, defaults), inputs, [tune_info, tuned], api_name="tune", concurrency_id=GPU_QUEUE, concurrency_limit=backend.concurrency
        ),
        edit_button.click(
            widgets.named_handler(gpu(edit_tuned), names, defaults), inputs, [output, details], api_name="edit_tuned", concurrency_id=GPU_QUEUE, concurrency_limit=backend.concurrency
        ),
    ]
    stop.click(CancelToken.cancel, token, None, cancels=events, queue=False, api_visibility="private")
