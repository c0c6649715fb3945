"""The Style sessions tab: a clip, its cached inversion, and a gallery of edits (style presets in one click)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from editing.errors import Cancelled, EditingError
from editing.memo import remembering
from editing.pipeline import ProgressFn
from editing.sessions import PRESETS, Entry, Session, SessionStore, check_name, is_owner_key, new_owner_key, preset_prompt

from . import hints, widgets
from .backend import Backend, CancelToken
from .clip_upload import ClipUpload
from .edit_tab import GPU_QUEUE, OUTPUT_FORMATS, gradio_progress, request_from, stopped_text
from .forms import one_sentence_errors
from .gpu import gpu, on_spaces

# Where the browser keeps its owner key (localStorage). The value is the secret; this key only names and
# obfuscates the slot (Gradio sends it to the page), and must stay the same across restarts.
OWNER_STORAGE_KEY = "video-edit-session-owner"
OWNER_STORAGE_SECRET = "video-edit-session-owner-v1"


def run_in_session(
    store: SessionStore,
    backend: Backend,
    name: str,
    prompts: list[tuple[str, str | None]],
    settings: dict[str, Any],
    progress: ProgressFn | None = None,
    token: CancelToken | None = None,
) -> list[Entry]:
    """Edit the session's clip once per (prompt, preset); each edit becomes a gallery entry, saved at once.

    The session's memo (Backend.session_memo) keeps the text encodings and condition maps between its
    edits, also across calls, so later prompts encode only their own text; the inversion comes from the cache."""
    session = store.open(name)
    if not prompts:
        raise EditingError("choose a style preset or type a prompt first")
    allowed = backend.checked(settings)  # the entry records the settings as given, not the server's paths
    memo = backend.session_memo(str(session.folder))
    made = []
    for number, (prompt, preset) in enumerate(prompts):
        entry_id, folder = store.new_entry_dir(session)
        try:
            request = request_from(allowed | {"video": str(session.source_path), "prompt": prompt}, str(folder), OUTPUT_FORMATS)
            with remembering(memo):
                outputs = backend.edit(request, _numbered(progress, number, len(prompts)), token)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        files = {suffix: Path(path).name for suffix, path in outputs.files.items()}
        made.append(store.add_entry(session, Entry(entry_id, prompt, dict(settings), files, outputs.details(), preset)))
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
        {
            "id": e.id,
            "prompt": e.prompt,
            "preset": e.preset,
            "inversion_cached": e.result.get("inversion_cached"),
            "settings": e.settings,
        }
        for e in session.entries
    ]


def handed_out(paths: list[str], folder: str) -> list[str]:
    """Copies of session files in a fresh run folder (linked where the disk allows), for Gradio to serve.

    The sessions folder is never in `allowed_paths`: Gradio serves only its own cache, under a hash of
    each file's content and the server's secret seed, so session files cannot be fetched by path, and
    its cache serves nothing as HTML, SVG or script."""
    copies = []
    for number, path in enumerate(paths):
        target = Path(folder) / f"{number:03d}-{Path(path).name}"
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        copies.append(str(target))
    return copies


class SessionHandlers:
    """The tab's handlers over one session store; each sees only the sessions of the caller's owner key.

    The key is a random secret: the browser keeps it in gr.BrowserState (localStorage) and the page's
    load event puts it in a gr.State; an API client that has none gets a fresh one on its first call,
    kept in its connection's gr.State. The server stores only its hash (`SessionStore.owned`)."""

    def __init__(self, store: SessionStore, backend: Backend):
        self.store, self.backend = store, backend

    @staticmethod
    def owner_of(owner: str | None) -> str:
        """The caller's owner key; a fresh one when it has none (or sent something that is not a key)."""
        return owner if is_owner_key(owner) else new_owner_key()

    def mine(self, owner: str) -> SessionStore:
        return self.store.owned(owner)

    def names(self, owner: str | None) -> list[str]:
        return self.mine(owner).names() if is_owner_key(owner) else []

    def show(self, owner: str, name: str | None) -> tuple:
        """(open session, owner, status line, gallery, entries, saved-sessions dropdown update)."""
        store = self.mine(owner)
        if not name:
            return None, owner, "No session open.", [], [], gr.update(choices=store.names())
        session = store.open(name)
        about = f" ({session.subject})" if session.subject else ""
        count = len(session.entries)
        text = f"Session **{session.name}**: {count} edit{'' if count == 1 else 's'}{about}"
        items = gallery(session)
        served = handed_out([path for path, _ in items], self.backend.output_dir()) if items else []
        shown = [(copy, caption) for copy, (_, caption) in zip(served, items)]
        return name, owner, text, shown, summary(session), gr.update(choices=store.names(), value=name)

    def on_load(self, key: str | None) -> tuple:
        """Page load: the browser's owner key (a new one the first time), kept in State and BrowserState, and its
        sessions. Served on this machine only, sessions made before owners existed become this browser's."""
        owner = self.owner_of(key)
        if not self.backend.policy.public:
            self.store.adopt_unowned(self.mine(owner))
        return owner, owner, gr.update(choices=self.mine(owner).names(), value=None)

    @one_sentence_errors
    def create(self, name: str, video: str | None, subject: str | None, owner: str | None = None) -> tuple:
        owner = self.owner_of(owner)
        if not video:
            raise EditingError("upload the session's source clip first")
        return self.show(owner, self.mine(owner).create(name, video, subject or "").name)

    @one_sentence_errors
    def open(self, name: str | None, owner: str | None = None) -> tuple:
        owner = self.owner_of(owner)
        if not name:
            raise EditingError("name must name a saved session to open")
        return self.show(owner, self.mine(owner).open(name).name)

    @one_sentence_errors
    def export(self, name: str | None, owner: str | None = None) -> str:
        if not name or not is_owner_key(owner):
            raise EditingError("open a session to export it")
        folder = self.backend.output_dir()  # removed with other old runs
        return str(self.mine(owner).export(name, Path(folder) / f"{check_name(name)}.zip"))

    @one_sentence_errors
    def import_zip(self, file: str | None, name: str | None, owner: str | None = None) -> tuple:
        owner = self.owner_of(owner)
        if not file:
            raise EditingError("choose a session zip to import")
        return self.show(owner, self.mine(owner).import_zip(file, (name or "").strip() or None).name)

    def edit_with(self, prompts_of: Callable[[Session, list[str], str], list[tuple[str, str | None]]]):
        """A handler editing the open session once per prompt that `prompts_of(session, presets, prompt)` gives."""

        @one_sentence_errors
        def run(values: dict[str, Any], progress) -> tuple:
            name, owner, token = values.pop("session"), values.pop("owner", None), values.pop("token")
            if not name or not is_owner_key(owner):
                raise EditingError("create or open a session first")
            store = self.mine(owner)
            prompts = prompts_of(store.open(name), values.pop("presets"), values.pop("prompt"))
            token = token or CancelToken()
            before = len(store.open(name).entries)
            try:
                run_in_session(store, self.backend, name, prompts, values, gradio_progress(progress), token)
            except Cancelled:
                which = f"edit {len(store.open(name).entries) - before + 1}/{len(prompts)}: "
                if token.reached is not None:
                    token.reached = (which + token.reached[0], *token.reached[1:])
                message = stopped_text(token, kept="the edits made before it are kept")
                token.reset()
                view = self.show(owner, name)
                return (*view[:2], f"{view[2]}. {message}", *view[3:])
            return self.show(owner, name)

        return run


