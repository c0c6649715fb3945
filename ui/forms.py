"""Widget values -> one validated EditRequest, through the same option schema as `python -m editing edit`.

The form's field names are the request schema's option names (`editing.requests.options`: the CLI's
argparse `dest`s, the eval spec's keys), so the app cannot drift from the command line: defaults come
from the configs, values are checked by `editing.requests.coerce`, and `editing.requests.edit_request`
builds and validates the request.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from editing import requests
from editing.errors import ConfigError, EditingError
from editing.requests import EditRequest

from . import hints

log = logging.getLogger(__name__)

OUTPUT_FORMATS = (".mp4", ".gif", ".zip")


def form_options(command: str = "edit") -> tuple[requests.Option, ...]:
    """The schema's options of `command` a form may set: all but the clip and those whose `app` hint says
    `form: False` (files and places are the app's business)."""
    return tuple(option for option in requests.options(command) if hints.on_form(option))


def option_names(command: str = "edit") -> tuple[str, ...]:
    """Every option of the command a form may set."""
    return tuple(option.name for option in form_options(command))


def default_values(command: str = "edit") -> dict[str, Any]:
    """The schema's defaults for every form field."""
    return {option.name: option.default for option in form_options(command)}


def command_values(command: str, values: Mapping[str, Any], video: str, output: str | None) -> dict[str, Any]:
    """Every option value of `command` these form values stand for (a blank widget keeps the default)."""
    unknown = sorted(set(values) - set(option_names(command)))
    if unknown:
        raise ConfigError(f"unknown form fields: {', '.join(unknown)}")
    given = dict(values)
    resolved = {option.name for option in form_options(command) if option.resolve}
    given |= {name: None for name in resolved if given.get(name) == ""}  # blank: the value the schema works out
    if isinstance(given.get("end"), (int, float)) and given["end"] <= 0:
        given["end"] = None  # an empty or zero end means "to the end of the clip"
    return requests.complete(command, given, keep_none=False) | {"video": video, "out": output}


def edit_values(values: Mapping[str, Any], video: str, output: str) -> dict[str, Any]:
    """The `edit` option values these form values stand for."""
    return command_values("edit", values, video, output)


def make_request(
    values: Mapping[str, Any],
    video: str | None,
    output_dir: str,
    formats: tuple[str, ...] = (".mp4",),
    tuned: str | None = None,
    keyframe_image: str | None = None,
) -> EditRequest:
    """One validated EditRequest writing `formats` into `output_dir`, with the app's tuned weights and an
    uploaded edited keyframe (`INDEX=PATH` of a file Gradio received) if any (raises EditingError)."""
    if not video:
        raise EditingError("upload a video or pick an example first")
    if not formats or any(f not in OUTPUT_FORMATS for f in formats):
        raise ConfigError(f"output formats must be among {', '.join(OUTPUT_FORMATS)}, got {formats}")
    stem = Path(output_dir) / f"{Path(video).stem}-edited"
    outputs = [str(stem.with_suffix(suffix)) for suffix in formats]
    options = edit_values(values, video, outputs[0])
    options["tuned"] = tuned  # a file the app made, never a path from the form
    if keyframe_image:
        options["keyframe_image"] = [keyframe_image]  # an upload the app received, never a path from the form
    request = requests.edit_request(options)
    return dataclasses.replace(request, also_write=tuple(outputs[1:]))


def user_error(message: str) -> gr.Error:
    """The gr.Error for something the user can fix: one line in the terminal's log, no traceback."""
    message = " ".join(str(message).split())
    log.warning("refused: %s", message)
    return gr.Error(message, print_exception=False)


def as_gradio_error(exc: Exception) -> gr.Error:
    """One sentence for the user: the library's own message (logged as one line), or the failure's type and
    first line (a real failure: Gradio prints its traceback in the terminal)."""
    if isinstance(exc, EditingError):
        return user_error(str(exc))
    text = " ".join(str(exc).split())[:200]
    return gr.Error(f"the edit failed: {type(exc).__name__}: {text}" if text else f"the edit failed: {type(exc).__name__}")


def option_values(widgets: Mapping[str, Any]) -> dict[str, Any]:
    """CLI option values from widget values: ControlNet checkboxes and one scale, smoothing checkboxes, blanks."""
    values = dict(widgets)
    kinds, scale = values.pop("control_kinds", None) or [], values.pop("control_scale", 1.0)
    if not isinstance(kinds, (list, tuple)) or not all(isinstance(kind, str) for kind in kinds):
        raise ConfigError(f"control_kinds must be a list of condition kinds, got {kinds!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"control_scale must be a number, got {scale!r}")
    if kinds:
        values["control"] = [f"{kind}:{float(scale):g}" for kind in kinds]
    values |= reference_value(values.pop("reference_image", None), values.pop("reference_scale", None))
    for name in ("source_prompt", "model"):
        if values.get(name) is not None and not isinstance(values[name], str):
            raise ConfigError(f"{name} must be text, got {values[name]!r}")
    if isinstance(values.get("smooth"), (list, tuple)):
        if not all(isinstance(word, str) for word in values["smooth"]):
            raise ConfigError(f"smooth must be a list of flow, color and pixel, got {values['smooth']!r}")
        values["smooth"] = ",".join(values["smooth"])
    if "source_prompt" in values and not (values["source_prompt"] or "").strip():
        values["source_prompt"] = None  # blank = no attention editing, as when --source-prompt is left out
    if "model" in values:
        values["model"] = (values["model"] or "").strip() or None
        if values["model"] is None:
            raise ConfigError("model must be chosen: a Hub id, a local folder or file, or a built-in one")
    return values


def reference_value(image: Any, scale: Any) -> dict[str, Any]:
    """The reference_image option from the form's upload (a file Gradio received, re-encoded by gr.Image) and
    its scale slider: PATH:SCALE, or nothing when no image is given."""
    if image is None or image == "":
        return {}
    if not isinstance(image, str):
        raise ConfigError(f"reference_image must be an uploaded image, got {type(image).__name__}")
    if scale is None:
        return {"reference_image": image}
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ConfigError(f"reference_scale must be a number, got {scale!r}")
    return {"reference_image": f"{image}:{float(scale):g}"}


def make_tune_request(values: Mapping[str, Any], video: str | None):
    """One validated TuneRequest from the form's values; the weights stay in the tuning cache."""
    if not video:
        raise EditingError("upload a video or pick an example first")
    return requests.tune_request(command_values("tune", values, video, None))


def one_sentence_errors(fn):
    """`fn`, with any failure turned into a one-sentence gr.Error (so the app keeps serving)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise as_gradio_error(exc) from exc

    return run
