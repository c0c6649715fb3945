"""The Edit tab: pick and trim a clip, set the edit, preview the first frame, edit the clip, download."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from editing.errors import EditingError
from editing.metrics import mean_warp_error
from editing.models import RANDOM_WEIGHTS_NOTE
from editing.video_io import plan_frames, probe

from . import widgets
from .backend import Backend, CancelToken
from .forms import OUTPUT_FORMATS, form_options, make_request, one_sentence_errors, option_names, option_values
from .gpu import gpu

GPU_QUEUE = "gpu"  # every event that runs a model shares this concurrency id, one at a time
# The /edit API's parameters, in order: the first twelve are the original API's, so old clients keep working.
API_FIELDS = [
    "video", "prompt", "model", "start", "end", "stride", "frames", "size", "steps", "guidance", "strength", "seed",
    "negative_prompt", "attention", "inversion", "source_prompt", "prompt_edit", "blend_words",
    "control_kinds", "control_scale", "smooth", "reference_scale",
]  # fmt: skip
# Edit options the app keeps off its /edit API (set through other widgets, or left at their defaults).
# Every other option, e.g. a field added to a config, is an /edit parameter after API_FIELDS.
OFF_API = (
    "control", "control_model", "window", "chunk", "inversion_prompt", "annotators", "device", "dtype",
    "cross_replace", "self_replace", "blend_threshold", "reweight", "null_text", "null_text_iterations",
)  # fmt: skip


def api_fields() -> list[str]:
    """The /edit API's parameters: API_FIELDS, then every other option of the request schema not in OFF_API."""
    return API_FIELDS + [name for name in option_names() if name not in API_FIELDS and name not in OFF_API]


# What each pipeline stage is called on the progress bar.
STAGE_LABELS = {
    "decode": "decoding",
    "load_model": "loading the model",
    "conditions": "condition maps",
    "invert": "inversion",
    "null_text": "null-text inversion",
    "denoise": "editing",
    "encode": "encoding frames",
    "tune": "tuning",
    "save": "saving the tuned weights",
    "decode_latents": "decoding frames",
    "encode_video": "encoding",
}


def gradio_progress(progress: gr.Progress | None):
    """Report library stages on Gradio's bar by name (decoding, condition maps, inversion, editing, encoding)."""

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            prefix, _, name = stage.rpartition(": ")
            label = STAGE_LABELS.get(name, name.replace("_", " "))
            progress((done, total), desc=f"{prefix}: {label}" if prefix else label)

    return report


def request_from(values: dict[str, Any], output_dir: str, formats: tuple[str, ...] = OUTPUT_FORMATS, tuned: str | None = None):
    """The validated request these widget values describe."""
    values = dict(values)
    video = values.pop("video", None)
    values.pop("token", None)
    return make_request(option_values(values), video, output_dir, formats, tuned)


def plan_text(video: str | None, start, end, stride, frames, size) -> str:
    """The frame count and output size the trim settings give, or why they give nothing."""
    if not video:
        return "Pick a clip to see how many frames it gives."
    trim = {"start": start, "end": end, "stride": stride, "frames": frames, "size": size, "prompt": "plan", "model": "tiny"}
    try:
        selection = make_request(option_values(trim), video, "plan").selection
        info = probe(video)
        return f"**{plan_frames(info, selection).summary()}** from {info.frame_count} source frames ({info.width}x{info.height})"
    except EditingError as exc:
        return f"Cannot edit with these settings: {exc}"


def warp_plot_data(errors: np.ndarray) -> pd.DataFrame:
    """Rows (pair, warp error) for the plot: pair t is frames t -> t+1."""
    return pd.DataFrame({"frame pair": np.arange(len(errors)), "warp error": np.asarray(errors, dtype=float)})


