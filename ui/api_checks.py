"""Refusals of API input that Gradio would otherwise answer before the app sees it, as one sentence naming
the field: a number outside its widget's range ("Value 100000 is greater than maximum value 64.") and a
server path given as a file (`{"error": null}`)."""

from __future__ import annotations

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


class CheckedBlocks(gr.Blocks):
    """gr.Blocks whose events refuse, before Gradio's own checks, a number outside its widget's range (in
    the events clients may call) and a file that was not uploaded, each with one sentence naming the API parameter. The file sentence is
    the same for any path, so it tells nothing about the server's file system."""

    def validate_inputs(self, block_fn, inputs: list[Any]):
        super().validate_inputs(block_fn, inputs)
        names = field_names(block_fn, len(block_fn.inputs))
        for component, value, name in zip(block_fn.inputs, inputs, names):
            name = name or getattr(component, "label", None) or "a field"
            if isinstance(component, (gr.Slider, gr.Number)) and block_fn.api_visibility != "private":
                # (a private event's widget may have had its range changed for this page, e.g. the frame
                # scrubber's; Gradio checks those against the page's own range)
                message = range_refusal(name, component, value)
                if message:
                    raise user_error(message)
            elif self.has_launched and server_paths(value):
                raise user_error(f"{name} must be a file uploaded to this app (gradio_client: handle_file), not a path on the server")
