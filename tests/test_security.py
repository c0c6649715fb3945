"""Security (issue 18): private sessions, no active content served, the Model field cannot probe the
server, no server paths shown, no pickled weights. Served tests run on loopback only."""

from __future__ import annotations

import json
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from editing.errors import ConfigError, EditingError
from editing.sessions import SessionStore

from .conftest import ROOT

HTML = "<!doctype html><html><body><script>document.title = 'pwned'</script></body></html>\n"
SVG = '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>\n'
SMALL = {"model": "tiny", "frames": 2, "size": 64, "steps": 1, "guidance": 1.0, "strength": 0.5}


def new_owner_key() -> str:
    from editing.sessions import new_owner_key

    return new_owner_key()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- defect 1: nothing active stored or served


@pytest.mark.parametrize(("name", "text"), [("page.html", HTML), ("page.mp4", HTML), ("image.svg", SVG)])
def test_a_session_clip_must_decode_as_a_video(tmp_path, name, text):
    upload = tmp_path / name
    upload.write_text(text)
    store = SessionStore(tmp_path / "sessions")
    with pytest.raises(EditingError, match="not a readable video|no video stream|corrupt"):
        store.create("evil", upload)
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").rglob("*"))


def test_a_session_clip_is_stored_under_a_name_the_store_chooses(tmp_path, car):
    odd = tmp_path / "clip.html"  # a real video, whatever it is called
    odd.write_bytes(car.read_bytes())
    session = SessionStore(tmp_path / "sessions").create("odd", odd)
    assert session.source == "source.mp4" and session.source_path.read_bytes() == car.read_bytes()


def _export(path: Path, manifest: dict, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("session.json", json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("source", "files", "message"),
    [
        ("source.html", {}, "not allowed"),
        ("source.svg", {}, "not allowed"),
        ("source.mp4", {".html": "x.html"}, "not allowed"),
        ("source.mp4", {".svg": "x.svg"}, "not allowed"),
        ("source.mp4", {".js": "x.js"}, "not allowed"),
        ("source.mp4", {".mp4": "fake.mp4"}, "not a readable video|no video stream|corrupt"),
        ("source.mp4", {".png": "fake.png"}, "not a PNG"),
        ("source.mp4", {".zip": "fake.zip"}, "not a zip"),
        ("source.mp4", {".json": "fake.json"}, "not JSON"),
    ],
)
def test_imports_hold_only_the_kinds_of_file_the_app_writes(tmp_path, car, source, files, message):
    members = {source: car.read_bytes() if source.endswith(".mp4") else SVG.encode()}
    members |= {f"entries/001-abc/{name}": HTML.encode() for name in files.values()}
    manifest = {"name": "evil", "source": source, "entries": [{"id": "001-abc", "prompt": "p", "settings": {}, "files": files}]}
    archive = _export(tmp_path / "evil.zip", manifest, members)
    root = tmp_path / "sessions"
    with pytest.raises(EditingError, match=message):
        SessionStore(root).import_zip(archive)
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]  # nothing kept


def test_a_fake_video_inside_an_import_is_refused_before_anything_is_kept(tmp_path, car):
    """An HTML page named source.mp4 inside an export: the unpacked source must decode."""
    archive = _export(tmp_path / "evil.zip", {"name": "evil", "source": "source.mp4"}, {"source.mp4": HTML.encode()})
    with pytest.raises(EditingError, match="not a readable video|no video stream|corrupt"):
        SessionStore(tmp_path / "sessions").import_zip(archive)
    assert not [p for p in (tmp_path / "sessions").rglob("*") if p.is_file()]


def test_the_app_serves_no_user_folder():
    """launch() gets no allowed_paths: Gradio then serves only its cache, where HTML and SVG are downloads."""
    import app

    options = app.launch_options(app.parse_args([]))
    assert not options.get("allowed_paths")


# ---------------------------------------------------------------- defects 1-3 through a served app