def preset_prompts(session: Session, chosen: list[str] | None, text: str | None) -> list[tuple[str, str | None]]:
    """One prompt per ticked style preset, for the session's subject."""
    return [(preset_prompt(p, session.subject), p) for p in chosen or []]


def own_prompt(session: Session, chosen: list[str] | None, text: str | None) -> list[tuple[str, str | None]]:
    """The typed prompt, if any."""
    return [(text, None)] if (text or "").strip() else []


def _layout(default_model: str, backend: Backend) -> dict[str, Any]:
    """The tab's widgets by name; `settings` holds the edit settings by CLI option name."""
    ui: dict[str, Any] = {}
    with gr.Row():
        with gr.Column():
            with gr.Accordion("New session", open=True):
                ui["new_name"] = gr.Textbox(label="Session name", placeholder="skier-styles", elem_id="session-name")
                ui["upload"] = ClipUpload.create("session-")
                ui["new_video"] = ui["upload"].file
                ui["subject"] = gr.Textbox(label="Subject", placeholder="a man skiing (style prompts say '... of <subject>')")
                ui["create"] = gr.Button(
                    "Create session", interactive=False, elem_id="session-create"
                )  # once a readable clip is there
            with gr.Row():
                # Filled on page load with this browser's sessions only; any name may be typed (the
                # handler checks it against the caller's own sessions), so the page lists nobody else's.
                ui["saved"] = gr.Dropdown([], value=None, label="Saved sessions", allow_custom_value=True)
                ui["refresh"] = gr.Button("Refresh", size="sm")
                ui["open"] = gr.Button("Open", size="sm")
            ui["status"] = gr.Markdown("No session open.")
            settings = ui["settings"] = {"model": widgets.model_widget(default_model)}
            with gr.Accordion("Frames and sampler", open=False):
                settings |= widgets.frame_widgets(settings["model"], policy=backend.policy)
                settings |= widgets.sampler_widgets()
                settings["attention"] = hints.dropdown("attention", label="Cross-frame attention")
            photo = widgets.model_kind(default_model) == "photo"  # the presets are photo styles
            ui["presets"] = gr.CheckboxGroup(
                list(PRESETS),
                value=["watercolor"] if photo else [],
                label="Style presets",
                info=widgets.style_presets_info(default_model),
                elem_id="session-presets",
            )
            settings["model"].change(
                lambda spec: gr.update(info=widgets.style_presets_info(spec) or ""),
                settings["model"],
                ui["presets"],
                queue=False,
                api_visibility="private",
            )
            ui["run_presets"] = gr.Button(
                "Run selected styles", variant="primary", interactive=False, elem_id="session-run-presets"
            )  # once a session is open
            ui["prompt"] = gr.Textbox(label="Or your own prompt")
            with gr.Row():
                ui["run_prompt"] = gr.Button("Add edit", interactive=False, elem_id="session-run-prompt")
                ui["stop"] = gr.Button("Stop", variant="stop")
        with gr.Column():
            ui["gallery"] = gr.Gallery(label="Gallery (newest first)", columns=2, height=420)
            ui["entries"] = gr.JSON(label="Entries and their settings")
            with gr.Row():
                ui["export"] = gr.Button("Export session")
                ui["exported"] = gr.File(label="Session file (zip)")
            with gr.Row():
                ui["zip"] = gr.File(label="Import a session zip", file_types=[".zip"])
                ui["import_name"] = gr.Textbox(label="Import as (blank = its name)")
                ui["import"] = gr.Button("Import")
    return ui


