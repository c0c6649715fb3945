"""The Edit tab: pick and trim a clip, set the edit, preview the first frame, edit the clip, download."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from editing.errors import Cancelled, ConfigError, EditingError
from editing.metrics import mean_warp_error
from editing.models import RANDOM_WEIGHTS_NOTE
from editing.presets import apply_preset, get_preset, preset_note
from editing.video_io import write_png_zip

from . import hints, widgets
from .backend import Backend, CancelToken
from .clip_upload import TRIMS, ClipUpload, follow_plan
from .details import controlnet_names, warn
from .forms import OUTPUT_FORMATS, default_values, form_options, make_request, one_sentence_errors, option_values
from .gpu import gpu, on_spaces
from .preview import preview_for
from .serving import LOCAL, ServePolicy

FAST_PREVIEW = "fast"  # the preset the Fast preview button runs (editing.presets)
GPU_QUEUE = (
    "gpu"  # every event that runs a model shares this concurrency id: backend.concurrency at a time (1; one per Ray worker)
)
# The published order of the /edit API's first parameters (the first twelve are the original API's), so
# positional clients keep working; which options are parameters is the schema's (hints.on_api).
API_FIELDS = [
    "video", "prompt", "model", "start", "end", "stride", "frames", "size", "steps", "guidance", "strength", "seed",
    "negative_prompt", "attention", "inversion", "source_prompt", "prompt_edit", "blend_words",
    "control_kinds", "control_scale", "smooth", "reference_scale",
]  # fmt: skip


# The tab's own upload of an edited keyframe (the schema's keyframe_image takes paths, so the form reserves it).
KEYFRAME_FIELDS = ["keyframe_upload", "keyframe_index"]


def api_fields() -> list[str]:
    """The /edit API's parameters: API_FIELDS, then every other option of the request schema whose `app`
    hint keeps it on the API (e.g. a field added to a config), then the edited-keyframe upload."""
    return API_FIELDS + [o.name for o in form_options() if o.name not in API_FIELDS and hints.on_api(o)] + KEYFRAME_FIELDS


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
    "propagate": "propagating the keyframes",
    "refine": "re-diffusing what no keyframe sees",
    "encode_video": "encoding",
}


STEPPED = ("invert", "denoise")  # stages that run the strength's share of the steps


def steps_text(total: int, request=None) -> str:
    """ "6 of 10 steps (strength 0.6)": the steps a stage runs, out of the Steps set, and why."""
    if request is None or total == request.edit.steps:
        return f"{total} steps"
    return f"{total} of {request.edit.steps} steps (strength {request.edit.strength:g})"


def stage_name(stage: str) -> str:
    """A pipeline stage as people call it ("entry 2/3: editing" for a session's second prompt)."""
    prefix, _, name = stage.rpartition(": ")
    label = STAGE_LABELS.get(name, name.replace("_", " "))
    return f"{prefix}: {label}" if prefix else label


def stage_label(stage: str, total: int = 0, request=None) -> str:
    """A stage's name on the progress bar, e.g. "editing: 6 of 10 steps (strength 0.6)"."""
    if stage.rpartition(": ")[2] in STEPPED and total > 1:
        return f"{stage_name(stage)}: {steps_text(total, request)}"
    return stage_name(stage)


def gradio_progress(progress: gr.Progress | None, request=None):
    """Report library stages on Gradio's bar by name (decoding, condition maps, inversion, editing, encoding),
    with the steps a stepped stage runs out of those set."""

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc=stage_label(stage, total, request))

    return report


def stopped_text(token: CancelToken, request=None, kept: str = "the last result is kept") -> str:
    """What the page says after Stop: where the run stopped ("stopped at step k/n") and what stays."""
    if token.reached is None:
        return f"Stopped before the edit began; {kept}."
    stage, done, total = token.reached
    share = ""
    if stage.rpartition(": ")[2] in STEPPED and request is not None and total != request.edit.steps:
        share = f" ({total} of the {request.edit.steps} steps at strength {request.edit.strength:g})"
    return f"Stopped at step {done}/{total} of {stage_name(stage)}{share}; {kept}."