@pytest.fixture(scope="module")
def served(tmp_path_factory, skiing):
    """The app on loopback with its real launch options, its sessions in a fresh folder outside temp and cwd;
    one session ('later') exists before the demo is built, so the page config would list it if it listed any."""
    import os
    import shutil
    import tempfile

    import app
    from ui import build_demo

    root = Path(tempfile.mkdtemp(prefix="sessions-", dir="/var/tmp"))
    old = os.environ.get("EDITING_SESSIONS_DIR")
    os.environ["EDITING_SESSIONS_DIR"] = str(root)
    store = SessionStore(root)
    (store.owned(new_owner_key()) if hasattr(store, "owned") else store).create("made-before-start", skiing)
    demo = build_demo(default_model="tiny")
    options = app.launch_options(app.parse_args(["--port", str(_free_port())]))
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{options['server_port']}/", root
    finally:
        demo.close()
        if old is None:
            os.environ.pop("EDITING_SESSIONS_DIR", None)
        else:
            os.environ["EDITING_SESSIONS_DIR"] = old
        shutil.rmtree(root, ignore_errors=True)


def _client(url: str, **kwargs):
    from gradio_client import Client

    return Client(url, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def owned(served, skiing):
    """Client A's session 'skier', made after the server started, with one edit; A sees raw file URLs."""
    from gradio_client import handle_file

    url, root = served
    alice = _client(url, download_files=False)
    alice.predict("skier", handle_file(str(skiing)), "a man skiing", api_name="/create_session")
    status, gallery, entries, _ = alice.predict(presets=["watercolor"], prompt="", **SMALL, api_name="/session_presets")
    assert len(gallery) == 1 and len(entries) == 1
    return alice, gallery


def test_an_html_or_svg_upload_cannot_become_a_session(served, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, root = served
    client = _client(url)
    for name, text in [("page.html", HTML), ("image.svg", SVG), ("page.mp4", HTML)]:
        upload = tmp_path / name
        upload.write_text(text)
        with pytest.raises(AppError, match="not a readable video|no video stream|corrupt|Invalid file type"):
            client.predict(f"evil-{upload.suffix[1:]}", handle_file(str(upload)), "", api_name="/create_session")
    assert not any(p.suffix in (".html", ".svg") for p in root.rglob("*"))


def test_session_files_are_served_as_video_from_unguessable_paths_and_never_by_their_path(served, owned):
    import httpx

    url, root = served
    _, gallery = owned
    item = gallery[0]["video"]
    address = item["url"] if item["url"].startswith("http") else url.rstrip("/") + item["url"]
    response = httpx.get(address)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    served_path = Path(item["path"])
    assert not served_path.is_relative_to(root)  # a copy in Gradio's cache, not the session's own file
    assert len(served_path.parent.name) == 64  # the cache folder: a hash of the content and the server's secret seed
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".mp4" for p in files) and any(p.name == "session.json" for p in files)
    for path in files:
        direct = httpx.get(f"{url}gradio_api/file={path}")
        assert direct.status_code == 403, path  # no session file is reachable by its path


def test_an_uploaded_html_or_svg_file_is_never_served_inline(served, tmp_path):
    """What anyone can upload lands in Gradio's cache, which serves such files only as downloads."""
    import httpx
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, root = served
    client = _client(url, download_files=False)
    for name, text in [("page.html", HTML), ("image.svg", SVG)]:
        upload = tmp_path / name
        upload.write_text(text)
        with pytest.raises(AppError):
            client.predict(f"evil-{upload.suffix[1:]}", handle_file(str(upload)), "", api_name="/create_session")
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("page.html", HTML.encode(), "text/html")}).json()[0]
    response = httpx.get(f"{url}gradio_api/file={uploaded}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream" and response.headers["content-disposition"].startswith(
        "attachment"
    )


def test_one_client_cannot_list_open_export_or_edit_anothers_session(served, owned, skiing):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, root = served
    alice, _ = owned
    bob = _client(url)
    for api_name, kwargs in [("/open_session", {"name": "skier"}), ("/open_session", {"name": "made-before-start"})]:
        with pytest.raises(AppError, match="no session named") as refused:
            bob.predict(**kwargs, api_name=api_name)
        assert "skier" not in str(refused.value).replace(kwargs["name"], "")  # the error lists nobody's sessions
    with pytest.raises(AppError, match="open a session"):
        bob.predict(api_name="/export_session")
    with pytest.raises(AppError, match="create or open a session"):
        bob.predict(presets=[], prompt="a robot", **SMALL, api_name="/session_edit")
    # Bob may use the same name: names are per owner, so a clash tells him nothing about Alice's sessions.
    status, gallery, entries, saved = bob.predict("skier", handle_file(str(skiing)), "", api_name="/create_session")
    assert "0 edits" in status and entries == [] and saved["choices"] == [["skier", "skier"]]
    with pytest.raises(AppError, match="create or open a session|choose a style"):
        bob.predict(presets=[], prompt="", **SMALL, api_name="/session_edit")
    status, gallery, entries, _ = alice.predict("skier", api_name="/open_session")
    assert "1 edit " in status and len(entries) == 1  # Alice's session is untouched by Bob


def test_the_page_lists_no_session(served, owned):
    import httpx

    url, root = served
    config = httpx.get(f"{url}config").text
    assert "made-before-start" not in config and '"skier"' not in config


def test_a_session_made_after_start_up_reaches_the_apps_own_check(served, owned):
    """Before: the dropdown's choices were fixed when the page was built, so a new client's /open_session of a
    later session failed in Gradio with "not in the list of choices: [...every session...]". Now the name
    reaches the app, which opens it for its owner only (a browser gets its list on page load, below)."""
    from gradio_client.exceptions import AppError

    url, _ = served
    alice, _ = owned
    with pytest.raises(AppError) as refused:
        _client(url).predict("skier", api_name="/open_session")
    assert "no session named 'skier'" in str(refused.value) and "choices" not in str(refused.value)
    status, gallery, entries, saved = alice.predict("skier", api_name="/open_session")
    assert "skier" in status and len(gallery) == 1 and ["skier", "skier"] in saved["choices"]


class _Page:
    """What the browser page does, over the same HTTP queue: run events by index in one connection."""

    def __init__(self, url: str):
        import uuid

        import httpx

        self.base, self.session = f"{url}gradio_api", uuid.uuid4().hex
        config = httpx.get(f"{url}config").json()
        self.dependencies = config["dependencies"]
        types = {c["id"]: c["type"] for c in config["components"]}
        self.load = next(
            i
            for i, d in enumerate(self.dependencies)
            if any(t[1] == "load" for t in d["targets"]) and any(types[x] == "browserstate" for x in d["inputs"])
        )

    def index(self, api_name: str) -> int:
        return next(i for i, d in enumerate(self.dependencies) if d.get("api_name") == api_name)

    def run(self, fn_index: int, data: list) -> dict:
        import httpx

        body = {"data": data, "fn_index": fn_index, "session_hash": self.session, "event_data": None, "trigger_id": None}
        httpx.post(f"{self.base}/queue/join", json=body).raise_for_status()
        with httpx.stream("GET", f"{self.base}/queue/data", params={"session_hash": self.session}, timeout=120) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                    return json.loads(line[5:])["output"]
        raise AssertionError("no answer")


def test_a_browser_page_keeps_its_sessions_across_reloads_and_sees_nobody_elses(served, car):
    """Through the served app's own queue, as the page calls it: the load event turns the browser's stored
    key into its owner and fills Saved sessions; a reload (a new connection, the same stored key) lists and
    opens the session made after start-up; another browser gets neither."""
    import httpx

    url, _ = served
    page = _Page(url)
    key = page.run(page.load, [None])["data"][1]  # a first visit: a new key, stored by the browser
    upload = httpx.post(f"{page.base}/upload", files={"files": ("car.mp4", car.read_bytes(), "video/mp4")}).json()[0]
    created = page.run(
        page.index("create_session"), ["page-made", {"path": upload, "meta": {"_type": "gradio.FileData"}}, "a car", None]
    )
    assert "page-made" in created["data"][2]
    reloaded = _Page(url)
    listed = reloaded.run(reloaded.load, [key])["data"]
    assert listed[1] == key and listed[2]["choices"] == [["page-made", "page-made"]]  # no Refresh needed
    assert "page-made" in reloaded.run(reloaded.index("open_session"), ["page-made", None])["data"][2]
    other = _Page(url)
    assert other.run(other.load, [None])["data"][2]["choices"] == []
    assert other.run(other.index("open_session"), ["page-made", None])["error"] == "no session named 'page-made'"


def test_a_browser_gets_its_own_sessions_on_page_load(tmp_path, car):
    """The load event turns the browser's stored key (or a new one) into its sessions list, no Refresh needed."""
    from ui.backend import Backend
    from ui.session_tab import SessionHandlers

    handlers = SessionHandlers(SessionStore(tmp_path), Backend())
    owner, remembered, saved = handlers.on_load(None)
    assert owner == remembered and saved["choices"] == []
    handlers.create("mine", str(car), "", owner)
    again, _, saved = handlers.on_load(owner)  # a reload of the same browser
    assert again == owner and saved["choices"] == ["mine"]
    stranger, _, saved = handlers.on_load(None)
    assert stranger != owner and saved["choices"] == []
    forged, _, saved = handlers.on_load("../" + owner)  # not a key: a fresh one, not someone's folder
    assert forged not in (owner, "../" + owner) and saved["choices"] == []


def test_sessions_from_before_owners_become_the_local_browsers_but_never_a_public_visitors(tmp_path, car):
    from ui.backend import Backend
    from ui.serving import ServePolicy
    from ui.session_tab import SessionHandlers

    SessionStore(tmp_path).create("old", car)  # as an earlier version stored it: directly in the root
    visitor, _, saved = SessionHandlers(SessionStore(tmp_path), Backend(policy=ServePolicy(public=True))).on_load(None)
    assert saved["choices"] == [] and (tmp_path / "old" / "session.json").is_file()
    handlers = SessionHandlers(SessionStore(tmp_path), Backend())
    owner, _, saved = handlers.on_load(None)
    assert saved["choices"] == ["old"] and not (tmp_path / "old").exists()
    name, _, status, *_ = handlers.open("old", owner)
    assert name == "old" and "0 edits" in status
    with pytest.raises(Exception, match="no session named 'old'"):
        SessionHandlers(SessionStore(tmp_path), Backend()).open("old", visitor)


def test_only_the_hash_of_an_owner_key_is_stored(tmp_path, car):
    key = new_owner_key()
    session = SessionStore(tmp_path).owned(key).create("s", car)
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()] + [str(p).encode() for p in tmp_path.rglob("*")]
    assert not any(key.encode() in data for data in stored)
    assert json.loads((session.folder / "session.json").read_text())["owner"] == session.folder.parent.name


