"""Calling the app's API endpoints in-process, as Gradio's /call route does (issue 32 items 6 and 7): one
launched app whose backend runs nothing once a request is validated, and one client's session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from pathlib import Path

ACCEPTED = "the request was accepted"  # what the accepting backend answers instead of running anything
SEEN: list = []  # what the accepting backends were asked to run (requests), in order


def kind(parameter: dict) -> str:
    """What the API info says a parameter takes: file, number, bool, list, json or text."""
    component = parameter["component"].lower()
    if component in ("file", "image", "video"):
        return "file"
    if component in ("number", "slider"):
        return "number"
    if component == "checkbox":
        return "bool"
    if component == "checkboxgroup":
        return "list"
    return "json" if component == "json" else "text"


def accepting_backend(root: Path, policy):
    """A Backend that answers ACCEPTED where it would edit, preview or tune, and keeps outputs in one folder."""
    from editing.errors import EditingError
    from ui.backend import Backend

    class Accepting(Backend):
        def _accepted(self, *args, **kwargs):
            SEEN.append(args)
            raise EditingError(ACCEPTED)

        edit = edit_keyframes = propagate = preview_first_frame = condition_previews = tune = _accepted

        def output_dir(self) -> str:
            return str(self.output_root)  # one folder, not one per call: tests look for files after each call

    (root / "outputs").mkdir(parents=True, exist_ok=True)
    return Accepting(output_root=root / "outputs", policy=policy)


@contextlib.contextmanager
def launched_app(root: Path, clip: Path, policy):
    """(demo, the clip as an uploaded file value, a client session) for an app on loopback with the
    accepting backend and `policy`, its sessions under `root`."""
    from gradio import processing_utils
    from gradio.state_holder import SessionState

    from ui import build_demo

    old = os.environ.get("EDITING_SESSIONS_DIR")
    os.environ["EDITING_SESSIONS_DIR"] = str(root / "sessions")
    demo = build_demo(default_model="tiny", backend=accepting_backend(root, policy))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    upload = Path(processing_utils.get_upload_folder()) / f"api-{port}" / clip.name
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip, upload)
    loop = asyncio.new_event_loop()
    try:
        yield (
            demo,
            {"path": str(upload), "meta": {"_type": "gradio.FileData"}, "orig_name": clip.name},
            (loop, SessionState(demo)),
        )
    finally:
        loop.close()
        demo.close()
        if old is None:
            os.environ.pop("EDITING_SESSIONS_DIR", None)
        else:
            os.environ["EDITING_SESSIONS_DIR"] = old


def endpoint_functions(demo) -> dict:
    return {f"/{fn.api_name}": fn for fn in demo.fns.values() if fn.api_name}


def base_values(parameters: list[dict], video: dict) -> list:
    """Valid values for an endpoint: its defaults, the uploaded clip for a required file or `video`, "probe" for required text."""
    base = [
        video
        if kind(p) == "file" and (p["parameter_name"] == "video" or not p["parameter_has_default"])
        else p.get("parameter_default")
        for p in parameters
    ]
    return [value if value is not None or p["parameter_has_default"] else "probe" for value, p in zip(base, parameters)]


def answer(demo, block_fn, data: list, session) -> str:
    """The error sentence an API call with `data` gets (what the queue sends as {"error": ...}), or "" when
    it runs; `session` is (an event loop, one client's SessionState), as Gradio's queue holds them."""
    import gradio as gr

    if len(data) == len([block for block in block_fn.inputs if not block.skip_api]):
        values = iter(data)  # as Gradio's /call route: the page's State slots filled in for a full call
        data = [None if block.skip_api else next(values) for block in block_fn.inputs]
    try:
        loop, state = session
        loop.run_until_complete(demo.process_api(block_fn, data, state=state))
    except gr.Error as exc:
        return exc.message
    except Exception as exc:  # what Gradio would answer with {"error": null} or "the upstream app has raised an exception"
        return f"{type(exc).__name__}: {exc}"
    return ""