def create_tab(backend: Backend, default_model: str, store: SessionStore | None = None) -> None:
    """Lay out the Style sessions tab and wire its events."""
    store = store or SessionStore()
    handlers = SessionHandlers(store, backend)
    current = gr.State(None)  # this user's open session name
    owner = gr.State(None)  # this user's owner key (from the browser's storage, or made on first use)
    remembered = gr.BrowserState(None, storage_key=OWNER_STORAGE_KEY, secret=OWNER_STORAGE_SECRET)
    token = gr.State(CancelToken())
    ui = _layout(default_model, backend)
    view = [current, owner, ui["status"], ui["gallery"], ui["entries"], ui["saved"]]
    root = gr.context.Context.root_block
    if root is not None:
        root.load(handlers.on_load, remembered, [owner, remembered, ui["saved"]], api_visibility="private")
    ui["create"].click(handlers.create, [ui["new_name"], ui["new_video"], ui["subject"], owner], view, api_name="create_session")
    ui["refresh"].click(lambda key: gr.update(choices=handlers.names(key)), owner, ui["saved"], api_visibility="private")
    ui["open"].click(handlers.open, [ui["saved"], owner], view, api_name="open_session")
    ui["export"].click(handlers.export, [current, owner], ui["exported"], api_name="export_session")
    ui["import"].click(handlers.import_zip, [ui["zip"], ui["import_name"], owner], view, api_name="import_session")

    ui["upload"].wire(ui["settings"], needs_clip=[ui["create"]])
    opened = [ui["run_presets"], ui["run_prompt"]]
    current.change(
        lambda name: [gr.update(interactive=bool(name))] * len(opened), current, opened, queue=False, api_visibility="private"
    )

    settings = list(ui["settings"])  # the options the layout gives widgets, in its order (schema names)
    names = ["session", "owner", "presets", "prompt", "token", *settings]
    inputs = [current, owner, ui["presets"], ui["prompt"], token, *ui["settings"].values()]
    defaults = widgets.initial_values(ui["settings"])

    def edit_event(button, prompts_of, api_name):
        handler = widgets.named_handler(gpu(handlers.edit_with(prompts_of)), names, defaults)
        cleared = button.click(
            CancelToken.reset, token, None, queue=False, api_visibility="private"
        )  # a Stop pressed while queued counts
        return cleared.then(
            handler,
            inputs,
            view,
            api_name=api_name,
            concurrency_id=GPU_QUEUE,
            concurrency_limit=backend.concurrency,
            show_progress_on=ui["gallery"],
        )

    events = [
        edit_event(ui["run_presets"], preset_prompts, "session_presets"),
        edit_event(ui["run_prompt"], own_prompt, "session_edit"),
    ]
    # Stop sets the token: the running edit stops at its next step and the status line says where; on a
    # Space (the handler runs in another process) the events are cancelled instead.
    ui["stop"].click(
        CancelToken.cancel, token, None, cancels=events if on_spaces() else [], queue=False, api_visibility="private"
    )