# ---------------------------------------------------------------- defect 4: the Model field


PROBES = [
    "/root",
    "/etc/passwd",
    "/etc",
    "/nonexistent-folder",
    "/etc/ssl/certs/x.safetensors",
    "../../etc",
    "~/.ssh",
    "./assets/shapes-model",
]


def test_served_beyond_loopback_the_model_field_refuses_every_path_outside_the_roots_alike(tmp_path):
    from ui.serving import ServePolicy

    policy = ServePolicy(public=True, model_roots=(tmp_path.resolve(),))
    messages = set()
    for probe in PROBES:
        with pytest.raises(ConfigError) as refused:
            policy.check_model(probe)
        messages.add(str(refused.value).replace(repr(probe), "<spec>"))
    assert len(messages) == 1 and "not allowed on this server" in messages.pop()  # one sentence, whether it exists or not


def test_served_beyond_loopback_hub_ids_built_ins_and_files_under_the_roots_load(tmp_path):
    from editing.models import ModelSpec
    from ui.serving import ServePolicy

    (tmp_path / "mine").mkdir()
    (tmp_path / "one.safetensors").write_bytes(b"")
    (tmp_path / "out").symlink_to("/etc")
    policy = ServePolicy(public=True, model_roots=(tmp_path.resolve(),), default_model="/srv/operator-model")
    for name in ("tiny", "sd15-random", "shapes", "/srv/operator-model"):
        assert policy.check_model(name) == name
    assert policy.check_model("assets/shapes-model") == "hub:assets/shapes-model"  # a Hub id, never a path in the cwd
    assert ModelSpec.parse(policy.check_model("assets/shapes-model")) == ModelSpec("hub", "assets/shapes-model")
    assert policy.check_model("mine") == policy.check_model(str(tmp_path / "mine")) == str((tmp_path / "mine").resolve())
    assert policy.check_model("one.safetensors") == str((tmp_path / "one.safetensors").resolve())
    with pytest.raises(ConfigError, match="not allowed"):
        policy.check_model("out")  # a link out of the root
    assert policy.check_model("out/passwd") == "hub:out/passwd"  # through the link: only ever a Hub id, never the file


