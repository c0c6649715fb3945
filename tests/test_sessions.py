"""Style sessions: saved on disk, resumed, exported to one zip and imported; names stay inside the root."""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile

import pytest
import torch

from editing.errors import ConfigError, EditingError
from editing.sessions import PRESETS, SessionStore, check_name, preset_prompt

SETTINGS = {
    "model": "tiny",
    "frames": 2,
    "size": 64,
    "steps": 3,
    "strength": 0.5,
    "guidance": 1.0,
    "seed": 1,
    "keyframes": "off",
}  # every frame: these tests count inversions and steps


@pytest.mark.parametrize(
    "name", ["../escape", "..", "/etc", "a/b", "a\\b", ".hidden", "", "   ", "x" * 65, "ok.", "nul\0byte", "~root"]
)
def test_names_that_could_escape_or_hide_are_refused(tmp_path, name):
    store = SessionStore(tmp_path / "sessions")
    with pytest.raises(ConfigError, match="session name"):
        store.folder(name)
    with pytest.raises(ConfigError):
        store.create(name, __file__)
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


def test_plain_names_stay_directly_under_the_root(tmp_path):
    store = SessionStore(tmp_path)
    for name in ("skier", "Skier styles 2", "car_turn-v1.2"):
        assert check_name(name) == name and store.folder(name).parent == tmp_path.resolve()


def test_presets_make_prompts_for_the_subject():
    assert {"watercolor", "anime", "oil painting", "pixel art", "pencil sketch"} <= set(PRESETS)
    assert preset_prompt("watercolor", "a man skiing") == f"{PRESETS['watercolor']} of a man skiing"
    assert preset_prompt("anime") == PRESETS["anime"]
    with pytest.raises(ConfigError, match="unknown style preset"):
        preset_prompt("cubism")


@pytest.fixture(scope="module")
def edited_session(tmp_path_factory, skiing):
    """A session on a real clip with two preset edits and one own prompt, made with `tiny`."""
    from ui.backend import Backend
    from ui.session_tab import run_in_session

    root = tmp_path_factory.mktemp("sessions")
    store = SessionStore(root)
    store.create("skier", skiing, subject="a man skiing")
    stages: list[list[str]] = []

    def recorder(stage, done, total):
        number = int(stage.split()[1].split("/")[0])
        while len(stages) < number:
            stages.append([])
        stages[number - 1].append(stage.split(": ", 1)[1])

    prompts = [(preset_prompt(p, "a man skiing"), p) for p in ("watercolor", "pixel art")]
    entries = run_in_session(store, Backend(), "skier", prompts, SETTINGS, recorder)
    entries += run_in_session(store, Backend(), "skier", [("a robot skiing", None)], SETTINGS | {"seed": 2})
    return root, entries, stages


def test_each_preset_is_its_own_entry_and_later_prompts_reuse_the_inversion(edited_session):
    root, entries, stages = edited_session
    assert [e.preset for e in entries] == ["watercolor", "pixel art", None]
    assert len({e.id for e in entries}) == 3
    assert "invert" not in stages[1] and "denoise" in stages[1]  # the second prompt skipped the inversion
    assert entries[1].result["inversion_cached"] and entries[2].result["inversion_cached"]
    session = SessionStore(root).open("skier")
    for entry in session.entries:
        assert {s: session.file(entry, s).is_file() for s in (".mp4", ".gif", ".zip")} == {
            ".mp4": True,
            ".gif": True,
            ".zip": True,
        }


def test_sessions_resume_after_a_restart(edited_session):
    root, entries, _ = edited_session
    reopened = SessionStore(root).open("skier")  # a new store, as after restarting the app
    assert [(e.id, e.prompt, e.settings) for e in reopened.entries] == [(e.id, e.prompt, e.settings) for e in entries]
    assert reopened.subject == "a man skiing" and reopened.source_path.is_file()
    assert "skier" in SessionStore(root).names()


def test_export_then_import_gives_the_same_session(edited_session, tmp_path):
    from ui.session_tab import gallery

    root, _, _ = edited_session
    store = SessionStore(root)
    exported = store.export("skier", tmp_path / "skier.zip")
    other = SessionStore(tmp_path / "elsewhere")
    imported = other.import_zip(exported)
    original = store.open("skier")
    assert imported.name == "skier" and imported.folder.parent == (tmp_path / "elsewhere").resolve()
    assert [e.prompt for e in imported.entries] == [e.prompt for e in original.entries]
    for a, b in zip(original.entries, imported.entries):
        assert original.file(a, ".mp4").read_bytes() == imported.file(b, ".mp4").read_bytes()
    assert imported.source_path.read_bytes() == original.source_path.read_bytes()
    assert len(gallery(imported)) == 3
    with pytest.raises(ConfigError, match="exists already"):
        other.import_zip(exported)
    assert other.import_zip(exported, name="copy").name == "copy"