def make_handlers(backend: Backend):
    """The tab's handlers, each taking a dict of widget values; every failure is one sentence on screen."""

    @one_sentence_errors
    def edit(values: dict[str, Any], progress, tuned: str | None = None) -> tuple:
        token = values.get("token") or CancelToken()
        token.reset()
        request = request_from(backend.checked(values), backend.output_dir(), tuned=tuned)
        outputs = backend.edit(request, gradio_progress(progress), token)
        errors = backend.warp_errors(request, outputs)
        details = outputs.details() | {"mean_warp_error": round(mean_warp_error(errors), 4) if len(errors) else None}
        if outputs.result.random_weights:
            details["note"] = RANDOM_WEIGHTS_NOTE
        return outputs.get(".mp4"), outputs.get(".gif"), outputs.get(".zip"), details, warp_plot_data(errors)

    @one_sentence_errors
    def preview(values: dict[str, Any], progress) -> np.ndarray:
        token = values.get("token") or CancelToken()
        token.reset()
        request = request_from(backend.checked(values), backend.output_dir(), (".zip",))
        return backend.preview_first_frame(request, gradio_progress(progress), token)

    @one_sentence_errors
    def conditions(values: dict[str, Any], progress) -> list:
        request = request_from(backend.checked(values), backend.output_dir(), (".zip",))
        if not request.engine.controls:
            raise EditingError("tick at least one ControlNet to preview its condition map")
        return backend.condition_previews(request)

    return {"edit": edit, "preview": preview, "conditions": conditions}


def create_tab(backend: Backend, default_model: str) -> dict[str, gr.components.Component]:
    """Lay out the Edit tab inside the current Blocks and wire its events; returns its widgets by name."""
    handlers = make_handlers(backend)
    form: dict[str, gr.components.Component] = {}
    token = gr.State(CancelToken())
    with gr.Row():
        with gr.Column():
            form["video"] = gr.Video(label="Source clip", sources=["upload"], elem_id="source-video")
            plan = gr.Markdown("Pick a clip to see how many frames it gives.", elem_id="frame-plan")
            form["prompt"] = gr.Textbox(label="Prompt", placeholder="a watercolor painting of a man skiing", elem_id="prompt")
            form["negative_prompt"] = gr.Textbox(label="Negative prompt")
            form["model"] = widgets.model_widget(default_model)
            with gr.Accordion("Frames", open=True):
                form |= widgets.frame_widgets(form["model"], policy=backend.policy)
            with gr.Accordion("Sampler", open=False, elem_id="sampler"):
                form |= widgets.sampler_widgets()
            with gr.Accordion("Engine: attention, ControlNets, smoothing", open=False):
                form |= widgets.engine_widgets()
                form |= widgets.reference_widgets()
                show_conditions = gr.Button("Preview condition maps")
                condition_gallery = gr.Gallery(label="Condition maps (first frame)", columns=4, height=200)
            with gr.Accordion("Attention editing (Prompt-to-Prompt)", open=False):
                form |= widgets.attention_edit_widgets()
            with gr.Row():
                preview_button = gr.Button("Preview first frame")
                run = gr.Button("Edit the whole clip", variant="primary", elem_id="run-edit")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            first_frame = gr.Image(label="First frame preview", type="numpy", height=240)
            output = gr.Video(label="Edited clip", autoplay=True, elem_id="edited-video")
            with gr.Row():
                gif = gr.File(label="GIF")
                frames_zip = gr.File(label="Frames (zip of PNG)")
            warp = gr.LinePlot(x="frame pair", y="warp error", label="Temporal warp error per frame pair (lower = steadier)", height=200)
            details = gr.JSON(label="Details", elem_id="details")
    rows = widgets.examples(default_model)
    if rows:
        gr.Examples(rows, inputs=[form["video"], form["prompt"], form["model"], form["size"]])

    trims = [form[n] for n in ("video", "start", "end", "stride", "frames", "size")]
    gr.on([t.change for t in trims], plan_text, inputs=trims, outputs=plan, queue=False, api_visibility="private")

    fields = api_fields()
    for option in form_options():
        if option.name in fields and option.name not in form:
            form[option.name] = widgets.option_widget(option)  # an option the form shows no widget for yet
    names = fields + ["token"]
    inputs = [form[n] for n in fields] + [token]
    defaults = widgets.initial_values(form)
    edit_event = run.click(
        widgets.named_handler(gpu(handlers["edit"]), names, defaults),
        inputs=inputs,
        outputs=[output, gif, frames_zip, details, warp],
        api_name="edit",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=1,
    )
    preview_event = preview_button.click(
        widgets.named_handler(gpu(handlers["preview"]), names, defaults),
        inputs=inputs,
        outputs=first_frame,
        api_name="preview_first_frame",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=1,
    )
    condition_event = show_conditions.click(
        widgets.named_handler(handlers["conditions"], names, defaults),
        inputs=inputs,
        outputs=condition_gallery,
        api_name="condition_maps",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=1,
    )
    stop.click(CancelToken.cancel, inputs=token, outputs=None, cancels=[edit_event, preview_event, condition_event], queue=False, api_visibility="private")
    return form
