"""Form widgets from the option schema: each widget's start value, span and choices are the option's own
(`editing.requests.options`), except where the field's `app` metadata declares, with its reason, how the
app differs from the command line (a smaller size and fewer steps keep interactive edits short)."""

from __future__ import annotations

import math
import re
from typing import Any

import gradio as gr

from editing import requests

FLOAT_STEP = 0.05  # a float slider's step unless the field's hint gives one
_INTERVAL = re.compile(r"([\[(])\s*(-?inf|-?[\d.]+(?:e-?\d+)?)\s*,\s*(-?inf|-?[\d.]+(?:e-?\d+)?)\s*([\])])")
_MULTIPLE = re.compile(r"multiple of (\d+)")


def option(name: str, command: str = "edit") -> requests.Option:
    """The schema's option `name` of `command`."""
    for found in requests.options(command):
        if found.name == name:
            return found
    raise KeyError(f"{command} has no option {name!r}")


def on_form(found: requests.Option) -> bool:
    """Whether a form may set the option: not the clip (positional) and not one the hint keeps off forms."""
    return bool(found.flags) and found.app.get("form", True) is not False


def on_api(found: requests.Option) -> bool:
    """Whether the option is an /edit API parameter (a form option whose hint does not keep it off)."""
    return on_form(found) and found.app.get("api", True) is not False


def schema_default(found: requests.Option) -> Any:
    """The command line's default in option form; an option worked out when left out (size) gives its field's."""
    return found.field_default if found.resolve and found.default is None else found.default


def app_default(found: requests.Option) -> Any:
    """The widget's start value: the hint's "default" where the app differs, else the command line's."""
    return found.app.get("default", schema_default(found))


def bounds(found: requests.Option) -> tuple[float | None, float | None, float]:
    """(lowest, highest, step) a widget offers: the hint's span where given, else the schema's range (an
    open end moves in by one step; an unbounded one is None)."""
    step = found.app.get("step")
    if step is None:
        multiple = _MULTIPLE.search(found.range or "")
        step = int(multiple.group(1)) if multiple else (1 if found.type is int else FLOAT_STEP)
    low = high = None
    interval = _INTERVAL.search(found.range or "")
    if interval:
        opening, first, last, closing = interval.groups()
        low, high = float(first), float(last)
        low = None if math.isinf(low) else low + (step if opening == "(" else 0)
        high = None if math.isinf(high) else high - (step if closing == ")" else 0)
    low, high = found.app.get("min", low), found.app.get("max", high)
    cast = int if found.type is int else float
    return (None if low is None else cast(low)), (None if high is None else cast(high)), step


def slider(name: str, command: str = "edit", **kwargs) -> gr.Slider:
    """A slider over the option's span, starting at the app's default (a `value` in kwargs wins)."""
    found = option(name, command)
    low, high, step = bounds(found)
    if low is None or high is None:
        raise TypeError(f"{name}: a slider needs both ends; give the field an app hint with min and max")
    return gr.Slider(low, high, **({"value": app_default(found), "step": step} | kwargs))


def number(name: str, command: str = "edit", **kwargs) -> gr.Number:
    """A number box starting at the app's default (whole numbers for an int option); the request checks its range."""
    found = option(name, command)
    return gr.Number(**({"value": app_default(found), "precision": 0 if found.type is int else None} | kwargs))


def dropdown(name: str, command: str = "edit", **kwargs) -> gr.Dropdown:
    """A dropdown of the option's choices (read now, so a registered one is offered) at the app's default."""
    found = option(name, command)
    return gr.Dropdown(list(found.choice_values() or ()), **({"value": app_default(found)} | kwargs))


def differences(command: str = "edit") -> dict[str, tuple[Any, Any, str]]:
    """The options whose app default differs from the command line's: name -> (CLI default, app default, why)."""
    return {o.name: (schema_default(o), o.app["default"], o.app["why"]) for o in requests.options(command) if "default" in o.app}
