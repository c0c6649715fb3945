"""Refusals of API input that Gradio would otherwise answer before the app sees it, as one sentence naming
the field: a number outside its widget's range ("Value 100000 is greater than maximum value 64.") and a
server path given as a file (`{"error": null}`)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import gradio as gr
from gradio import processing_utils, utils
from gradio_client import utils as client_utils

from .forms import user_error


def field_names(block_fn, count: int) -> list[str | None]:
    """The parameter names an event's handler takes its inputs under (the API's names), where it tells them."""
    try:
        names = [name for name in inspect.signature(block_fn.fn).parameters if name != "progress"]
    except (TypeError, ValueError):
        names = []
    return names[:count] + [None] * (count - len(names[:count]))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def range_refusal(name: str, component, value: Any) -> str | None:
    """Why `value` is outside a slider's or number box's range, in the words the CLI uses, or None."""
    number = _number(value)
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if number is None or not math.isfinite(number):
        return None  # the request schema says what is wrong with text, NaN or infinity
    if isinstance(component, gr.Slider) and not low <= number <= high:
        return f"{name} must be between {low:g} and {high:g} in this app, got {number:g}"
    if low is not None and number < low:
        return f"{name} must be at least {low:g}, got {number:g}"
    if high is not None and number > high:
        return f"{name} must be at most {high:g}, got {number:g}"
    return None


def server_paths(value: Any) -> list[str]:
    """Paths in a file payload that are not uploads to this server (nor URLs or the app's static files)."""
    found: list[str] = []

    def visit(payload: dict) -> None:
        path = payload.get("path") or ""
        if path and not client_utils.is_http_url_like(path) and not utils.is_static_file(path):
            if not utils.is_in_or_equal(path, processing_utils.get_upload_folder()):
                found.append(path)

    client_utils.traverse(value, visit, client_utils.is_file_obj)
    return found


MAX_TEXT = 2000  # characters of any text parameter (a prompt's 77 CLIP tokens are far fewer)


@functools.lru_cache(maxsize=1)
def _options_by_name() -> dict[str, Any]:
    """The request schema's options (edit and tune) by name: the API parameters that carry an option's value."""
    from editing import requests

    return {option.name: option for command in ("tune", "edit") for option in requests.options(command)}


def _shown(value: Any) -> str:
    """A value as a refusal quotes it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _choice_values(component) -> list[Any]:
    return [choice[1] if isinstance(choice, (tuple, list)) else choice for choice in (getattr(component, "choices", None) or [])]


def value_refusal(name: str, component, value: Any, option=None) -> str | None:
    """Why `value` cannot be the API parameter `name` of this widget, in one sentence naming it, or None.

    Checked from what the API describes (the widget's type, range and choices) and, for a parameter that is
    an option of the request schema, from that option (`editing.requests.coerce`): text, a number, a
    finite number, a whole number, one of the choices, a list of them, true or false, an uploaded file."""
    from editing import requests
    from editing.errors import EditingError

    if isinstance(component, (gr.File, gr.Image, gr.Video)):
        if value is None:
            return None  # no file: the handler says what it needs
        if (
            not client_utils.is_file_obj(value)
            or not isinstance(value.get("path"), str)
            or client_utils.is_http_url_like(value["path"])
        ):
            return f"{name} must be a file uploaded to this app (gradio_client: handle_file), got {_shown(value)}"
        return None
    if isinstance(component, gr.Checkbox):
        return None if isinstance(value, bool) else f"{name} must be true or false, got {_shown(value)}"
    if isinstance(component, (gr.Slider, gr.Number)):
        if value is None and isinstance(component, gr.Number):
            return None  # a blank number box keeps the option's default
        number = _number(value)
        if number is None:
            return f"{name} must be a number, got {_shown(value)}"
        if not math.isfinite(number):
            return f"{name} must be a finite number, got {_shown(value)}"
        whole = (
            (option is not None and option.type is int)
            or getattr(component, "precision", None) == 0
            or (isinstance(component, gr.Slider) and float(component.step).is_integer() and float(component.minimum).is_integer())
        )
        if whole and not number.is_integer():
            return f"{name} must be a whole number, got {_shown(value)}"
        return range_refusal(name, component, value)
    if isinstance(component, gr.CheckboxGroup):
        allowed = _choice_values(component)
        if not isinstance(value, list) or not all(isinstance(item, str) and item in allowed for item in value):
            return f"{name} must be a list of {', '.join(map(str, allowed))}, got {_shown(value)}"
        return None
    if isinstance(component, (gr.Textbox, gr.Dropdown)):
        if value is None:
            return None  # blank: the option's default
        if getattr(component, "multiselect", False):
            return (
                None
                if isinstance(value, list) and all(isinstance(v, str) for v in value)
                else f"{name} must be a list of texts, got {_shown(value)}"
            )
        if not isinstance(value, str):
            return f"{name} must be text, got {_shown(value)}"
        if len(value) > MAX_TEXT:
            return f"{name} must be at most {MAX_TEXT} characters, got {len(value)}"
        if isinstance(component, gr.Dropdown) and not component.allow_custom_value and value not in _choice_values(component):
            return f"{name} must be one of {', '.join(map(str, _choice_values(component)))}; got {_shown(value)}"
    if isinstance(component, gr.JSON) and value is not None:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and len(item) <= MAX_TEXT for item in items):
            return f"{name} must be a text or a list of texts of at most {MAX_TEXT} characters, got {_shown(value)}"
    data_model = getattr(component, "data_model", None)
    if value is not None and data_model is not None and not isinstance(component, (gr.File, gr.Image, gr.Video)):
        try:  # what Gradio's preprocessing would refuse with a multi-line pydantic error (an ImageEditor's drawing)
            data_model.model_validate(value)
        except Exception:
            return f"{name} must be a {type(component).__name__} value as the API describes it, got {_shown(value)}"
    if option is not None and option.name == name:
        try:
            requests.coerce(option, value)
        except EditingError as exc:
            return str(exc)
    return None


class CheckedBlocks(gr.Blocks):
    """gr.Blocks whose events clients may call refuse, before Gradio's own processing, any value their API
    parameter cannot take (`value_refusal`: a missing value, wrong type, NaN, infinity, out of range, not a
    choice, over-long text, a file that was not uploaded), each in one sentence naming the parameter, so no
    handler starts on it and nothing is half-made. The file sentence is the same for any path, so it tells
    nothing about the server's file system."""

    def validate_inputs(self, block_fn, inputs: list[Any]):
        names = field_names(block_fn, len(block_fn.inputs))
        public = block_fn.api_visibility != "private"
        # (a private event's widget may have had its range changed for this page, e.g. the frame scrubber's,
        # and takes values as typed; Gradio checks those against the page's own range)
        if public and len(inputs) < len(block_fn.inputs):
            # the API's parameters (what a client sends; Gradio fills in the page's State only for a full call)
            parameters = [n for c, n in zip(block_fn.inputs, names) if not c.skip_api]
            if len(inputs) < len(parameters):
                raise user_error(
                    f"{parameters[len(inputs)]} is missing: the call gave {len(inputs)} of the {len(parameters)} values"
                )
        super().validate_inputs(block_fn, inputs)
        options = _options_by_name() if public else {}
        for component, value, name in zip(block_fn.inputs, inputs, names):
            if component.skip_api:
                continue
            name = name or getattr(component, "label", None) or "a field"
            if public:
                message = value_refusal(name, component, value, options.get(name))
                if message:
                    raise user_error(message)
            if self.has_launched and server_paths(value):
                raise user_error(
                    f"{name} must be a file uploaded to this app (gradio_client: handle_file), not a path on the server"
                )
