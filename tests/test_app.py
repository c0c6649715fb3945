"""The minimal app: importable without loading a model, served on localhost, driven by gradio_client."""

from __future__ import annotations

import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_importing_the_app_loads_no_model():
    code = "import app, torch, editing.models as m; assert app.demo is not None; assert not m._cache; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-500:]


@pytest.fixture(scope="module")
def served():
    from gradio_client import Client

    from ui import build_demo

    demo = build_demo(default_model="tiny")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def test_app_edits_an_uploaded_clip(served, skiing):
    from gradio_client import handle_file

    from editing.video_io import probe

    video, gif, frames_zip, details, warp = served.predict(
        handle_file(str(skiing)), "a watercolor painting", "tiny", 0, None, 2, 4, 128, 2, 7.5, 0.6, 0, api_name="/edit"
    )
    info = probe(video)
    assert (info.codec, info.frame_count, info.width, info.has_audio) == ("h264", 4, 128, True)
    assert details["random_weights"] and "noise-like" in details["note"]
    assert Path(gif).read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    with zipfile.ZipFile(frames_zip) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == info.frame_count
    assert len(warp["data"]) == info.frame_count - 1  # one warp error per frame pair


def test_app_takes_named_arguments_and_engine_options(served, car):
    from gradio_client import handle_file

    from editing.video_io import probe

    video, _, _, details, _ = served.predict(
        video=handle_file(str(car)), prompt="a red car", model="tiny", frames=3, size=64, steps=2,
        attention="sparse-causal", inversion="none", control_kinds=["canny"], smooth=["color"], api_name="/edit",
    )  # fmt: skip
    assert probe(video).frame_count == 3 and details["inversion"] == "none"


def test_app_reports_bad_input_as_a_message(served, skiing, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="prompt must not be empty"):
        served.predict(handle_file(str(skiing)), "", "tiny", 0, None, 1, 4, 128, 2, 7.5, 0.6, 0, api_name="/edit")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video " * 50)
    with pytest.raises(AppError, match="not a readable video"):
        served.predict(handle_file(str(text)), "a cat", "tiny", 0, None, 1, 4, 128, 2, 7.5, 0.6, 0, api_name="/edit")


def test_cancelling_a_job_stops_the_edit_between_steps(car, tmp_path):
    """A client's cancel reaches the worker: the edit raises Cancelled at its next step and writes nothing
    (no output, GIF, zip or partial file in the run folder); the next edit writes its files there."""
    import threading
    import time

    from gradio_client import Client, handle_file

    from editing.pipeline import edit_video
    from ui import build_demo
    from ui.backend import Backend

    outcome, requested, denoising = [], [], threading.Event()

    def observed(request, progress):
        requested.append(request)

        def report(stage, done, total):
            if stage.endswith("denoise") and done >= 1:
                denoising.set()
            progress(stage, done, total)

        try:
            result = edit_video(request, report)
        except Exception as exc:
            outcome.append(exc)
            raise
        outcome.append(result)
        return result

    runs = tmp_path / "runs"

    def written() -> list[Path]:
        return sorted(p for p in runs.rglob("*") if p.is_file()) if runs.exists() else []

    demo = build_demo(default_model="tiny", backend=Backend(observed, output_root=runs))
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert written() == []
        job = client.submit(
            video=handle_file(str(car)),
            prompt="a red car",
            model="tiny",
            frames=4,
            size=64,
            steps=50,
            strength=1.0,
            api_name="/edit",
        )
        assert denoising.wait(120), "the edit never reached the denoising loop"
        job.cancel()
        deadline = time.monotonic() + 60
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.2)
        assert outcome and type(outcome[0]).__name__ == "Cancelled", outcome
        assert str(outcome[0]).endswith("denoise") and "cancelled during" in str(outcome[0])
        cancelled = requested[0]
        assert Path(cancelled.output).parent.is_relative_to(runs) and len(cancelled.also_write) == 2
        assert not any(Path(p).exists() for p in (cancelled.output, *cancelled.also_write))
        assert written() == []  # nothing at all: no output, no partial file
        video, *_ = client.predict(
            handle_file(str(car)), "a red car", "tiny", 0, None, 1, 2, 64, 2, 7.5, 0.6, 0, api_name="/edit"
        )
        assert video.endswith(".mp4")  # the app keeps serving after a cancel
        # Control: the same listing sees a finished edit's files (Gradio serves copies of them).
        assert {p.suffix for p in written()} == {".mp4", ".gif", ".zip"} and all(
            p.parent != Path(cancelled.output).parent for p in written()
        )
    finally:
        demo.close()