def request_from(values: dict[str, Any], output_dir: str, formats: tuple[str, ...] = OUTPUT_FORMATS, tuned: str | None = None):
    """The validated request these widget values describe."""
    values = dict(values)
    video = values.pop("video", None)
    values.pop("token", None)
    upload, index = values.pop("keyframe_upload", None), values.pop("keyframe_index", 0)
    return make_request(option_values(values), video, output_dir, formats, tuned, keyframe_image_of(upload, index))


def keyframe_image_of(upload, index) -> str | None:
    """The `INDEX=PATH` of an uploaded edited keyframe (None without an upload); one sentence if the index is no frame number."""
    if not upload:
        return None
    if not isinstance(upload, str):
        raise ConfigError(f"keyframe_upload must be an uploaded image, got {type(upload).__name__}")
    if isinstance(index, float) and index.is_integer():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ConfigError(f"keyframe_index must be a frame number 0 or more, got {index!r}")
    return f"{index}={upload}"


def warp_plot_data(errors: np.ndarray) -> pd.DataFrame:
    """Rows (pair, warp error) for the plot: pair "t-t+1" is frames t -> t+1, a category, so that the axis
    ticks are whole frame pairs."""
    pairs = [f"{t}-{t + 1}" for t in range(len(errors))]
    return pd.DataFrame({"frame pair": pairs, "warp error": np.asarray(errors, dtype=float)})


def frame_of(frames_zip: str, index: int) -> np.ndarray:
    """Frame `index` of a PNG zip (written by `video_io.write_png_zip`), read alone."""
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(frames_zip) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith(".png"))
        index = min(max(int(index), 0), len(names) - 1)
        return np.asarray(Image.open(io.BytesIO(archive.read(names[index]))).convert("RGB"))


