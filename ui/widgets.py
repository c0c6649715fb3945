"""Widgets named after the CLI options they set, and the glue that turns their values into a request."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from editing.condition_kinds import condition_kind_names
from editing.config import DEFAULT_KEYFRAMES
from editing.errors import EditingError
from editing.models import BUILTIN_MODELS, DEFAULT_MODEL, SHAPES_MODEL, native_size

from . import hints
from .serving import LOCAL, ServePolicy

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FORM_SIZE = hints.app_default(hints.option("size"))  # the forms' Long side (the size field's app hint says why)
SMOOTHING = ("flow", "color", "pixel")


# Clips of the shapes world (shapes_world.benchmark.benchmark_clip, assets/README.md) with an edit the
# shapes model makes offline.
SHAPES_EXAMPLES = {
    "shapes-clip1.mp4": "an orange triangle and a yellow star on a green background",
    "shapes-clip3.mp4": "a yellow square on a striped orange background",
}


PHOTO_PROMPT = "a watercolor painting"
# What each model choice gives, for a person choosing one (the value stays the model's name or Hub id).
MODEL_LABELS = {
    DEFAULT_MODEL: "Stable Diffusion 1.5: photo edits (downloads about 4 GB once)",
    SHAPES_MODEL: "shapes: scenes of coloured shapes only; works offline",
    "tiny": "tiny: random weights, draws noise; for testing the app",
    "sd15-random": "sd15-random: SD 1.5's size, random weights, draws noise; for testing",
}
MODEL_INFO = "Or type a Hub id (owner/name); on this machine also a model folder or .safetensors file."


def model_kind(spec: str | None) -> str:
    """What a model can edit: "shapes" (the shapes world only), "random" (random weights: noise) or
    "photo" (any other model, taken to be a Stable Diffusion 1.x checkpoint)."""
    text = (spec or "").strip()
    if text == SHAPES_MODEL:
        return "shapes"
    return "random" if text in BUILTIN_MODELS else "photo"


def model_note(spec: str | None) -> str:
    """One line under the examples saying what the chosen model can do, when it cannot edit photos."""
    kind = model_kind(spec)
    if kind == "shapes":
        return "The **shapes** model draws scenes of coloured shapes only, so it cannot make a photo edit: try its examples."
    if kind == "random":
        return (
            f"**{(spec or '').strip()}** has random weights and draws noise, so it cannot make a photo edit. For a real edit "
            "offline, pick a shapes example (it switches to the shapes model); for photos, choose Stable Diffusion 1.5."
        )
    return ""


def style_presets_info(spec: str | None) -> str | None:
    """What the photo style presets give with this model, said before they run (None for a photo model)."""
    kind, name = model_kind(spec), (spec or "").strip()
    if kind == "shapes":
        return "photo styles, which the shapes model cannot make: with it they return the source unchanged; choose Stable Diffusion 1.5 as the Model for them"
    if kind == "random":
        return f"photo styles, which {name} cannot make: it has random weights and draws noise; choose Stable Diffusion 1.5 as the Model for them"
    return None


def prompt_placeholder(spec: str | None) -> str:
    """An example prompt for the Prompt box that the model can make: a shapes scene for `shapes`, else a photo style."""
    if model_kind(spec) == "shapes":
        return next(iter(SHAPES_EXAMPLES.values()))
    return f"{PHOTO_PROMPT} of a man skiing"


def clips() -> list[Path]:
    """The example clips in assets/."""
    if not ASSETS.is_dir():
        return []
    return sorted(p for p in ASSETS.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mov", ".webm"))


def photo_examples(model: str) -> list[list[Any]]:
    """Example rows (clip, prompt, model, long side) for a photo model: the real clips with a style prompt."""
    return [[str(p), PHOTO_PROMPT, model, size_for_model(model)] for p in clips() if p.name not in SHAPES_EXAMPLES]


def shapes_examples() -> list[list[Any]]:
    """Example rows for the shapes model: the shapes clips with their edit, at the model's own size."""
    return [
        [str(p), SHAPES_EXAMPLES[p.name], SHAPES_MODEL, size_for_model(SHAPES_MODEL)]
        for p in clips()
        if p.name in SHAPES_EXAMPLES
    ]