def test_uploads_beyond_the_video_size_limit_are_refused(car, skiing):
    """The launch options cap uploads at VideoLimits.max_file_mb: a clip just over it is refused, one under it edits."""
    from gradio_client import Client, handle_file

    import app
    from editing.config import VideoLimits
    from ui import build_demo

    assert app.launch_options(app.parse_args([]))["max_file_size"] == VideoLimits().max_file_mb * 1e6  # the real app's cap
    small, large = sorted([car, skiing], key=lambda p: Path(p).stat().st_size)
    limit_mb = (Path(small).stat().st_size + Path(large).stat().st_size) / 2 / 1e6  # between the two clips' sizes
    demo = build_demo(default_model="tiny")
    options = app.launch_options(app.parse_args(["--port", str(_free_port())]), VideoLimits(max_file_mb=limit_mb))
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{options['server_port']}/", verbose=False)
        with pytest.raises(ValueError, match="exceeds the maximum file size"):  # refused at upload, before any work
            client.predict(
                video=handle_file(str(large)), prompt="a cat", model="tiny", frames=2, size=64, steps=1, api_name="/edit"
            )
        video, *_ = client.predict(
            video=handle_file(str(small)), prompt="a cat", model="tiny", frames=2, size=64, steps=1, api_name="/edit"
        )
        assert video.endswith(".mp4")
    finally:
        demo.close()


def test_style_session_through_the_api(served, skiing, tmp_path):
    """Create a session, run two style presets in one call (two entries, one inversion), export it."""
    from gradio_client import handle_file

    name = f"api-{tmp_path.name[-12:]}"
    status, gallery, entries, _ = served.predict(name, handle_file(str(skiing)), "a man skiing", api_name="/create_session")
    assert name in status and gallery == [] and entries == []
    small = {"model": "tiny", "frames": 2, "size": 64, "steps": 2, "guidance": 1.0, "strength": 0.5}
    status, gallery, entries, _ = served.predict(
        presets=["watercolor", "pixel art"], prompt="", **small, api_name="/session_presets"
    )
    assert "2 edits" in status and len(gallery) == 2
    assert [e["preset"] for e in entries] == ["watercolor", "pixel art"] and entries[1]["inversion_cached"]
    exported = served.predict(api_name="/export_session")
    with zipfile.ZipFile(exported) as archive:
        assert sum(n.endswith(".mp4") for n in archive.namelist()) == 3  # the source and two edits


def test_one_shot_tune_then_edit_through_the_api(served, car):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from editing.video_io import probe

    small = {"model": "tiny", "frames": 2, "size": 64}
    with pytest.raises(AppError, match="tune on the clip first"):
        served.predict(video=handle_file(str(car)), inversion_prompt="a car", prompt="a bear", **small, api_name="/edit_tuned")
    info = served.predict(video=handle_file(str(car)), prompt="a car turning", steps=2, **small, api_name="/tune")
    assert info["weights"].endswith(".safetensors") and info["parameters"] > 0
    video, details = served.predict(
        video=handle_file(str(car)), inversion_prompt="a car turning", prompt="a bear", steps=2, **small, api_name="/edit_tuned"
    )
    assert details["tuned"].endswith(info["weights"]) and probe(video).frame_count == 2