def test_on_loopback_the_model_field_takes_what_the_cli_takes():
    from ui.serving import LOCAL

    assert [LOCAL.check_model(p) for p in PROBES] == PROBES


def test_the_app_is_public_beyond_loopback_with_share_or_on_a_space(monkeypatch, tmp_path):
    import app

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv(app.MODEL_DIRS_ENV, raising=False)
    assert not app.serve_policy(app.parse_args([])).public
    assert not app.serve_policy(app.parse_args(["--host", "localhost"])).public
    assert app.serve_policy(app.parse_args(["--host", "0.0.0.0"])).public
    assert app.serve_policy(app.parse_args(["--share"])).public
    policy = app.serve_policy(
        app.parse_args(["--host", "0.0.0.0", "--model-dir", str(tmp_path), "--model-dir", str(tmp_path / "b")])
    )
    assert policy.model_roots == (tmp_path.resolve(), (tmp_path / "b").resolve())
    monkeypatch.setenv("SPACE_ID", "someone/some-space")
    monkeypatch.setenv(app.MODEL_DIRS_ENV, str(tmp_path))
    policy = app.serve_policy(app.parse_args([]))
    assert policy.public and policy.model_roots == (tmp_path.resolve(),)


def test_every_model_field_of_the_app_goes_through_the_policy(car, tmp_path):
    """The Edit, One-shot and Style-session forms all refuse a server path alike when the app is public."""
    import gradio as gr

    from ui.backend import Backend
    from ui.edit_tab import make_handlers
    from ui.oneshot_tab import run_tuning
    from ui.serving import ServePolicy
    from ui.session_tab import run_in_session

    backend = Backend(policy=ServePolicy(public=True))
    edit = make_handlers(backend)["edit"]
    answers = set()
    for probe in ("/root", "/etc/passwd", "/nonexistent"):
        with pytest.raises(gr.Error) as refused:
            edit({"video": str(car), "prompt": "a cat", "model": probe}, None)
        answers.add(refused.value.message.replace(repr(probe), "<spec>"))
    assert len(answers) == 1 and "not allowed on this server" in answers.pop()
    with pytest.raises(ConfigError, match="not allowed on this server"):
        run_tuning(backend.checked({"video": str(car), "model": "/root", "source_prompt": "a car"}), lambda *a: None)
    store = SessionStore(tmp_path)
    store.create("car", car)
    with pytest.raises(ConfigError, match="not allowed on this server"):
        run_in_session(store, backend, "car", [("a cat", None)], {"model": "/root"})


