"""The Style sessions tab: a clip, its cached inversion, and a gallery of edits (style presets in one click)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from editing.requests import DEFAULT_ATTENTION
from editing.attention.modes import attention_mode_names
from editing.errors import EditingError
from editing.pipeline import ProgressFn
from editing.sessions import PRESETS, Entry, Session, SessionStore, preset_prompt

from . import widgets
from .backend import Backend, CancelToken
from .edit_tab import GPU_QUEUE, OUTPUT_FORMATS, gradio_progress, request_from
from .forms import default_values, one_sentence_errors
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


class SessionHandlers:
    """The tab's handlers over one session store; each returns the view of the user's open session."""

    def __init__(self, store: SessionStore, backend: Backend):
        self.store, self.backend = store, backend

    def show(self, name: str | None) -> tuple:
        """(open session, status line, gallery, entries, saved-sessions dropdown update)."""
        if not name:
            return None, "No session open.", [], [], gr.update(choices=self.store.names())
        session = self.store.open(name)
        about = f" ({session.subject})" if session.subject else ""
        text = f"Session **{session.name}**: {len(session.entries)} edits of `{session.source}`{about}"
        return name, text, gallery(session), summary(session), gr.update(choices=self.store.names(), value=name)

    @one_sentence_errors
    def create(self, name: str, video: str | None, subject: str | None) -> tuple:
        if not video:
            raise EditingError("upload the session's source clip first")
        return self.show(self.store.create(name, video, subject or "").name)

    @one_sentence_errors
    def open(self, name: str | None) -> tuple:
        if not name:
            raise EditingError("choose a saved session to open")
        return self.show(self.store.open(name).name)

    @one_sentence_errors
    def export(self, name: str | None) -> str:
        if not name:
            raise EditingError("open a session to export it")
        return str(self.store.export(name, Path(self.backend.output_dir()) / f"{name}.zip"))  # removed with other old runs

    @one_sentence_errors
    def import_zip(self, file: str | None, name: str | None) -> tuple:
        if not file:
            raise EditingError("choose a session zip to import")
        return self.show(self.store.import_zip(file, (name or "").strip() or None).name)

    def edit_with(self, prompts_of: Callable[[Session, list[str], str], list[tuple[str, str | None]]]):
        """A handler editing the open session once per prompt that `prompts_of(session, presets, prompt)` gives."""

        @one_sentence_errors
        def run(values: dict[str, Any], progress) -> tuple:
            name, token = values.pop("session"), values.pop("token")
            if not name:
                raise EditingError("create or open a session first")
            prompts = prompts_of(self.store.open(name), values.pop("presets"), values.pop("prompt"))
            token.reset()
            run_in_session(self.store, self.backend, name, prompts, values, gradio_progress(progress), token)
            return self.show(name)

        return run


def preset_prompts(session: Session, chosen: list[str] | None, text: str | None) -> list[tuple[str, str | None]]:
    """One prompt per ticked style preset, for the session's subject."""
    return [(preset_prompt(p, session.subject), p) for p in chosen or []]


def own_prompt(session: Session, chosen: list[str] | None, text: str | None) -> list[tuple[str, str | None]]:
    """The typed prompt, if any."""
    return [(text, None)] if (text or "").strip() else []


def _layout(default_model: str, store: SessionStore) -> dict[str, Any]:
    """The tab's widgets by name; `settings` holds the edit settings by CLI option name."""
    ui: dict[str, Any] = {}
    with gr.Row():
        with gr.Column():
            with gr.Accordion("New session", open=True):
                ui["new_name"] = gr.Textbox(label="Session name", placeholder="skier-styles")
                ui["new_video"] = gr.Video(label="Source clip", sources=["upload"])
                ui["subject"] = gr.Textbox(label="Subject", placeholder="a man skiing (style prompts say '... of <subject>')")
                ui["create"] = gr.Button("Create session")
            with gr.Row():
                ui["saved"] = gr.Dropdown(store.names(), label="Saved sessions", allow_custom_value=False)
                ui["refresh"] = gr.Button("Refresh", size="sm")
                ui["open"] = gr.Button("Open", size="sm")
            ui["status"] = gr.Markdown("No session open.")
            settings = ui["settings"] = {"model": widgets.model_widget(default_model)}
            with gr.Accordion("Frames and sampler", open=False):
                settings |= widgets.frame_widgets(settings["model"])
                settings |= widgets.sampler_widgets()
                settings["attention"] = gr.Dropdown(list(attention_mode_names()), value=default_values()["attention"] or DEFAULT_ATTENTION, label="Cross-frame attention")
            ui["presets"] = gr.CheckboxGroup(list(PRESETS), value=["watercolor"], label="Style presets")
            ui["run_presets"] = gr.Button("Run selected styles", variant="primary")
            ui["prompt"] = gr.Textbox(label="Or your own prompt")
            with gr.Row():
                ui["run_prompt"] = gr.Button("Add edit")
                ui["stop"] = gr.Button("Stop", variant="stop")
        with gr.Column():
            ui["gallery"] = gr.Gallery(label="Gallery (newest first)", columns=2, height=420)
            ui["entries"] = gr.JSON(label="Entries and their settings")
            with gr.Row():
                ui["export"] = gr.Button("Export session")
                ui["exported"] = gr.File(label="Session file (zip)")
            with gr.Row():
                ui["upload"] = gr.File(label="Import a session zip", file_types=[".zip"])
                ui["import_name"] = gr.Textbox(label="Import as (blank = its name)")
                ui["import"] = gr.Button("Import")
    return ui


def create_tab(backend: Backend, default_model: str, store: SessionStore | None = None) -> None:
    """Lay out the Style sessions tab and wire its events."""
    store = store or SessionStore()
    handlers = SessionHandlers(store, backend)
    current = gr.State(None)  # this user's open session name
    token = gr.State(CancelToken())
    ui = _layout(default_model, store)
    view = [current, ui["status"], ui["gallery"], ui["entries"], ui["saved"]]
    ui["create"].click(handlers.create, [ui["new_name"], ui["new_video"], ui["subject"]], view, api_name="create_session")
    ui["refresh"].click(lambda: gr.update(choices=store.names()), None, ui["saved"], api_visibility="private")
    ui["open"].click(handlers.open, ui["saved"], view, api_name="open_session")
    ui["export"].click(handlers.export, current, ui["exported"], api_name="export_session")
    ui["import"].click(handlers.import_zip, [ui["upload"], ui["import_name"]], view, api_name="import_session")

    names = ["session", "presets", "prompt", "token", *SETTINGS]
    inputs = [current, ui["presets"], ui["prompt"], token, *(ui["settings"][n] for n in SETTINGS)]
    defaults = widgets.initial_values(ui["settings"])

    def edit_event(button, prompts_of, api_name):
        handler = widgets.named_handler(gpu(handlers.edit_with(prompts_of)), names, defaults)
        return button.click(handler, inputs, view, api_name=api_name, concurrency_id=GPU_QUEUE, concurrency_limit=1)

    events = [edit_event(ui["run_presets"], preset_prompts, "session_presets"), edit_event(ui["run_prompt"], own_prompt, "session_edit")]
    ui["stop"].click(CancelToken.cancel, token, None, cancels=events, queue=False, api_visibility="private")