def make_handlers(backend: Backend):
    """The tab's handlers, each taking a dict of widget values; every failure is one sentence on screen."""

    @one_sentence_errors
    def edit(values: dict[str, Any], progress, tuned: str | None = None) -> tuple:
        """The five API outputs (video, GIF, zip, details, warp plot), then the run for the page: its
        message and the frames to compare. A stopped run keeps the outputs shown before."""
        token = values.get("token") or CancelToken()
        request = request_from(backend.checked(values), backend.output_dir(), tuned=tuned)
        try:
            outputs = backend.edit(request, gradio_progress(progress, request), token)
        except Cancelled:
            message = stopped_text(token, request)
            token.reset()
            return (gr.skip(),) * 5 + ({"message": message},)
        return shown_outputs(request, outputs)

    @one_sentence_errors
    def fast_preview(values: dict[str, Any], progress) -> tuple:
        """The same edit with the fast preset (FAST_PREVIEW): its sampler, steps, guidance, start, LoRA and
        autoencoder replace the form's; the prompt, seed, frames and ControlNets stay. Its note (a random
        model's output means nothing) is in the details and the status line."""
        shown = edit(fast_values(values), progress)
        note = preset_note({"preset": FAST_PREVIEW, "model": values.get("model")})
        *outputs, details, warp, run = shown
        if note and isinstance(details, dict) and isinstance(run, dict):
            details, run = details | {"preset_note": note}, run | {"message": f"Fast preview ({FAST_PREVIEW} preset): {note}."}
        return (*outputs, details, warp, run)

    @one_sentence_errors
    def keyframes(values: dict[str, Any], progress) -> tuple:
        """Stage 1: edit the keyframes only; shows them and keeps them for Propagate."""
        token = values.get("token") or CancelToken()
        values.pop("staged", None)
        request = request_from(backend.checked(values), backend.output_dir())
        try:
            staged = backend.edit_keyframes(request, gradio_progress(progress, request), token)
        except Cancelled:
            message = stopped_text(token, request, kept="the keyframes shown before are kept")
            token.reset()
            return gr.skip(), gr.skip(), message
        made = staged.keyframes
        shown = [(frame, f"frame {index}") for index, frame in zip(made.indices, made.frames)]
        others = (
            "no other frames" if len(made.indices) == request.selection.max_frames else "then Propagate fills in the other frames"
        )
        return (
            shown,
            staged,
            f"Edited keyframes {', '.join(map(str, made.indices))}: change the prompt or seed and edit them again, or {others}.",
        )

    @one_sentence_errors
    def propagate(values: dict[str, Any], progress) -> tuple:
        """Stage 2: the other frames from the kept keyframes, shown like an edit."""
        token = values.get("token") or CancelToken()
        staged = values.pop("staged", None)
        if staged is None:
            raise EditingError("edit the keyframes first, then propagate them")
        request = request_from(backend.checked(values), backend.output_dir())
        try:
            outputs = backend.propagate(request, staged, gradio_progress(progress, request), token)
        except Cancelled:
            message = stopped_text(token, request)
            token.reset()
            return (gr.skip(),) * 5 + ({"message": message},)
        return shown_outputs(request, outputs)

    def shown_outputs(request, outputs) -> tuple:
        source = backend.source_frames(request)
        errors = backend.warp_errors(request, outputs, source)
        details = outputs.details() | {"mean_warp_error": round(mean_warp_error(errors), 4) if len(errors) else None}
        if outputs.result.random_weights:
            details["note"] = RANDOM_WEIGHTS_NOTE
        if request.engine.controls:
            details["controlnets"] = controlnet_names(request)
        warn(details)
        run = {"message": "", "source": None, "edited": outputs.get(".zip"), "frames": outputs.result.frames}
        if run["edited"]:
            run["source"] = str(write_png_zip(Path(run["edited"]).with_name(Path(request.video).stem + "-source.zip"), source))
        return outputs.get(".mp4"), outputs.get(".gif"), outputs.get(".zip"), details, warp_plot_data(errors), run

    @one_sentence_errors
    def preview(values: dict[str, Any], progress) -> np.ndarray:
        token = values.get("token") or CancelToken()
        request = request_from(backend.checked(values), backend.output_dir(), (".zip",))
        try:
            return backend.preview_first_frame(request, gradio_progress(progress, request), token)
        except Cancelled:
            token.reset()
            return gr.skip()

    @one_sentence_errors
    def conditions(values: dict[str, Any], progress) -> list:
        request = request_from(backend.checked(values), backend.output_dir(), (".zip",))
        if not request.engine.controls:
            raise EditingError("tick at least one ControlNet to preview its condition map")
        return backend.condition_previews(request)

    return {
        "edit": edit,
        "fast_preview": fast_preview,
        "preview": preview,
        "conditions": conditions,
        "keyframes": keyframes,
        "propagate": propagate,
    }


def preset_refusal(model: str | None, policy: ServePolicy = LOCAL, preset: str | None = None) -> str | None:
    """Why the preset (default FAST_PREVIEW) cannot run with `model`, in the preset's own words (editing.presets.apply_preset, so a
    model that gains the preset's path enables its button), or None; None too for a model the serving policy
    refuses or that does not parse (the run itself says why)."""
    try:
        spec = policy.check_model((model or "").strip() or None)
    except EditingError:
        return None
    try:
        apply_preset({"preset": preset or FAST_PREVIEW, "model": spec}, default_values())
    except ConfigError as exc:
        return str(exc)
    except EditingError:
        return None
    return None


def refused_text(refused: str | None) -> str:
    """The line under the buttons for a Fast preview that cannot run."""
    return f"Fast preview is off: {refused}." if refused else ""


def fast_values(values: dict[str, Any]) -> dict[str, Any]:
    """The form's values for the Fast preview: the preset named, every option it sets left to it."""
    preset = get_preset(FAST_PREVIEW)
    return {name: value for name, value in values.items() if name not in preset.values(random_weights=True)} | {
        "preset": FAST_PREVIEW
    }