def examples(model: str) -> list[list[Any]]:
    """The example rows that suit `model`: photo clips for a photo model, else the shapes clips (the only
    real edit a model without photo weights offers is the shapes model's)."""
    return photo_examples(model) if model_kind(model) == "photo" else shapes_examples()


def model_choices(default_model: str) -> list[tuple[str, str]]:
    """(what it gives, name) for each offered model, the app's default first."""
    names = dict.fromkeys([default_model, DEFAULT_MODEL, SHAPES_MODEL, *BUILTIN_MODELS])
    return [(MODEL_LABELS.get(name, name), name) for name in names]


def model_widget(default_model: str) -> gr.Dropdown:
    return gr.Dropdown(model_choices(default_model), value=default_model, allow_custom_value=True, label="Model", info=MODEL_INFO)


def size_for_model(model: str, policy: ServePolicy = LOCAL) -> int:
    """The Long side for a model: its own size where that is below the form's (the shapes model draws
    64 px scenes; at 256 px, 16 times the pixels, it draws them wrong), else the form's size, also for
    a spec that does not parse or that the serving policy refuses (the edit will say why)."""
    try:
        return min(native_size(policy.check_model(model)), FORM_SIZE)
    except EditingError:
        return FORM_SIZE


def frame_widgets(model: gr.Dropdown, command: str = "edit", policy: ServePolicy = LOCAL) -> dict[str, gr.components.Component]:
    """Trim and size of `command`'s form: start, end, stride, frame count, and the long side, which follows
    `model` (as far as the serving policy lets a model be looked at)."""
    with gr.Row():
        start = hints.number("start", command, label="Start (s)", minimum=0)
        # Gradio 6's number box shows 0 for an empty value (its frontend sets `value ??= 0`), so 0 is the
        # shown default and means the clip's end (forms.command_values maps end <= 0 to None).
        end = gr.Number(0, label="End (s, 0 = clip end)", minimum=0, elem_classes="end")
    with gr.Row():
        stride = hints.slider("stride", command, label="Stride")
        count = hints.slider(
            "frames", command, label="Frames", elem_classes="frames"
        )  # from 2: the range's other choice, 0 = all, is no slider position
        long_side = hints.slider("size", command, value=size_for_model(model.value), label="Long side (px)", elem_classes="size")

    def follow(spec: str) -> int:
        return size_for_model(spec, policy)

    model.change(follow, inputs=model, outputs=long_side, queue=False, api_visibility="private")
    return {"start": start, "end": end, "stride": stride, "frames": count, "size": long_side}


def sampler_widgets() -> dict[str, gr.components.Component]:
    """Steps, guidance, strength, seed."""
    with gr.Row():
        step_count = hints.slider("steps", label="Steps", elem_classes="steps")
        guidance = hints.slider("guidance", label="Guidance")
    with gr.Row():
        share = hints.slider("strength", label="Strength", info="share of the steps re-run; lower keeps more of the source")
        seed = hints.number("seed", label="Seed", minimum=0)
    return {"steps": step_count, "guidance": guidance, "strength": share, "seed": seed}


# The Keyframes box (--keyframes): blank is the edit command's default (editing.config.default_keyframes)
KEYFRAME_CHOICES = [
    (f"default: every {DEFAULT_KEYFRAMES}th frame where the edit allows it", ""),
    ("off: edit every frame", "off"),
    ("auto: where the scene changes", "auto"),
    ("every 4th frame", "4"),
    ("every 8th frame", "8"),
]