def test_the_long_side_slider_does_not_look_at_paths_the_policy_refuses(tmp_path):
    import json as _json

    from ui.serving import LOCAL, ServePolicy
    from ui.widgets import FORM_SIZE, size_for_model

    for part, config in (("unet", {"sample_size": 4}), ("vae", {"block_out_channels": [1, 2]})):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(_json.dumps(config))
    assert size_for_model(str(tmp_path), LOCAL) == 8  # on loopback it reads the folder's configs
    assert size_for_model(str(tmp_path), ServePolicy(public=True)) == FORM_SIZE  # served: it does not


# ---------------------------------------------------------------- defect 8: no server paths shown


def test_the_details_panel_shows_file_names_only(car):
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    backend = Backend()
    video, gif, frames_zip, details, *_ = make_handlers(backend)["edit"]({"video": str(car), "prompt": "a cat", **SMALL}, None)
    folder = str(Path(video).parent)
    assert details["output"] == Path(video).name and details["also_written"] == [Path(gif).name, Path(frames_zip).name]
    assert folder not in json.dumps(details) and "video-edit-outputs" not in json.dumps(details)


def test_session_entries_keep_file_names_only(tmp_path, car):
    from ui.backend import Backend
    from ui.session_tab import run_in_session

    store = SessionStore(tmp_path)
    store.create("car", car)
    (entry,) = run_in_session(store, Backend(), "car", [("a cat", None)], SMALL)
    manifest = (tmp_path / "car" / "session.json").read_text()
    assert "video-edit-outputs" not in manifest and "/" not in entry.result["output"]


