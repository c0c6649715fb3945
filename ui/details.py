"""What the Details panel and the page say about a finished run beyond the library's result: which
ControlNet ran for each condition kind, and the run's warnings as toasts."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from editing.errors import EditingError
from editing.requests import EditRequest


def controlnet_names(request: EditRequest) -> dict[str, str]:
    """The ControlNet each ticked condition kind ran with (the one named for it, the model folder's own,
    `random` for a built-in random model, else the kind's default for SD-1.x), as a Hub id or a file name."""
    from editing.condition_kinds import get_condition_kind
    from editing.models import ModelSpec, read_manifest

    if not request.engine.controls:
        return {}
    try:
        spec = ModelSpec.parse(request.model)
        own = (read_manifest(spec.folder) or {}).get("controlnets", {}) if spec.folder is not None else {}
    except EditingError:
        spec, own = None, {}
    names = {}
    for control in request.engine.controls:
        if control.model:
            names[control.kind] = _shown(control.model)
        elif control.kind in own:
            names[control.kind] = (
                f"{Path(spec.source).name}/{own[control.kind]}"  # the model folder's own, e.g. shapes/controlnet-canny
            )
        elif spec is not None and spec.random_weights:
            names[control.kind] = "random (the built-in model's random ControlNet)"
        else:
            names[control.kind] = get_condition_kind(control.kind).default_controlnet("sd15")
    return names


def _shown(spec: str) -> str:
    """A ControlNet spec as the page may show it: a Hub id as it is, a local path by its name only."""
    text = str(spec)
    local = text.startswith(("/", ".", "~")) or Path(text).expanduser().exists()
    return Path(text).name if local else text


def warn(details: dict) -> None:
    """Each of the run's warnings (damaged audio left out, a prompt cut, ...) as a toast on the page."""
    for warning in details.get("warnings") or ():
        gr.Warning(str(warning))
