"""The Style sessions tab: a clip, its cached inversion, and a gallery of edits (style presets in one click)."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from editing.config import ATTENTION_MODES
from editing.errors import EditingError
from editing.pipeline import ProgressFn
from editing.sessions import PRESETS, Entry, Session, SessionStore, preset_prompt

from . import widgets
from .backend import Backend, CancelToken
from .edit_tab import GPU_QUEUE, OUTPUT_FORMATS, gradio_progress, request_from
from .forms import as_gradio_error, default_values
from .gpu import gpu

SETTINGS = ["model", "start", "end", "stride", "frames", "size", "steps", "guidance", "strength", "seed", "attention"]


def run_in_session(
    store: SessionStore,
    backend: Backend,
    name: str,
    prompts: list[tuple[str, str | None]],
    settings: dict[str, Any],
    progress: ProgressFn | None = None,
    token: CancelToken | None = None,
) -> list[Entry]:
    """Edit the session's clip once per (prompt, preset); each edit becomes a gallery entry, saved at once."""
    session = store.open(name)
    if not prompts:
        raise EditingError("choose a style preset or type a prompt first")
    made = []
    for number, (prompt, preset) in enumerate(prompts):
        entry_id, folder = store.new_entry_dir(session)
        try:
            request = request_from(settings | {"video": str(session.source_path), "prompt": prompt}, str(folder), OUTPUT_FORMATS)
            outputs = backend.edit(request, _numbered(progress, number, len(prompts)), token)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        files = {suffix: Path(path).name for suffix, path in outputs.files.items()}
        made.append(store.add_entry(session, Entry(entry_id, prompt, dict(settings), files, outputs.result.to_dict(), preset)))
    return made


def _numbered(progress: ProgressFn | None, number: int, count: int) -> ProgressFn:
    """Stage names prefixed with which of several edits is running."""

    def stage(name: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"edit {number + 1}/{count}: {name}", done, total)

    return stage


def gallery(session: Session) -> list[tuple[str, str]]:
    """(video, caption) for each entry, newest first."""
    items = []
    for entry in reversed(session.entries):
        video = session.file(entry, ".mp4") or session.file(entry, ".gif")
        if video is not None:
            items.append((str(video), f"{entry.preset or 'prompt'}: {entry.prompt}"))
    return items


def summary(session: Session) -> list[dict[str, Any]]:
    """Each entry's prompt, settings and whether its inversion came from the cache."""
    return [
        {"id": e.id, "prompt": e.prompt, "preset": e.preset, "inversion_cached": e.result.get("inversion_cached"), "settings": e.settings}
        for e in session.entries
    ]


def create_tab(backend: Backend, default_model: str, store: SessionStore | None = None) -> None:
    """Lay out the Style sessions tab and wire its events."""
    store = store or SessionStore()
    current = gr.State(None)  # this user's open session name
    token = gr.State(CancelToken())
    with gr.Row():
        with gr.Column():
            with gr.Accordion("New session", open=True):
                new_name = gr.Textbox(label="Session name", placeholder="skier-styles")
                new_video = gr.Video(label="Source clip", sources=["upload"])
                subject = gr.Textbox(label="Subject", placeholder="a man skiing (style prompts say '... of <subject>')")
                create = gr.Button("Create session")
            with gr.Row():
                saved = gr.Dropdown(store.names(), label="Saved sessions", allow_custom_value=False)
                refresh = gr.Button("Refresh", size="sm")
                open_button = gr.Button("Open", size="sm")
            status = gr.Markdown("No session open.")
            settings: dict[str, gr.components.Component] = {"model": widgets.model_widget(default_model)}
            with gr.Accordion("Frames and sampler", open=False):
                settings |= widgets.frame_widgets()
                settings |= widgets.sampler_widgets()
                settings["attention"] = gr.Dropdown(list(ATTENTION_MODES), value=default_values()["attention"], label="Cross-frame attention")
            presets = gr.CheckboxGroup(list(PRESETS), value=["watercolor"], label="Style presets")
            run_presets = gr.Button("Run selected styles", variant="primary")
            prompt = gr.Textbox(label="Or your own prompt")
            with gr.Row():
                run_prompt = gr.Button("Add edit")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            shown = gr.Gallery(label="Gallery (newest first)", columns=2, height=420)
            entries = gr.JSON(label="Entries and their settings")
            with gr.Row():
                export = gr.Button("Export session")
                exported = gr.File(label="Session file (zip)")
            with gr.Row():
                upload = gr.File(label="Import a session zip", file_types=[".zip"])
                import_name = gr.Textbox(label="Import as (blank = its name)")
                import_button = gr.Button("Import")

    def show(name: str | None):
        if not name:
            return None, "No session open.", [], [], gr.update(choices=store.names())
        session = store.open(name)
        text = f"Session **{session.name}**: {len(session.entries)} edits of `{session.source}`" + (f" ({session.subject})" if session.subject else "")
        return name, text, gallery(session), summary(session), gr.update(choices=store.names(), value=name)

    view = [current, status, shown, entries, saved]

    def guarded(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                raise as_gradio_error(exc) from exc

        return run

    @guarded
    def create_session(name, video, about):
        if not video:
            raise EditingError("upload the session's source clip first")
        return show(store.create(name, video, about or "").name)

    @guarded
    def open_session(name):
        if not name:
            raise EditingError("choose a saved session to open")
        return show(store.open(name).name)

    def edit_with(prompts_of):
        @guarded
        def run(values: dict[str, Any], progress):
            name, tok = values.pop("session"), values.pop("token")
            if not name:
                raise EditingError("create or open a session first")
            prompts = prompts_of(store.open(name), values.pop("presets"), values.pop("prompt"))
            tok.reset()
            run_in_session(store, backend, name, prompts, values, gradio_progress(progress), tok)
            return show(name)

        return run

    def preset_prompts(session, chosen, text):
        return [(preset_prompt(p, session.subject), p) for p in chosen or []]

    def own_prompt(session, chosen, text):
        return [(text, None)] if (text or "").strip() else []

    @guarded
    def export_session(name):
        if not name:
            raise EditingError("open a session to export it")
        return str(store.export(name, Path(backend.output_dir()) / f"{name}.zip"))  # removed with other old runs

    @guarded
    def import_session(file, name):
        if not file:
            raise EditingError("choose a session zip to import")
        return show(store.import_zip(file, (name or "").strip() or None).name)

    create.click(create_session, [new_name, new_video, subject], view, api_name="create_session")
    refresh.click(lambda: gr.update(choices=store.names()), None, saved, api_visibility="private")
    open_button.click(open_session, saved, view, api_name="open_session")
    edit_names = ["session", "presets", "prompt", "token", *SETTINGS]
    edit_inputs = [current, presets, prompt, token, *(settings[n] for n in SETTINGS)]
    defaults = widgets.initial_values(settings)

    def edit_event(button, prompts_of, api_name):
        handler = widgets.named_handler(gpu(edit_with(prompts_of)), edit_names, defaults)
        return button.click(handler, edit_inputs, view, api_name=api_name, concurrency_id=GPU_QUEUE, concurrency_limit=1)

    events = [edit_event(run_presets, preset_prompts, "session_presets"), edit_event(run_prompt, own_prompt, "session_edit")]
    stop.click(CancelToken.cancel, token, None, cancels=events, queue=False, api_visibility="private")
    export.click(export_session, current, exported, api_name="export_session")
    import_button.click(import_session, [upload, import_name], view, api_name="import_session")