# ---------------------------------------------------------------- defect 9: no pickled weights


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_a_training_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    import torch

    try:
        from shapes_world import train
    except ImportError:
        from editing.shapes import train

    _RunsCode.marker = str(tmp_path / "code-ran")
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    payload = {
        "modules": {"layer": layer.state_dict()},
        "optimizer": optimizer.state_dict(),
        "state": {"losses": [], "seconds": 0.0, "batch": 1},
        "ema": _RunsCode(),
    }
    torch.save(payload, tmp_path / "unet.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        train.load_checkpoint(train.TrainConfig(), tmp_path, "unet", {"layer": layer}, optimizer)
    assert not (tmp_path / "code-ran").exists()


def test_no_code_loads_pickles_with_weights_only_false():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = [f for f in files if "weights_only=False" in (ROOT / f).read_text() and f != "tests/test_security.py"]
    assert offenders == []


# ---------------------------------------------------------------- defect 5: API refusals name the field


def _raw_call(url: str, api_name: str, changes: dict) -> str:
    """Call an endpoint over plain HTTP, as any client could (no gradio_client upload), with the endpoint's
    defaults and `changes`; the event's final message as text."""
    import httpx

    from ui import build_demo

    params = build_demo(default_model="tiny").get_api_info()["named_endpoints"][f"/{api_name}"]["parameters"]
    data = [changes.get(p["parameter_name"], p.get("parameter_default")) for p in params]
    base = f"{url}gradio_api/call/{api_name}"
    event = httpx.post(base, json={"data": data}, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{base}/{event}", timeout=120) as stream:
        return "".join(stream.iter_text())


def _error_of(stream: str) -> str | None:
    assert "event: error" in stream, stream[:300]
    return json.loads(stream.split("data:", 1)[1].strip().splitlines()[0])["error"]


@pytest.mark.parametrize(("api_name", "field"), [("edit", "video"), ("create_session", "video")])
def test_a_server_path_given_as_a_file_is_refused_naming_the_field_alike_for_any_path(served, tmp_path, car, api_name, field):
    url, _ = served
    messages = set()
    for path in (str(car), "/etc/passwd", "/no/such/file.mp4", "/tmp", str(tmp_path)):
        payload = {"path": path, "meta": {"_type": "gradio.FileData"}}
        messages.add(_error_of(_raw_call(url, api_name, {field: payload, "prompt": "a cat", "name": "probe"})))
    assert len(messages) == 1  # the same sentence whether the path exists, is a folder or a readable clip
    (message,) = messages
    assert message.startswith(f"{field} must be a file uploaded to this app") and message.count(".") <= 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": 100000}, "frames must be between 2 and 64 in this app, got 100000"),
        ({"steps": 0}, "steps must be between 1 and 50 in this app, got 0"),
        ({"guidance": 99.5}, "guidance must be between 1 and 15 in this app, got 99.5"),
        ({"seed": -3}, "seed must be at least 0, got -3"),
    ],
)
def test_a_value_outside_a_widgets_range_is_refused_naming_the_field(served, car, change, message):
    from gradio_client import handle_file

    url, _ = served
    with pytest.raises(Exception) as caught:
        _client(url).predict(video=handle_file(str(car)), prompt="a cat", **(SMALL | change), api_name="/edit")
    assert str(caught.value) == message