def _evil_export(path, manifest, members):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("session.json", json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("manifest", "members", "message"),
    [
        ({"name": "../../outside", "source": "source.mp4"}, {"source.mp4": b"x"}, "session name"),
        ({"name": "ok", "source": "../source.mp4"}, {"../source.mp4": b"x"}, "not a plain file name"),
        (
            {"name": "ok", "source": "source.mp4", "entries": [{"id": "..", "files": {".mp4": "a.mp4"}}]},
            {"source.mp4": b"x"},
            "not a plain file name",
        ),
        (
            {"name": "ok", "source": "source.mp4", "entries": [{"id": "1", "files": {".mp4": "/etc/passwd"}}]},
            {"source.mp4": b"x"},
            "not a plain file name",
        ),
        ({"name": "ok", "source": "source.mp4"}, {}, "lacks source.mp4"),
        ({"name": "ok", "source": "source.mp4", "entries": ["001"]}, {"source.mp4": b"x"}, "unreadable session.json"),
        ({"name": "ok", "source": "source.mp4", "entries": {"id": "1"}}, {"source.mp4": b"x"}, "unreadable session.json"),
        (
            {"name": "ok", "source": "source.mp4", "entries": [{"id": "1", "files": {}}]},
            {"source.mp4": b"x"},
            "unreadable session.json",
        ),
    ],
)
def test_imports_cannot_write_outside_the_root(tmp_path, manifest, members, message):
    root = tmp_path / "root" / "sessions"
    archive = _evil_export(tmp_path / "evil.zip", manifest, members)
    with pytest.raises(EditingError, match=message):
        SessionStore(root).import_zip(archive)
    assert [p.name for p in tmp_path.rglob("*") if not p.is_dir()] == ["evil.zip"]  # nothing unpacked anywhere
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize("failing", ["copy2", "save"])
def test_a_failed_create_leaves_no_folder_blocking_the_name(tmp_path, car, monkeypatch, failing):
    import editing.sessions

    def fail(*args, **kwargs):
        raise OSError("disk full")

    store = SessionStore(tmp_path)
    target = editing.sessions.shutil if failing == "copy2" else store
    with monkeypatch.context() as patch:
        patch.setattr(target, failing, fail)
        with pytest.raises(OSError, match="disk full"):
            store.create("car", car)
    assert not store.folder("car").exists()
    assert store.open(store.create("car", car).name).source_path.is_file()