def forget_keyframes() -> tuple:
    """An empty keyframe gallery, no kept keyframes, Propagate off (a new clip was uploaded)."""
    return [], None, gr.update(interactive=False)


def show_run(run: dict | None) -> tuple:
    """The run's message, the before/after view of its first frame and the frame scrubber."""
    if not run:
        return gr.skip(), gr.skip(), gr.skip()
    message = run.get("message") or ""
    if not run.get("edited") or not run.get("source"):
        return message, gr.skip(), gr.skip()
    pair = (frame_of(run["source"], 0), frame_of(run["edited"], 0))
    last = max(int(run.get("frames") or 1) - 1, 1)
    return (
        message,
        gr.update(value=pair, visible=True),
        gr.update(value=0, maximum=last, interactive=run.get("frames", 1) > 1, visible=True),
    )


def show_frame(index, run: dict | None):
    """Source and edit of frame `index`, for the before/after view."""
    if not run or not run.get("edited") or not run.get("source"):
        return gr.skip()
    return frame_of(run["source"], index or 0), frame_of(run["edited"], index or 0)


def examples_shown(model: str) -> tuple:
    """The note on what the model can do, and which example table suits it."""
    note = widgets.model_note(model)
    photo = widgets.model_kind(model) == "photo"
    return gr.update(value=note, visible=bool(note)), gr.Dataset(visible=photo), gr.Dataset(visible=not photo)