def test_the_api_and_the_cli_refuse_an_out_of_range_value_in_the_same_words(served, car):
    """steps=0: the CLI's sentence and the app's start alike, naming the field the same way."""
    from gradio_client import handle_file

    from editing.cli import build_parser, edit_request

    with pytest.raises(ConfigError) as cli:
        edit_request(build_parser().parse_args(["edit", str(car), "--prompt", "a cat", "--steps", "0", "--out", "x.mp4"]))
    url, _ = served
    with pytest.raises(Exception) as app:
        _client(url).predict(video=handle_file(str(car)), prompt="a cat", **(SMALL | {"steps": 0}), api_name="/edit")
    assert str(cli.value) == "steps must be between 1 and 1000, got 0"
    assert str(app.value).startswith("steps must be between 1 and ") and str(app.value).endswith(", got 0")


def test_the_reference_image_is_an_upload_never_a_server_path_and_never_served_back(served, car, tmp_path):
    """/edit's reference_image takes an uploaded image only (Gradio re-encodes it into its cache); a client
    naming a file on the server is refused, an SVG upload is refused, and no output holds the reference."""
    import numpy as np
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    url, root = served
    client = _client(url, download_files=False)
    secret = Path(root).parent / f"{Path(root).name}-secret.png"  # outside Gradio's folders, like any server file
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(secret)
    try:  # raw HTTP: gradio_client would upload a local path itself
        refused = _raw_edit(url, car, reference_image={"path": str(secret), "meta": {"_type": "gradio.FileData"}})
        assert "event: error" in refused and "event: complete" not in refused, refused
        assert "event: complete" in _raw_edit(url, car)  # the control: the same call without it runs
    finally:
        secret.unlink()
    svg = tmp_path / "dog.svg"
    svg.write_text(SVG)
    with pytest.raises(AppError):
        client.predict(
            video=handle_file(str(car)), prompt="a dog", reference_image=handle_file(str(svg)), **SMALL, api_name="/edit"
        )
    dog = tmp_path / "dog.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(dog)
    video, gif, frames_zip, details, warp = client.predict(
        video=handle_file(str(car)),
        prompt="a dog",
        reference_image=handle_file(str(dog)),
        reference_scale=0.5,
        **SMALL,
        api_name="/edit",
    )
    assert details["frames"] == 2 and "dog" not in json.dumps(details)


def _raw_edit(url: str, video: Path, **given) -> str:
    """The /edit call's event stream, its parameters posted by hand (uploaded video, defaults, `given`)."""
    import httpx

    from ui import build_demo

    parameters = build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": (video.name, video.read_bytes(), "video/mp4")}).json()[0]
    values = {p["parameter_name"]: p.get("parameter_default") for p in parameters} | SMALL | {"prompt": "a dog"} | given
    values["video"] = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    event = httpx.post(f"{url}gradio_api/call/edit", json={"data": [values[p["parameter_name"]] for p in parameters]}).json()[
        "event_id"
    ]
    return httpx.get(f"{url}gradio_api/call/edit/{event}", timeout=120).text


# ---------------------------------------------------------------- issue 32 item 7: no field names a server path


SERVER_PATHS = [
    "/etc",
    "/nonexistent-dir",
    "/etc/passwd",
    "/etc/hostname",
    "../../../etc",
    "~/.ssh",
    "/proc/self/environ",
    "C:\\Windows",
]


