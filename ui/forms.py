"""Widget values -> one validated EditRequest, through the same option mapping as `python -m editing edit`.

The form's field names are the CLI's option names (argparse `dest`s), so the app cannot drift from the
command line: defaults come from the parser, values are converted with the option's own type, and
`editing.cli.edit_request` builds and validates the request.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import gradio as gr

from editing.cli import build_parser, edit_request
from editing.errors import ConfigError, EditingError
from editing.pipeline import EditRequest

# Options the app never takes from a form: files and places are the app's business.
RESERVED = frozenset({"video", "out", "command", "debug", "json", "cache_dir", "control_video", "tuned"})
OUTPUT_FORMATS = (".mp4", ".gif", ".zip")


@functools.lru_cache(maxsize=None)
def _command_parser(command: str) -> argparse.ArgumentParser:
    """A sub-command's parser (`edit`, `tune`, ...)."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def _actions(command: str = "edit") -> dict[str, argparse.Action]:
    return {action.dest: action for action in _command_parser(command)._actions if action.dest != "help"}


def option_names(command: str = "edit") -> tuple[str, ...]:
    """Every option of the command a form may set."""
    return tuple(name for name in _actions(command) if name not in RESERVED)


def default_values(command: str = "edit") -> dict[str, Any]:
    """The CLI's defaults for every form field."""
    return {name: action.default for name, action in _actions(command).items() if name not in RESERVED}


def _convert(action: argparse.Action, name: str, value: Any) -> Any:
    """A widget value in the type the CLI option takes (None and lists pass through)."""
    if value is None or isinstance(value, (list, tuple, bool)) or action.type is None:
        return list(value) if isinstance(value, tuple) else value
    if action.type is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name.replace('_', ' ')} must be a whole number, got {value}")
    try:
        return action.type(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name.replace('_', ' ')} must be a number, got {value!r}") from None


def command_namespace(command: str, values: Mapping[str, Any], video: str, output: str) -> argparse.Namespace:
    """The parsed CLI arguments of `command` these form values stand for."""
    actions = _actions(command)
    unknown = sorted(set(values) - set(option_names(command)))
    if unknown:
        raise ConfigError(f"unknown form fields: {', '.join(unknown)}")
    args = argparse.Namespace(**{name: action.default for name, action in actions.items()})
    args.video, args.out, args.command = video, output, command
    for name, value in values.items():
        if value is not None:  # a blank widget keeps the CLI's default
            setattr(args, name, _convert(actions[name], name, value))
    if getattr(args, "end", None) is not None and args.end <= 0:
        args.end = None  # an empty or zero end means "to the end of the clip"
    return args


def edit_namespace(values: Mapping[str, Any], video: str, output: str) -> argparse.Namespace:
    """The parsed `edit` arguments these form values stand for."""
    return command_namespace("edit", values, video, output)


def make_request(
    values: Mapping[str, Any], video: str | None, output_dir: str, formats: tuple[str, ...] = (".mp4",), tuned: str | None = None
) -> EditRequest:
    """One validated EditRequest writing `formats` into `output_dir`, with the app's tuned weights if any (raises EditingError)."""
    if not video:
        raise EditingError("upload a video or pick an example first")
    if not formats or any(f not in OUTPUT_FORMATS for f in formats):
        raise ConfigError(f"output formats must be among {', '.join(OUTPUT_FORMATS)}, got {formats}")
    stem = Path(output_dir) / f"{Path(video).stem}-edited"
    outputs = [str(stem.with_suffix(suffix)) for suffix in formats]
    args = edit_namespace(values, video, outputs[0])
    args.tuned = tuned  # a file the app made, never a path from the form
    request = edit_request(args)
    return dataclasses.replace(request, also_write=tuple(outputs[1:]))


def as_gradio_error(exc: Exception) -> gr.Error:
    """One sentence for the user: the library's own message, or the failure's type and first line."""
    if isinstance(exc, EditingError):
        return gr.Error(str(exc))
    text = " ".join(str(exc).split())[:200]
    return gr.Error(f"the edit failed: {type(exc).__name__}: {text}" if text else f"the edit failed: {type(exc).__name__}")


def option_values(widgets: Mapping[str, Any]) -> dict[str, Any]:
    """CLI option values from widget values: ControlNet checkboxes and one scale, smoothing checkboxes, blanks."""
    values = dict(widgets)
    kinds, scale = values.pop("control_kinds", None) or [], values.pop("control_scale", 1.0)
    if kinds:
        values["control"] = [f"{kind}:{float(scale):g}" for kind in kinds]
    if isinstance(values.get("smooth"), (list, tuple)):
        values["smooth"] = ",".join(values["smooth"])
    if "source_prompt" in values and not (values["source_prompt"] or "").strip():
        values["source_prompt"] = None  # blank = no attention editing, as when --source-prompt is left out
    if "model" in values:
        values["model"] = (values["model"] or "").strip() or None
        if values["model"] is None:
            raise ConfigError("choose a model: a Hub id, a local folder or file, or a built-in one")
    return values


def make_tune_request(values: Mapping[str, Any], video: str | None):
    """One validated TuneRequest from the form's values; the weights stay in the tuning cache."""
    from editing.cli import tune_request

    if not video:
        raise EditingError("upload a video or pick an example first")
    return tune_request(command_namespace("tune", values, video, None))


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
