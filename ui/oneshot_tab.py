"""The One-shot tab: tune the model on the clip (Tune-A-Video) with a progress bar, then edit with the tuned weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from editing.errors import EditingError
from editing.pipeline import ProgressFn

from . import hints, widgets
from .backend import Backend, CancelToken, cancellable, freeing_memory
from .clip_upload import ClipUpload
from .edit_tab import GPU_QUEUE, gradio_progress, make_handlers
from .forms import make_tune_request, one_sentence_errors, option_names, option_values
from .gpu import gpu


def tune_options(values: dict[str, Any]) -> dict[str, Any]:
    """The `tune` command's options among the tab's values (named as the schema names them; a blank prompt
    is refused by the tuning's own check)."""
    names = set(option_names("tune"))
    values = {name: value for name, value in values.items() if name in names}
    values["prompt"] = values.get("prompt") or ""
    return option_values(values)


def run_tuning(
    values: dict[str, Any], progress: ProgressFn, token: CancelToken | None = None, tune: Callable | None = None
) -> dict[str, Any]:
    """Tune on the clip (or reuse a tuning of the same clip and settings); the result describes the weights file."""
    from editing.tuning import tune_video

    request = make_tune_request(tune_options(values), values.get("video"))
    with freeing_memory():
        return (tune or tune_video)(request, cancellable(progress, token)).to_dict()


def check_tuned_for(tuned: str | None, video: str | None) -> None:
    """Refuse an edit whose tuned weights are missing or were tuned on another clip than the one shown."""
    from editing.cache import content_hash
    from editing.tuning import read_metadata

    if not tuned:
        raise EditingError("tune on the clip first (step 1)")
    if video and read_metadata(tuned).get("clip") != content_hash(video):
        raise EditingError("the tuned weights were made for another clip; tune on this clip first (step 1)")


def create_tab(backend: Backend, default_model: str) -> None:
    """Lay out the One-shot tab and wire its events. Every widget is named after the option it sets: /tune
    takes the `tune` command's options, /edit_tuned the `edit` command's (the tuning's clip, model, trim
    and seed, its prompt as the inversion prompt, and the edit's own prompt, steps, guidance and strength)."""
    tuned = gr.State(None)  # this user's tuned weights file
    token = gr.State(CancelToken())
    form: dict[str, gr.components.Component] = {}  # the tune command's options
    gr.Markdown(
        "Tune the model on this clip first (only small attention layers are trained), then edit it with the tuned "
        "model for changes of shape or motion. A tuning of the same clip and settings is reused."
    )
    gr.Markdown("### 1. Tune on the clip")
    with gr.Row():
        with gr.Column():
            upload = ClipUpload.create("oneshot-")
            form["video"] = upload.file
            form["prompt"] = gr.Textbox(label="What the clip shows", placeholder="a man skiing")
            form["model"] = widgets.model_widget(default_model)
        with gr.Column():
            with gr.Accordion("Frames", open=False):
                form |= widgets.frame_widgets(form["model"], "tune", policy=backend.policy)
            with gr.Row():
                form["steps"] = hints.slider("steps", "tune", label="Tuning steps")
                form["learning_rate"] = hints.number("learning_rate", "tune", label="Learning rate")
                form["seed"] = hints.number("seed", "tune", label="Seed", minimum=0)
            with gr.Row():
                form["gradient_checkpointing"] = gr.Checkbox(
                    hints.app_default(hints.option("gradient_checkpointing", "tune")),
                    label="Gradient checkpointing (less memory, slower)",
                )
                form["mixed_precision"] = hints.dropdown("mixed_precision", "tune", label="Mixed precision (GPU only)")
            tune_button = gr.Button(
                "1. Tune on the clip", variant="primary", interactive=False, elem_id="oneshot-tune"
            )  # once a readable clip is there
            tune_info = gr.JSON(label="Tuned weights")
    gr.Markdown("### 2. Edit with the tuned model")
    edit_names = {"video", *option_names("edit")}
    # the tuning's clip and the widgets that are edit options too; the edit's own prompt and steps replace the tuning's
    edit_form = {name: widget for name, widget in form.items() if name in edit_names}
    with gr.Row():
        with gr.Column():
            edit_form["prompt"] = gr.Textbox(label="Edit prompt", placeholder="a bear skiing")
            with gr.Row():
                edit_form["steps"] = hints.slider("steps", label="Steps")
                edit_form["guidance"] = hints.slider("guidance", label="Guidance")
                # a tuned edit re-runs the whole schedule, as `edit --tuned` does: the command line's strength
                edit_form["strength"] = hints.slider(
                    "strength", value=hints.schema_default(hints.option("strength")), label="Strength"
                )
            edit_form["inversion_prompt"] = form["prompt"]  # what the clip shows describes the source to invert
            with gr.Row():
                edit_button = gr.Button(
                    "2. Edit with the tuned model", variant="primary", interactive=False, elem_id="oneshot-edit"
                )
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
        weights = values.pop("tuned", None)
        check_tuned_for(weights, values.get("video"))
        if values.get("token") is not None:
            values["token"].reset()
        values["inversion_prompt"] = values.get("inversion_prompt") or ""
        video, _, _, summary, *_ = edit(values, progress, tuned=weights)
        return video, summary

    def event(button, handler, named: dict[str, gr.components.Component], outputs, api_name: str):
        names = [*named, "token", "tuned"]
        defaults = widgets.initial_values(named)
        fn = widgets.named_handler(gpu(handler), names, defaults)
        return button.click(
            fn,
            [*named.values(), token, tuned],
            outputs,
            api_name=api_name,
            concurrency_id=GPU_QUEUE,
            concurrency_limit=backend.concurrency,
        )

    events = [
        event(tune_button, tune, form, [tune_info, tuned], "tune"),
        event(edit_button, edit_tuned, edit_form, [output, details], "edit_tuned"),
    ]
    stop.click(CancelToken.cancel, token, None, cancels=events, queue=False, api_visibility="private")
