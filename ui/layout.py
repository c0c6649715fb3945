"""Assemble the page from its tabs; every tab gets the same backend."""

from __future__ import annotations

import gradio as gr

from editing.models import DEFAULT_MODEL

from . import edit_tab, live_tab, oneshot_tab, region_tab, session_tab
from .api_checks import CheckedBlocks
from .backend import Backend, EditFn
from .serving import LOCAL, ServePolicy

QUEUE_SIZE = 16  # jobs waiting for the GPU beyond this are refused with a message
CACHE_MAX_AGE = 3600  # seconds Gradio keeps the files it served (checked every hour)


def build_demo(
    edit_fn: EditFn | None = None,
    default_model: str = DEFAULT_MODEL,
    backend: Backend | None = None,
    policy: ServePolicy = LOCAL,
    notice: str | None = None,
) -> gr.Blocks:
    """The whole app; `edit_fn` (or a whole `backend`) replaces the library call in tests; `policy` says what
    the forms accept when the app is served beyond this machine (app.py builds it from the launch options);
    `notice` is a line shown above the tabs (why the app starts on another model, ui.startup)."""
    backend = backend or (Backend(edit_fn, policy=policy) if edit_fn else Backend(policy=policy))
    with CheckedBlocks(title="Text-driven video editing", delete_cache=(CACHE_MAX_AGE, CACHE_MAX_AGE)) as demo:
        gr.Markdown(
            "## Edit a video with text\nUpload a clip or pick an example, describe the result, preview the first frame, then edit the clip."
        )
        if notice:
            gr.Markdown(f"**{notice}**", elem_id="startup-notice")
        with gr.Tab("Edit"):
            edit_tab.create_tab(backend, default_model)
        with gr.Tab("Region"):
            region_tab.create_tab(backend, default_model)
        with gr.Tab("Style sessions"):
            session_tab.create_tab(backend, default_model)
        with gr.Tab("One-shot tuning"):
            oneshot_tab.create_tab(backend, default_model)
        with gr.Tab("Live"):
            live_tab.create_tab(backend, default_model)
    demo.queue(max_size=QUEUE_SIZE)
    return demo