def test_session_gallery_is_served_from_a_sessions_folder_outside_temp_and_cwd(skiing, monkeypatch):
    """The gallery works with the sessions folder outside temp and cwd (by default ~/.cache): its files are handed out as copies."""
    import shutil
    import tempfile

    from gradio_client import Client, handle_file

    import app
    from ui import build_demo

    root = Path(tempfile.mkdtemp(prefix="sessions-", dir="/var/tmp"))  # neither the temp folder nor the working folder
    monkeypatch.setenv("EDITING_SESSIONS_DIR", str(root))
    demo = build_demo(default_model="tiny")
    options = app.launch_options(app.parse_args(["--port", str(_free_port())]))
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{options['server_port']}/", verbose=False)
        client.predict("outside", handle_file(str(skiing)), "a man skiing", api_name="/create_session")
        small = {"model": "tiny", "frames": 2, "size": 64, "steps": 1, "guidance": 1.0, "strength": 0.5}
        status, gallery, entries, _ = client.predict(presets=["watercolor"], prompt="", **small, api_name="/session_presets")
        assert (
            len(gallery) == 1 and len(entries) == 1 and [p.name for p in root.rglob("outside")] == ["outside"]
        )  # in its owner's folder
    finally:
        demo.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_user_error_is_one_line_in_the_terminal_and_a_real_failure_keeps_its_traceback(served, skiing, capfd, caplog):
    """Issue 32 item 10: a refused edit prints no traceback (one log line says it); a real failure does."""
    import logging

    import gradio as gr
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from ui.forms import one_sentence_errors

    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="ui"):
        with pytest.raises(AppError, match="prompt must not be empty"):
            served.predict(handle_file(str(skiing)), "", "tiny", 0, None, 1, 4, 128, 2, 7.5, 0.6, 0, api_name="/edit")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    said = [r.getMessage() for r in caplog.records if "prompt must not be empty" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]

    @one_sentence_errors
    def broken():
        raise RuntimeError("a bug")

    with pytest.raises(gr.Error) as failure:
        broken()
    assert failure.value.print_exception and "RuntimeError: a bug" in str(failure.value)


# ---------------------------------------------------------------- issue 32 item 3: the first click offline


def test_without_the_hub_or_a_cached_model_the_app_starts_on_shapes_and_says_so_in_one_line(caplog):
    import logging

    import app
    from editing.models import DEFAULT_MODEL
    from ui import build_demo
    from ui.widgets import SHAPES_EXAMPLES

    asked = []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ui.startup"):
        model, notice = app.startup_model(app.parse_args([]), available=lambda spec: asked.append(spec) or False)
    assert asked == [DEFAULT_MODEL] and model == "shapes"
    assert "\n" not in notice and DEFAULT_MODEL in notice and "shapes" in notice
    assert [r.getMessage() for r in caplog.records] == [notice]  # the terminal's one line
    demo = build_demo(default_model=model, notice=notice)
    shown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "startup-notice")
    assert notice in shown.value
    examples = {b.elem_id: b for b in demo.blocks.values() if (getattr(b, "elem_id", None) or "").startswith("examples-")}
    assert examples["examples-shapes"].visible and not examples["examples-photos"].visible
    rows = examples["examples-shapes"].samples
    assert rows and all(
        "shapes" in row and any(prompt in row for prompt in SHAPES_EXAMPLES.values()) for row in rows
    )  # its prompts and model
    # with the Hub or a cached model nothing changes
    assert app.startup_model(app.parse_args([]), available=lambda spec: True) == (DEFAULT_MODEL, None)
    assert app.startup_model(app.parse_args(["--model", "tiny"])) == ("tiny", None)  # nothing to download


def test_the_start_up_check_reads_the_hub_cache_and_honours_offline_mode(tmp_path, monkeypatch):
    """A model in the local Hugging Face cache can be had offline; with HF_HUB_OFFLINE and no cached copy, it
    cannot, and the Hub is never asked."""
    from ui import startup

    snapshot = tmp_path / "models--owner--model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models--owner--model" / "refs").mkdir()
    (tmp_path / "models--owner--model" / "refs" / "main").write_text("abc123")
    assert startup.in_hub_cache("owner/model", cache_dir=str(tmp_path))
    assert not startup.in_hub_cache("owner/other", cache_dir=str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(startup, "hub_answers", lambda *a, **k: pytest.fail("the Hub was asked in offline mode"))
    assert not startup.model_available("owner/not-cached-anywhere")
    assert startup.model_available("tiny") and startup.model_available("shapes")