@pytest.fixture(scope="module")
def public_api(tmp_path_factory, car):
    """The app as served beyond loopback (a public policy with one model root), its backend running nothing."""
    from ui.serving import ServePolicy

    from .api_helpers import launched_app

    root = tmp_path_factory.mktemp("public-api")
    models = root / "models"
    (models / "my-lora").mkdir(parents=True)
    with launched_app(root, car, ServePolicy(public=True, model_roots=(models.resolve(),))) as (demo, video, session):
        yield demo, video, session, root, models


def test_served_beyond_loopback_every_field_naming_a_file_refuses_server_paths_alike(public_api):
    """Generated from the API info and the option schema: every parameter of every endpoint whose option names a
    file, folder or Hub id (model, lora, motion_adapter, ...; files such as the mask are uploads) refuses each server
    path, existing or not, in the same sentence naming the parameter (the path as given the only difference);
    a Hub id and a path under the model roots are accepted."""
    from ui.serving import location_options, option_takes_hub_ids, option_writes

    from .api_helpers import SEEN, answer, base_values, endpoint_functions

    demo, video, session, root, models = public_api
    existing = next(p for p in ("/usr/share", "/var/log", "/usr") if Path(p).is_dir())  # a folder that exists on the server
    locations = location_options()
    assert {"model", "lora", "motion_adapter", "mask_model", "mask_preview", "inpaint_model"} <= set(locations)
    functions, tried = endpoint_functions(demo), set()
    for api_name, endpoint in demo.get_api_info()["named_endpoints"].items():
        parameters = endpoint["parameters"]
        base = [
            ("a cat" if p["parameter_name"] == "prompt" else value)
            for value, p in zip(base_values(parameters, video), parameters)
        ]
        accepted = answer(demo, functions[api_name], list(base), session)
        for index, parameter in enumerate(parameters):
            name = parameter["parameter_name"]
            if name not in locations:
                continue
            option, listed = locations[name], parameter["component"] == "Json"

            def call(text):
                return answer(demo, functions[api_name], base[:index] + [[text] if listed else text] + base[index + 1 :], session)

            SEEN.clear()
            said = {path: call(path) for path in [*SERVER_PATHS, existing]}
            reached = [path for path in [*SERVER_PATHS, existing] if any(path in repr(args) for args in SEEN)]
            assert not reached, (api_name, name, reached)  # no server path reaches an edit
            shapes = {message.replace(repr(path)[:80], "PATH").replace(path, "PATH") for path, message in said.items()}
            assert len(shapes) == 1, (api_name, name, said)  # the same sentence for any path, existing or not
            (shape,) = shapes
            if shape == accepted:
                continue  # the endpoint leaves this field to its preset (Fast preview's LoRA): no path reached it
            assert shape.startswith(f"{name} ") and "exist" not in shape and "\n" not in shape, (api_name, name, shape)
            if option_takes_hub_ids(option) and not option_writes(option):
                for allowed in (
                    "owner/some-model",
                    str(models / "my-lora"),
                ):  # past the policy (the field's own checks may follow)
                    assert "not allowed on this server" not in call(allowed), (api_name, name, allowed)
            tried.add(name)
    assert {"model", "lora", "motion_adapter"} <= tried


def test_a_lora_the_policy_passes_as_a_hub_id_is_never_read_as_a_local_folder(tmp_path, monkeypatch):
    """Served beyond loopback, `owner/name` becomes `hub:owner/name`, which the LoRA loader reads as a Hub id
    even where a folder of that name exists in the server's working folder."""
    from editing.lora import LoraSpec, lora_location
    from ui.serving import ServePolicy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    (checked,) = ServePolicy(public=True).checked({"lora": ["owner/name/x.safetensors:0.5"]})["lora"]
    assert checked == "hub:owner/name/x.safetensors:0.5"
    assert lora_location(LoraSpec.parse(checked)) == ("hub", "owner/name", {"weight_name": "x.safetensors"})
    assert lora_location(LoraSpec.parse("owner/name"))[0] == "folder"  # on this machine (loopback) a folder is a folder