def test_a_non_zip_is_refused(tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(EditingError, match="not a session export"):
        SessionStore(tmp_path / "s").import_zip(text)


def test_a_failed_edit_leaves_no_entry(tmp_path, car):
    from ui.backend import Backend
    from ui.session_tab import run_in_session

    store = SessionStore(tmp_path)
    store.create("car", car)
    with pytest.raises(EditingError, match="prompt must not be empty"):
        run_in_session(store, Backend(), "car", [("", None)], SETTINGS)
    session = store.open("car")
    assert session.entries == [] and not list((session.folder / "entries").iterdir())


def test_the_tab_shows_session_mistakes_as_one_sentence(tmp_path, car):
    import gradio as gr

    from ui.backend import Backend
    from ui.session_tab import SessionHandlers

    handlers = SessionHandlers(SessionStore(tmp_path), Backend())
    for call, message in [
        (lambda: handlers.create("../up", str(car), ""), "session name"),
        (lambda: handlers.create("ok", None, ""), "upload the session's source clip"),
        (lambda: handlers.open("missing"), "no session named 'missing'"),
        (lambda: handlers.export(None), "open a session"),
        (lambda: handlers.edit_with(lambda *a: [])({"session": None, "token": None}, None), "create or open a session"),
    ]:
        with pytest.raises(gr.Error, match=message) as caught:
            call()
        assert "\n" not in caught.value.message
    name, _owner, status, *_ = handlers.create("ok", str(car), "a car")
    assert name == "ok" and "0 edits" in status and not list(tmp_path.rglob("up*")) and not (tmp_path.parent / "up").exists()


def test_stop_during_a_session_edit_says_where_it_stopped_and_keeps_the_edits_before_it(tmp_path, car):
    from editing.pipeline import edit_video
    from ui.backend import Backend, CancelToken
    from ui.session_tab import SessionHandlers, preset_prompts

    token, calls = CancelToken(), []

    def second_edit_stopped(request, progress):
        calls.append(request)

        def report(stage, done, total):
            if len(calls) == 2 and stage.endswith("denoise") and done == 1:
                token.cancel()  # what the Stop button does
            progress(stage, done, total)

        return edit_video(request, report)

    handlers = SessionHandlers(SessionStore(tmp_path), Backend(second_edit_stopped))
    name, owner, *_ = handlers.create("car", str(car), "a car")
    values = {"session": name, "owner": owner, "presets": ["watercolor", "anime"], "prompt": "", "token": token} | SETTINGS
    _, _, status, gallery, entries, _ = handlers.edit_with(preset_prompts)(values, None)
    assert status.startswith("Session **car**: 1 edit ") and len(gallery) == 1 and len(entries) == 1
    assert (
        "Stopped at step 1/" in status
        and "of edit 2/2: editing" in status
        and status.endswith("the edits made before it are kept.")
    )
    assert not token.cancelled  # the next run starts clear


@contextlib.contextmanager
def text_encoder_batches():
    """The number of prompts in each CLIP text-encoder forward made inside the block (a global module
    pre-hook, removed in `finally`)."""
    sizes = []

    def on_forward(module, args):
        if type(module).__name__ == "CLIPTextModel":
            sizes.append(args[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(on_forward)
    try:
        yield sizes
    finally:
        handle.remove()


def test_a_sessions_second_prompt_encodes_only_its_own_text_and_no_condition_map(tmp_path, car, monkeypatch):
    """The session's memo keeps the negative and inversion prompts' encodings and the canny maps: the second
    prompt encodes one text and extracts nothing, even with the on-disk condition cache emptied. Control: the
    same edit outside the session encodes the negative prompt again and extracts the maps again."""
    import editing.control as control
    from ui.backend import Backend
    from ui.edit_tab import OUTPUT_FORMATS, request_from
    from ui.session_tab import run_in_session

    monkeypatch.setenv("EDITING_CACHE_DIR", str(tmp_path / "cache"))
    extracted = []
    extract = control.extract_conditions
    monkeypatch.setattr(
        control, "extract_conditions", lambda kind, frames, **kw: extracted.append(kind) or extract(kind, frames, **kw)
    )
    store, backend = SessionStore(tmp_path / "sessions"), Backend()
    store.create("car", car, subject="a car")
    settings = SETTINGS | {"guidance": 5.0, "control_kinds": ["canny"], "control_scale": 0.5}
    with text_encoder_batches() as first:
        run_in_session(store, backend, "car", [("a red car", None)], settings)
    assert first == [2] and extracted == ["canny"]  # negative + prompt; the inversion prompt ("", as the negative) from the memo
    shutil.rmtree(tmp_path / "cache" / "conditions")
    with text_encoder_batches() as second:
        (entry,) = run_in_session(store, backend, "car", [("a blue car", None)], settings)
    assert second == [1] and extracted == ["canny"] and entry.result["inversion_cached"]
    request = request_from(
        settings | {"video": str(store.open("car").source_path), "prompt": "a green car"}, str(tmp_path / "out"), OUTPUT_FORMATS
    )
    with text_encoder_batches() as outside:
        backend.edit(request, lambda *a: None)
    assert outside == [2] and extracted == ["canny", "canny"]


def test_a_sessions_second_prompt_computes_no_flow_again(tmp_path, car, monkeypatch):
    """Keyframes then propagation read the source's flows; the session's memo keeps them, so the second
    prompt computes none. Control: the same edit outside the session computes them again."""
    import editing.keyframes
    from ui.backend import Backend
    from ui.edit_tab import OUTPUT_FORMATS, request_from
    from ui.session_tab import run_in_session

    monkeypatch.setenv("EDITING_CACHE_DIR", str(tmp_path / "cache"))
    made = []
    compute = editing.keyframes._clip_flows
    monkeypatch.setattr(editing.keyframes, "_clip_flows", lambda frames: made.append(len(frames)) or compute(frames))
    store, backend = SessionStore(tmp_path / "sessions"), Backend()
    store.create("car", car, subject="a car")
    settings = SETTINGS | {"frames": 3, "keyframes": "2"}
    run_in_session(store, backend, "car", [("a red car", None)], settings)
    assert made == [3]
    run_in_session(store, backend, "car", [("a blue car", None)], settings)
    assert made == [3]
    request = request_from(
        settings | {"video": str(store.open("car").source_path), "prompt": "a green car"}, str(tmp_path / "out"), OUTPUT_FORMATS
    )
    backend.edit(request, lambda *a: None)
    assert made == [3, 3]