def engine_widgets() -> dict[str, gr.components.Component]:
    """Attention mode, inversion, ControlNets, smoothing."""
    with gr.Row():
        attention = hints.dropdown("attention", label="Cross-frame attention")
        inversion = hints.dropdown("inversion", label="Start from", info="ddim: invert the source; none: noise it (SDEdit)")
    with gr.Row():
        kinds = gr.CheckboxGroup(
            list(condition_kind_names()), label="ControlNets", info="depth and softedge need annotator weights"
        )
        scale = gr.Slider(0, 2, value=1.0, step=0.05, label="ControlNet scale")
    with gr.Row():
        smooth = gr.CheckboxGroup(list(SMOOTHING), label="Temporal smoothing")
        keyframes = gr.Dropdown(
            KEYFRAME_CHOICES,
            value="",
            label="Keyframes",
            info="edit these frames, then propagate them along the motion",
            allow_custom_value=True,
        )
    return {
        "attention": attention,
        "inversion": inversion,
        "control_kinds": kinds,
        "control_scale": scale,
        "smooth": smooth,
        "keyframes": keyframes,
    }


def attention_edit_widgets() -> dict[str, gr.components.Component]:
    """Prompt-to-Prompt / FateZero: source prompt (blank = off), edit kind, blend words."""
    source = gr.Textbox(label="Source prompt", placeholder="what the clip shows now; blank = no attention editing")
    with gr.Row():
        kind = hints.dropdown("prompt_edit", label="Edit kind")
        blend = gr.Textbox(label="Blend words", placeholder="jeep,porsche")
    return {"source_prompt": source, "prompt_edit": kind, "blend_words": blend}


def reference_widgets() -> dict[str, gr.components.Component]:
    """The reference image of the subject (IP-Adapter): an upload (Gradio re-encodes it into its own cache,
    so the edit reads a copy, never a path a client names) and its weight against the prompt."""
    from editing.config import REFERENCE_MAX_SCALE, REFERENCE_SCALE

    with gr.Row():
        image = gr.Image(label="Reference image of the subject (optional)", type="filepath", sources=["upload"], height=160)
        scale = gr.Slider(
            0, REFERENCE_MAX_SCALE, value=REFERENCE_SCALE, step=0.05, label="Reference weight", info="0 = no effect"
        )
    return {"reference_image": image, "reference_scale": scale}


def option_widget(option) -> gr.components.Component:
    """A hidden widget holding a schema option's default (`editing.requests.Option`), so that the option is
    an API parameter even before the form lays out a widget for it; a file option gets an upload."""
    if option.file == "image":
        return gr.Image(label=option.name, type="filepath", sources=["upload"], visible=False)
    if option.file is not None:  # another kind of file (a mask): an upload too, never a path
        return gr.File(label=option.name, type="filepath", visible=False)
    choices = option.choice_values()
    if option.repeat:
        return gr.JSON(list(option.default), label=option.name, visible=False)
    value = hints.app_default(option)
    if option.type is bool:
        return gr.Checkbox(value, label=option.name, visible=False)
    if choices is not None:
        return gr.Dropdown(list(choices), value=value, label=option.name, visible=False)
    if option.type in (int, float):
        return gr.Number(value, label=option.name, precision=0 if option.type is int else None, visible=False)
    return gr.Textbox(value, label=option.name, visible=False)


def named_handler(fn: Callable[..., Any], names: list[str], defaults: dict[str, Any]) -> Callable[..., Any]:
    """`fn(values: dict, progress)` as an event handler whose parameters are `names` (the API shows them by name).

    `fn` runs in a worker thread. When Gradio cancels the event (the Stop button, a client's
    `job.cancel()`), the handler sets the `token` value's CancelToken, so the edit stops at its next
    step, and waits for the thread to end: the GPU queue slot is released only once the memory is.
    """

    async def handler(*args, **kwargs):
        bound = handler.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        tracker = values.pop("progress")
        context = contextvars.copy_context()
        work = asyncio.get_running_loop().run_in_executor(None, context.run, fn, dict(values), tracker)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            if values.get("token") is not None:
                values["token"].cancel()
            with contextlib.suppress(Exception):
                await work
            if values.get("token") is not None:
                values["token"].reset()  # the cancel was this run's; the user's next run starts clear
            raise

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults.get(n)) for n in names]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    handler.__signature__ = inspect.Signature(params)
    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def initial_values(widgets: dict[str, gr.components.Component]) -> dict[str, Any]:
    """Each widget's starting value, the API's default for that parameter."""
    return {name: getattr(widget, "value", None) for name, widget in widgets.items()}