def create_tab(backend: Backend, default_model: str) -> dict[str, gr.components.Component]:
    """Lay out the Edit tab inside the current Blocks and wire its events; returns its widgets by name.

    The form's option widgets sit in accordions; an option of the request schema the form lays out no
    widget for is still an /edit parameter (a hidden widget holding its default)."""
    handlers = make_handlers(backend)
    form: dict[str, gr.components.Component] = {}
    token = gr.State(CancelToken())
    run_state = gr.State(None)  # the last run: its message and the frames the before/after view shows
    with gr.Row():
        with gr.Column():
            upload = ClipUpload.create()
            form["video"] = upload.file
            examples_box = gr.Column()  # filled below, once the widgets the examples set exist
            form["prompt"] = gr.Textbox(label="Prompt", placeholder=widgets.prompt_placeholder(default_model), elem_id="prompt")
            form["negative_prompt"] = gr.Textbox(label="Negative prompt")
            form["model"] = widgets.model_widget(default_model)
            with gr.Accordion("Frames", open=True):
                form |= widgets.frame_widgets(form["model"], policy=backend.policy)
            with gr.Accordion("Sampler", open=False, elem_id="sampler"):
                form |= widgets.sampler_widgets()
            with gr.Accordion("Engine: attention, ControlNets, smoothing", open=False):
                form |= widgets.engine_widgets()
                form |= widgets.reference_widgets()
                show_conditions = gr.Button(
                    "Preview condition maps", interactive=False, elem_id="run-conditions"
                )  # once the clip gives a plan
                condition_gallery = gr.Gallery(label="Condition maps (first frame)", columns=4, height=200)
            with gr.Accordion("Attention editing (Prompt-to-Prompt)", open=False):
                form |= widgets.attention_edit_widgets()
        with gr.Column():
            with gr.Row():
                preview_button = gr.Button("Preview first frame", interactive=False, elem_id="run-preview")
                fast_button = gr.Button("Fast preview", interactive=False, elem_id="run-fast-preview")
                run = gr.Button("Edit the whole clip", variant="primary", interactive=False, elem_id="run-edit")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            refused = preset_refusal(default_model, backend.policy)
            button_note = gr.Markdown(refused_text(refused), visible=bool(refused), elem_id="button-note")  # why a button is off
            with gr.Accordion("Keyframes, then propagation", open=False, elem_id="keyframes-stage"):
                gr.Markdown(
                    "Edit a few keyframes first and look at them; change the prompt or seed and edit them again; then Propagate fills in the other frames along the source's motion."
                )
                with gr.Row():
                    form["keyframe_upload"] = gr.Image(
                        label="Upload an edited keyframe (optional)",
                        type="filepath",
                        sources=["upload"],
                        height=140,
                        elem_id="keyframe-upload",
                    )
                    form["keyframe_index"] = gr.Number(
                        label="for frame", value=0, precision=0, minimum=0, elem_id="keyframe-index"
                    )
                with gr.Row():
                    keys_button = gr.Button("Edit keyframes", interactive=False, elem_id="run-keyframes")
                    propagate_button = gr.Button("Propagate", interactive=False, elem_id="run-propagate")
                keyframe_gallery = gr.Gallery(label="Edited keyframes", columns=4, height=180, elem_id="keyframes")
            status = gr.Markdown("", elem_id="run-status")
            output = gr.Video(label="Edited clip", autoplay=True, elem_id="edited-video", height=360)
            # shown with the first result
            compare = gr.ImageSlider(
                label="Before (left) and after (right): drag the divider",
                type="numpy",
                elem_id="compare",
                max_height=360,
                visible=False,
            )
            scrubber = gr.Slider(0, 1, value=0, step=1, label="Frame", interactive=False, elem_id="frame-scrubber", visible=False)
            first_frame = gr.Image(label="First frame preview", type="numpy", height=240, elem_id="first-frame")
            with gr.Row():
                gif = gr.File(label="GIF")
                frames_zip = gr.File(label="Frames (zip of PNG)")
            warp = gr.BarPlot(
                x="frame pair",
                y="warp error",
                x_title="frame pair (t to t+1)",
                y_title="warp error",
                label="Temporal warp error per frame pair (lower = steadier)",
                y_lim=[0, None],
                elem_id="warp-plot",
            )
            details = gr.JSON(label="Details", elem_id="details")
    with examples_box:
        note = gr.Markdown(
            widgets.model_note(default_model), visible=bool(widgets.model_note(default_model)), elem_id="model-note"
        )
        preview_dir = Path(tempfile.gettempdir()) / "video-edit-previews"
        inputs = [form["video"], upload.shown, form["prompt"], form["model"], form["size"]]
        photo_rows = [[r[0], preview_for(r[0], preview_dir), *r[1:]] for r in widgets.photo_examples(default_model)]
        shapes_rows = [[r[0], preview_for(r[0], preview_dir), *r[1:]] for r in widgets.shapes_examples()]
        photo = widgets.model_kind(default_model) == "photo"
        photo_examples = (
            gr.Examples(
                photo_rows,
                inputs,
                label="Examples: photos",
                elem_id="examples-photos",
                visible_columns=[1, 2],
                visible=photo and bool(photo_rows),
            )
            if photo_rows
            else None
        )
        shapes_examples = (
            gr.Examples(
                shapes_rows,
                inputs,
                label="Examples: the shapes model",
                elem_id="examples-shapes",
                visible_columns=[1, 2, 3],
                visible=not photo,
            )
            if shapes_rows
            else None
        )
    if photo_examples is not None and shapes_examples is not None:
        form["model"].change(
            examples_shown,
            form["model"],
            [note, photo_examples.dataset, shapes_examples.dataset],
            queue=False,
            api_visibility="private",
        )

    upload.wire(form, needs_plan=[run, preview_button, keys_button, show_conditions])
    form["model"].change(
        lambda spec: gr.update(placeholder=widgets.prompt_placeholder(spec)),
        form["model"],
        form["prompt"],
        queue=False,
        api_visibility="private",
    )

    fields = api_fields()
    for option in form_options():
        if option.name in fields and option.name not in form:
            form[option.name] = widgets.option_widget(option)  # an option the form shows no widget for yet
    names = fields + ["token"]
    inputs = [form[n] for n in fields] + [token]
    defaults = widgets.initial_values(form)
    staged = gr.State(None)  # the keyframes 'Edit keyframes' made, for 'Propagate
    # a new clip: the previous clip's keyframes are no longer shown nor kept for Propagate
    form["video"].change(
        forget_keyframes, None, [keyframe_gallery, staged, propagate_button], queue=False, api_visibility="private"
    )

    def started(button):
        """A click that first clears this user's Stop (so a Stop pressed while the job waits still counts)."""
        return button.click(CancelToken.reset, token, None, queue=False, api_visibility="private")

    def whole_clip(button, handler: str):
        """A button that edits the whole clip with `handler` (Edit, Fast preview): the same outputs, then the result shown."""
        event = started(button).then(
            widgets.named_handler(gpu(handlers[handler]), names, defaults),
            inputs=inputs,
            outputs=[output, gif, frames_zip, details, warp, run_state],
            api_name=handler,
            concurrency_id=GPU_QUEUE,
            concurrency_limit=backend.concurrency,
            show_progress_on=output,
        )
        event.then(show_run, run_state, [status, compare, scrubber], queue=False, api_visibility="private")
        return event

    edit_event = whole_clip(run, "edit")
    fast_event = whole_clip(fast_button, "fast_preview")
    scrubber.change(show_frame, [scrubber, run_state], compare, queue=False, show_progress="hidden", api_visibility="private")
    preview_event = started(preview_button).then(
        widgets.named_handler(gpu(handlers["preview"]), names, defaults),
        inputs=inputs,
        outputs=first_frame,
        api_name="preview_first_frame",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=backend.concurrency,
        show_progress_on=first_frame,
    )
    keys_event = started(keys_button).then(
        widgets.named_handler(gpu(handlers["keyframes"]), names, defaults),
        inputs=inputs,
        outputs=[keyframe_gallery, staged, status],
        api_name="edit_keyframes",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=backend.concurrency,
        show_progress_on=keyframe_gallery,
    )
    keys_event.then(
        lambda kept: gr.update(interactive=kept is not None), staged, propagate_button, queue=False, api_visibility="private"
    )
    # Fast preview runs only where its preset can (said under the buttons), Propagate only with a plan and kept keyframes
    trims = [form[name] for name in TRIMS]

    def gate(model, kept, clip, *values):
        _, ok = follow_plan(dict(zip(TRIMS, trims)), clip, dict(zip(TRIMS, values)))
        refused = preset_refusal(model, backend.policy)
        note = gr.update(value=refused_text(refused), visible=bool(refused))
        return gr.update(interactive=ok and not refused), gr.update(interactive=ok and kept is not None), note

    gate_triggers = [upload.clip.change, form["model"].change, *(widget.change for widget in trims)]
    gr.on(
        gate_triggers,
        gate,
        [form["model"], staged, upload.clip, *trims],
        [fast_button, propagate_button, button_note],
        queue=False,
        preprocess=False,
        show_progress="hidden",
        api_visibility="private",
    )
    propagate_event = started(propagate_button).then(
        widgets.named_handler(gpu(handlers["propagate"]), names + ["staged"], defaults | {"staged": None}),
        inputs=inputs + [staged],
        outputs=[output, gif, frames_zip, details, warp, run_state],
        api_visibility="private",  # the staged keyframes live in this page's state
        concurrency_id=GPU_QUEUE,
        concurrency_limit=backend.concurrency,
        show_progress_on=output,
    )
    propagate_event.then(show_run, run_state, [status, compare, scrubber], queue=False, api_visibility="private")
    condition_event = show_conditions.click(
        widgets.named_handler(handlers["conditions"], names, defaults),
        inputs=inputs,
        outputs=condition_gallery,
        api_name="condition_maps",
        concurrency_id=GPU_QUEUE,
        concurrency_limit=backend.concurrency,
    )
    # Stop sets the token: a running edit stops at its next step and says where; on a Space (ZeroGPU runs
    # the handler in another process, where the token does not reach) the events are cancelled instead.
    cancels = [condition_event] + ([edit_event, fast_event, preview_event, keys_event, propagate_event] if on_spaces() else [])
    stop.click(CancelToken.cancel, inputs=token, outputs=None, cancels=cancels, queue=False, api_visibility="private")
    return form
