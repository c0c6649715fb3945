"""The app's handlers: widget values -> the CLI's validated request, one-sentence errors, plan, preview, cancel."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from editing.config import FrameSelection
from editing.errors import Cancelled, EditingError

SMALL = {"model": "tiny", "frames": 2, "size": 64, "steps": 2, "strength": 0.5, "guidance": 1.0}


def cli_request(*argv: str):
    from editing.cli import build_parser, edit_request

    return edit_request(build_parser().parse_args(["edit", *argv]))


def test_widget_values_make_the_same_request_as_the_cli(skiing, tmp_path):
    from ui.edit_tab import request_from

    widgets = {
        "video": str(skiing), "prompt": "a bear", "negative_prompt": "blurry", "model": "tiny", "start": 0.5, "end": 2.0,
        "stride": 2.0, "frames": 6.0, "size": 128.0, "steps": 3.0, "guidance": 5.0, "strength": 0.7, "seed": 4.0,
        "attention": "window", "inversion": "ddim", "source_prompt": "a man skiing", "prompt_edit": "swap",
        "blend_words": "man,bear", "control_kinds": ["canny", "pose"], "control_scale": 0.8, "smooth": ["flow", "color"],
    }  # fmt: skip
    app = request_from(widgets, str(tmp_path), (".mp4",))
    cli = cli_request(
        str(skiing), "--out", app.output, "--prompt", "a bear", "--negative-prompt", "blurry", "--model", "tiny",
        "--start", "0.5", "--end", "2", "--stride", "2", "--frames", "6", "--size", "128", "--steps", "3",
        "--guidance", "5", "--strength", "0.7", "--seed", "4", "--attention", "window", "--source-prompt", "a man skiing",
        "--edit", "swap", "--blend-words", "man,bear", "--control", "canny:0.8", "--control", "pose:0.8", "--smooth", "flow,color",
    )  # fmt: skip
    assert app == cli


def test_blank_widgets_keep_the_cli_defaults(car, tmp_path):
    from ui.edit_tab import request_from

    app = request_from(
        {"video": str(car), "prompt": "a cat", "model": "tiny", "end": None, "source_prompt": "  ", "negative_prompt": None},
        str(tmp_path),
        (".mp4",),
    )
    assert app == cli_request(str(car), "--out", app.output, "--prompt", "a cat", "--model", "tiny")
    assert app.attention_edit is None and app.selection.end is None
    zero = request_from({"video": str(car), "prompt": "a cat", "model": "tiny", "end": 0}, str(tmp_path), (".mp4",))
    assert zero.selection.end is None  # the End box shows 0, labelled '0 = clip end'


def test_every_format_is_written_from_one_request(car, tmp_path):
    from ui.edit_tab import request_from

    request = request_from({"video": str(car), "prompt": "a cat", "model": "tiny"}, str(tmp_path))
    suffixes = [p.rsplit(".", 1)[1] for p in (request.output, *request.also_write)]
    assert suffixes == ["mp4", "gif", "zip"] and len({request.output, *request.also_write}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": ""}, "prompt must not be empty"),
        ({"video": None}, "upload a video"),
        ({"stride": 0}, "stride must be at least 1"),
        ({"start": 3.0, "end": 1.0}, "must be after start"),
        ({"frames": 2.5}, "frames must be a whole number"),
        ({"size": 100}, "multiple of 8"),
        ({"model": "/no/such/model.safetensors"}, "model"),
        ({"attention": "sideways"}, "attention must be one of"),
        ({"inversion": "none", "source_prompt": "a car"}, "needs --inversion ddim"),
        ({"control_kinds": ["canny"], "control_scale": 9}, "control scale must be between"),
        ({"start": 500.0}, "past the end"),
    ],
)
def test_bad_widget_values_become_one_sentence_errors(car, change, message):
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    handlers = make_handlers(Backend())
    values = {"video": str(car), "prompt": "a red car"} | SMALL | change
    with pytest.raises(gr.Error) as caught:
        handlers["edit"](values, None)
    text = caught.value.message
    assert message in text and "\n" not in text and "Traceback" not in text


def test_an_unexpected_failure_is_one_sentence_and_the_app_keeps_serving(car):
    from editing.pipeline import edit_video
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    calls = []

    def flaky(request, progress):
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
        return edit_video(request, progress)

    handlers = make_handlers(Backend(flaky))
    values = {"video": str(car), "prompt": "a red car"} | SMALL
    with pytest.raises(gr.Error, match="RuntimeError: CUDA out of memory. Tried to allocate") as caught:
        handlers["edit"](values, None)
    assert "\n" not in caught.value.message
    video, gif, frames_zip, details, warp, run = handlers["edit"](values, None)
    assert details["frames"] == 2 and len(warp) == 1 and run["message"] == ""


def test_the_plan_matches_what_decoding_returns(skiing, tree):
    from editing.video_io import plan_frames, probe, read_clip

    for path, selection in [
        (skiing, FrameSelection(start=0.4, end=2.1, stride=3, max_frames=None, size=128)),
        (skiing, FrameSelection(stride=4, max_frames=5, size=200)),
        (tree, FrameSelection(start=1.0, stride=2, max_frames=7, size=96)),
    ]:
        plan, clip = plan_frames(probe(path), selection), read_clip(path, selection)
        assert plan.indices == clip.indices and (plan.width, plan.height) == (clip.width, clip.height)
        assert plan.fps == pytest.approx(float(clip.fps), rel=1e-3)


def test_the_plan_text_follows_the_trim_widgets(skiing):
    from editing.video_io import plan_frames, probe
    from ui.clip_upload import plan_text

    expected = plan_frames(probe(skiing), FrameSelection(stride=3, max_frames=None, size=128))
    text = plan_text(str(skiing), 0, None, 3, 0, 128)
    assert f"{expected.num_frames} frames, {expected.width}x{expected.height} px" in text
    assert "Cannot edit" in plan_text(str(skiing), 0, 0.05, 1, 8, 128)  # keeps 1 frame
    assert "Pick a clip" in plan_text(None, 0, None, 1, 8, 128)


def test_preview_first_frame_runs_the_pipeline_on_the_first_frames(car):
    from editing.video_io import plan_frames, probe
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    seen = []

    def recording(request, progress):
        from editing.pipeline import edit_video

        seen.append(request.selection.max_frames)
        return edit_video(request, progress)

    handlers = make_handlers(Backend(recording))
    image = handlers["preview"]({"video": str(car), "prompt": "a red car"} | SMALL | {"frames": 8, "size": 96}, None)
    plan = plan_frames(probe(car), FrameSelection(max_frames=8, size=96))
    assert image.shape == (plan.height, plan.width, 3) and image.dtype == np.uint8
    assert seen == [2]


def test_condition_previews_show_each_map_on_the_first_frame(car):
    from editing.control import extract_conditions
    from editing.video_io import read_clip
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    handlers = make_handlers(Backend())
    values = {"video": str(car), "prompt": "a car", "control_kinds": ["canny"], "control_scale": 0.5} | SMALL
    ((image, caption),) = handlers["conditions"](values, None)
    first = read_clip(car, FrameSelection(max_frames=2, size=64)).frames[:1]
    assert np.array_equal(image, extract_conditions("canny", first)[0]) and caption == "canny (scale 0.5)"
    with pytest.raises(gr.Error, match="tick at least one ControlNet"):
        handlers["conditions"]({"video": str(car), "prompt": "a car"} | SMALL, None)


def test_stop_cancels_between_steps_frees_memory_and_leaves_no_output(car, tmp_path, monkeypatch):
    import weakref

    import torch

    import ui.backend as backend_module
    from editing.pipeline import edit_video
    from ui.backend import Backend, CancelToken
    from ui.edit_tab import request_from

    run_tensors, alive_when_freed = [], []
    monkeypatch.setattr(backend_module, "free_memory", lambda: alive_when_freed.append([r() is not None for r in run_tensors]))
    token, stages = CancelToken(), []

    def press_stop_during_denoise(stage, done, total):
        stages.append(stage)
        if stage.endswith("denoise") and done == 1:
            token.cancel()

    def edit_holding_a_tensor(request, progress):
        working = torch.zeros(1024, 1024)  # stands for the run's latents and activations, held by its frames
        run_tensors.append(weakref.ref(working))
        return edit_video(request, progress)

    request = request_from({"video": str(car), "prompt": "a car"} | SMALL | {"steps": 4, "strength": 1.0}, str(tmp_path))
    with pytest.raises(Cancelled, match="cancelled during (keyframes: )?denoise"):
        Backend(edit_holding_a_tensor, output_root=tmp_path).edit(request, press_stop_during_denoise, token)
    assert alive_when_freed == [[False]]  # when its memory was freed, the stopped run's tensors were already gone
    assert "encode_video" not in stages
    assert not list(tmp_path.glob("*-edited.*"))
    token.reset()
    assert Backend().edit(request, lambda *a: None, token).result.frames == 2


def test_a_finished_cpu_run_leaves_the_full_collection_to_python_and_a_failed_one_collects(monkeypatch):
    import ui.backend as backend_module

    freed = []
    monkeypatch.setattr(backend_module, "free_memory", lambda: freed.append(True))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with backend_module.freeing_memory():
        pass
    assert freed == []
    with pytest.raises(RuntimeError), backend_module.freeing_memory():
        raise RuntimeError("a failed run")
    assert freed == [True]
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with backend_module.freeing_memory():
        pass
    assert freed == [True, True]  # with a GPU every run is followed by the collection and the cache's release


def test_warp_errors_of_later_edits_of_the_same_frames_reuse_the_source_flows(monkeypatch):
    from types import SimpleNamespace

    import ui.backend as backend_module
    from editing.metrics import warp_errors
    from tests.test_keyframes import panning_clip

    computed = []
    real = backend_module.source_flows
    monkeypatch.setattr(backend_module, "source_flows", lambda frames: computed.append(1) or real(frames))
    backend, source = backend_module.Backend(), panning_clip(4)
    edits = [np.roll(source, shift, axis=2) for shift in (1, 3)]  # two edits of the same source frames
    errors = [backend.warp_errors(None, SimpleNamespace(result=SimpleNamespace(images=e)), source) for e in edits]
    assert len(computed) == 1
    for edited, got in zip(edits, errors):
        np.testing.assert_array_equal(got, warp_errors(source, edited))
    backend.warp_errors(None, SimpleNamespace(result=SimpleNamespace(images=edits[0])), source[::-1].copy())
    assert len(computed) == 2  # other frames: their own flows


def test_stop_cancels_a_tuning_between_steps_and_saves_nothing(car, tmp_path, monkeypatch):
    from ui.backend import CancelToken
    from ui.oneshot_tab import run_tuning

    monkeypatch.setenv("EDITING_CACHE_DIR", str(tmp_path))
    token, steps = CancelToken(), []

    def press_stop_after_one_step(stage, done, total):
        if stage == "tune":
            steps.append(done)
            token.cancel()

    values = {"video": str(car), "prompt": "a car turning", "model": "tiny", "frames": 2, "size": 64, "steps": 5, "seed": 0}
    with pytest.raises(Cancelled, match="cancelled during tune"):
        run_tuning(values, press_stop_after_one_step, token)
    assert steps == [1] and not list(tmp_path.rglob("*.safetensors"))


def test_each_user_gets_a_fresh_cancel_token():
    import copy

    from ui.backend import CancelToken

    token = CancelToken()
    token.cancel()
    assert not copy.deepcopy(token).cancelled and token.cancelled


def test_the_demo_builds_on_cpu_with_named_api_endpoints():
    from ui import build_demo
    from ui.edit_tab import API_FIELDS, api_fields

    demo = build_demo(default_model="tiny")
    endpoints = demo.get_api_info()["named_endpoints"]
    names = [p["parameter_name"] for p in endpoints["/edit"]["parameters"]]
    assert names[: len(API_FIELDS)] == API_FIELDS and names == api_fields()  # then every other schema option
    assert {"sampler", "token_merge", "feature_bank", "preset"} <= set(names)
    assert {"/edit", "/preview_first_frame", "/condition_maps", "/session_presets", "/export_session", "/import_session"} <= set(
        endpoints
    )
    gpu_events = [d for d in demo.fns.values() if d.concurrency_id == "gpu"]
    assert len(gpu_events) >= 5 and all(d.concurrency_limit == 1 for d in gpu_events)
    assert demo.delete_cache and all(seconds > 0 for seconds in demo.delete_cache)  # served files are removed
    from ui.layout import QUEUE_SIZE

    assert demo._queue.max_size == QUEUE_SIZE


def test_gpu_decorator_uses_spaces_only_when_installed(monkeypatch):
    from ui.gpu import gpu

    def work():
        return 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails as if not installed
    assert gpu(work) is work
    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn: ("on a GPU", fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu(work) == ("on a GPU", work)


def test_app_options_default_to_localhost(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    import app

    args = app.parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    args = app.parse_args(["--host", "0.0.0.0", "--port", "8000", "--share", "--model", "tiny"])
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 8000, True, "tiny")


def test_editing_errors_are_one_line():
    from ui.forms import as_gradio_error

    assert as_gradio_error(EditingError("bad\n  input")).message == "bad input"
    assert as_gradio_error(KeyError("x")).message == "the edit failed: KeyError: 'x'"


def test_run_folders_older_than_the_limit_are_removed(tmp_path):
    import os
    import time

    from ui.backend import OUTPUT_MAX_AGE, fresh_output_dir

    old, recent = fresh_output_dir(tmp_path), fresh_output_dir(tmp_path)
    (tmp_path / os.path.basename(old) / "clip.mp4").write_bytes(b"x")
    past = time.time() - OUTPUT_MAX_AGE - 60
    os.utime(old, (past, past))
    new = fresh_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(p) for p in (recent, new))


def test_a_run_folder_removed_by_another_run_meanwhile_is_skipped(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from ui.backend import fresh_output_dir

    first = Path(fresh_output_dir(tmp_path))
    is_dir = Path.is_dir

    def removed_after_check(path):
        found = is_dir(path)
        if path == first:  # another run removes it between the check and the stat
            shutil.rmtree(path)
        return found

    monkeypatch.setattr(Path, "is_dir", removed_after_check)
    second = Path(fresh_output_dir(tmp_path))
    assert second.is_dir() and not first.exists()


def test_the_progress_bar_names_every_stage_the_pipeline_reports(car, tmp_path, monkeypatch):
    from editing.pipeline import STAGES, edit_video
    from ui.edit_tab import STAGE_LABELS, gradio_progress, request_from

    monkeypatch.setenv("EDITING_CACHE_DIR", str(tmp_path / "cache"))  # an empty cache: the inversion runs
    shown = []

    class Bar:
        def __call__(self, fraction, desc=None):
            shown.append((desc, fraction))

    request = request_from(
        {"video": str(car), "prompt": "a car", "control_kinds": ["canny"]} | SMALL | {"steps": 4, "keyframes": "off"},
        str(tmp_path),
    )
    edit_video(request, gradio_progress(Bar(), request))
    labels = {desc for desc, _ in shown}
    share = "2 of 4 steps (strength 0.5)"  # what runs of the Steps slider's 4, and why
    assert {"decoding", "condition maps", f"inversion: {share}", f"editing: {share}", "encoding"} <= labels
    assert {label.split(":")[0] for label in labels} <= set(STAGE_LABELS.values()) and set(STAGES) - {"encode_text"} <= set(
        STAGE_LABELS
    )
    assert any(desc == f"editing: {share}" and done == total == 2 for desc, (done, total) in shown)  # the bar reaches the end
    keyed = request_from(
        {"video": str(car), "prompt": "a car"} | SMALL | {"steps": 4}, str(tmp_path)
    )  # the default: keyframes, then propagation
    shown.clear()
    edit_video(keyed, gradio_progress(Bar(), keyed))
    assert {f"keyframes: inversion: {share}", f"keyframes: editing: {share}", "propagating the keyframes"} <= {
        desc for desc, _ in shown
    }
    full = request_from({"video": str(car), "prompt": "a car"} | SMALL | {"steps": 4, "strength": 1.0}, str(tmp_path))
    shown.clear()
    gradio_progress(Bar(), full)("denoise", 1, 4)
    assert shown == [("editing: 4 steps", (1, 4))]


def test_extra_formats_come_from_the_same_frames(car, tmp_path):
    import dataclasses

    from PIL import Image

    from editing.errors import ConfigError
    from editing.evaluate import read_png_zip
    from editing.pipeline import edit_video
    from editing.video_io import probe
    from ui.edit_tab import request_from

    request = request_from({"video": str(car), "prompt": "a car"} | SMALL | {"frames": 3}, str(tmp_path))
    result = edit_video(request)
    frames = read_png_zip(request.also_write[1])
    gif = Image.open(request.also_write[0])
    assert result.also_written == request.also_write and len(frames) == gif.n_frames == probe(result.output).frame_count == 3
    gif.seek(0)
    assert gif.size == (frames.shape[2], frames.shape[1])
    with pytest.raises(ConfigError, match="must end in"):
        dataclasses.replace(request, also_write=(str(tmp_path / "x.webm"),))


def test_one_shot_tab_tunes_then_edits_with_the_tuned_weights(car, skiing, tmp_path, monkeypatch):
    from editing.tuning import read_metadata
    from ui.backend import Backend, CancelToken
    from ui.oneshot_tab import run_tuning

    monkeypatch.setenv("EDITING_CACHE_DIR", str(tmp_path / "cache"))
    values = {
        "video": str(car),
        "prompt": "a car turning",
        "model": "tiny",
        "frames": 2,
        "size": 64,
        "steps": 3,
        "learning_rate": 1e-4,
        "seed": 0,
    }
    stages = []
    tuned = run_tuning(values, lambda stage, done, total: stages.append((stage, done, total)))
    assert ("tune", 3, 3) in stages and not tuned["reused"]
    assert read_metadata(tuned["path"])["settings"]["steps"] == 3
    assert run_tuning(values, lambda *a: None)["reused"]  # the same clip and settings: no second tuning

    from ui.edit_tab import make_handlers

    edit = make_handlers(Backend())["edit"]
    trim = {k: values[k] for k in ("video", "model", "frames", "size", "seed")}
    request_values = trim | {
        "prompt": "a bear",
        "steps": 2,
        "guidance": 1.0,
        "strength": 1.0,
        "inversion_prompt": values["prompt"],
        "token": CancelToken(),
    }
    video, _, _, details, *_ = edit(request_values, None, tuned=tuned["path"])
    assert (
        details["tuned"] == os.path.basename(tuned["path"]) and details["frames"] == 2
    )  # the file name only (issue 18, defect 8)
    with pytest.raises(EditingError, match="tuning prompt must not be empty"):
        run_tuning(values | {"prompt": ""}, lambda *a: None)

    from ui.oneshot_tab import check_tuned_for

    check_tuned_for(tuned["path"], str(car))  # the clip it was tuned on
    with pytest.raises(EditingError, match="made for another clip"):
        check_tuned_for(tuned["path"], str(skiing))
    with pytest.raises(EditingError, match="tune on the clip first"):
        check_tuned_for(None, str(car))


def test_one_shot_tab_passes_the_memory_options_to_the_tuning(car):
    from ui import build_demo
    from ui.forms import option_names
    from ui.oneshot_tab import run_tuning

    class Tuned:
        def to_dict(self):
            return {}

    requests = []
    values = {"video": str(car), "prompt": "a car turning", "model": "tiny", "frames": 2, "size": 64, "steps": 2}
    for extra in ({}, {"gradient_checkpointing": True, "mixed_precision": "bf16"}):
        run_tuning(values | extra, lambda *a: None, tune=lambda request, progress: requests.append(request) or Tuned())
    assert [(r.config.gradient_checkpointing, r.config.mixed_precision) for r in requests] == [(False, "no"), (True, "bf16")]
    endpoints = build_demo(default_model="tiny").get_api_info()["named_endpoints"]
    parameters = [p["parameter_name"] for p in endpoints["/tune"]["parameters"]]
    edit_tuned = [p["parameter_name"] for p in endpoints["/edit_tuned"]["parameters"]]
    assert (
        "video" in edit_tuned and "inversion_prompt" in edit_tuned and set(edit_tuned) <= {"video", *option_names("edit")}
    )  # the edit command's names
    assert parameters[-2:] == [
        "gradient_checkpointing",
        "mixed_precision",
    ]  # last, so positional calls made before they existed still work
    assert set(parameters) - {"video"} <= set(option_names("tune"))  # the tune command's own names, none renamed


def test_the_form_cannot_point_an_edit_at_a_weights_file(car, tmp_path):
    from editing.errors import ConfigError
    from ui.edit_tab import request_from

    with pytest.raises(ConfigError, match="unknown form fields: tuned"):
        request_from({"video": str(car), "prompt": "a cat", "model": "tiny", "tuned": "/etc/passwd"}, str(tmp_path))


def test_a_cancel_token_pickles_to_a_fresh_token():
    """spaces.GPU pickles handler arguments into its worker; a token holds a lock, so it must pickle by itself."""
    import pickle

    from ui.backend import CancelToken

    token = CancelToken()
    token.cancel()
    copy = pickle.loads(pickle.dumps({"token": token}))["token"]
    assert isinstance(copy, CancelToken) and not copy.cancelled and token.cancelled


def test_the_long_side_follows_the_model_in_every_tab():
    """Picking the shapes model sets Long side to the 64 px it draws; SD-1.x models and a spec that does
    not parse get the form's size (the edit itself says what is wrong); the app started with the shapes
    model starts its sliders at 64."""
    from editing.models import native_size
    from ui import build_demo
    from ui.widgets import FORM_SIZE

    demo = build_demo(default_model="tiny")
    labels = lambda blocks: [getattr(b, "label", None) for b in blocks]  # noqa: E731
    follows = [d for d in demo.fns.values() if labels(d.inputs) == ["Model"] and labels(d.outputs) == ["Long side (px)"]]
    assert len(follows) == 3  # the Edit, Style session and One-shot tabs
    for event in follows:
        assert event.fn("shapes") == native_size("shapes") < FORM_SIZE
        assert event.fn("stable-diffusion-v1-5/stable-diffusion-v1-5") == event.fn("./no-such-folder") == FORM_SIZE
        assert event.outputs[0].value == FORM_SIZE  # the slider starts at the default model's size (tiny: 256)
    shapes_default = build_demo(default_model="shapes")
    assert [b.value for b in shapes_default.blocks.values() if getattr(b, "label", None) == "Long side (px)"] == [
        native_size("shapes")
    ] * 3


def _first_frames(clip, count: int):
    import dataclasses

    return dataclasses.replace(clip, frames=clip.frames[:count], masks=clip.masks[:count], flow=clip.flow[: count - 1])


def test_the_shapes_examples_are_generated_clips_that_the_shapes_model_edits_as_asked(tmp_path):
    """The example rows: real clips with a style prompt for the app's model; the shapes clips are the
    benchmark's own clips, with one of the edits it derives for them, for the shapes model at its size.
    Run with the Edit tab's starting values, the example edit shows what it asks in most frames."""
    from pathlib import Path

    from editing.models import native_size
    from editing.pipeline import edit_video
    from editing.video_io import read_clip
    from shapes_world import benchmark as bench
    from ui import widgets
    from ui.backend import Backend
    from ui.edit_tab import create_tab, request_from

    shapes = widgets.examples("shapes")
    assert {Path(row[0]).name for row in shapes} == set(widgets.SHAPES_EXAMPLES) and widgets.examples("tiny") == shapes
    with gr.Blocks():
        form = create_tab(Backend(), "tiny")
    values = widgets.initial_values(form)
    for path, prompt, model, size in shapes:
        assert size == native_size(model)
        clip = bench.benchmark_clip(int(Path(path).stem.removeprefix("shapes-clip")), frames=16)
        decoded = read_clip(path, FrameSelection(max_frames=None, size=size)).frames
        assert decoded.shape == clip.frames.shape and np.abs(decoded.astype(int) - clip.frames).mean() < 4  # H.264 at crf 12
        edit = next(e for e in bench.derive_edits(clip) if e.prompt == prompt)
        request = request_from(values | {"video": path, "prompt": prompt, "model": model, "size": size}, str(tmp_path), (".mp4",))
        output = read_clip(edit_video(request).output, FrameSelection(max_frames=None, size=size)).frames
        assert bench.measure(_first_frames(clip, len(output)), output, edit)["edit_accuracy"] >= 0.75


# --- the app as a new user meets it (issue 20) ---------------------------------------------------------


def test_examples_suit_the_model_and_a_model_without_photo_weights_says_so():
    from editing.models import DEFAULT_MODEL, SHAPES_MODEL
    from ui import widgets

    photo = widgets.examples(DEFAULT_MODEL)
    assert photo and all(row[2] == DEFAULT_MODEL and row[1] == widgets.PHOTO_PROMPT for row in photo)
    assert not {Path(row[0]).name for row in photo} & set(widgets.SHAPES_EXAMPLES)
    for model in (SHAPES_MODEL, "tiny", "sd15-random"):
        rows = widgets.examples(model)
        assert rows and all(row[2] == SHAPES_MODEL for row in rows)  # no watercolor photo edit offered
        assert "cannot make a photo edit" in widgets.model_note(model)
    assert widgets.model_note(DEFAULT_MODEL) == "" and widgets.model_note("someone/sd-finetune") == ""


def test_the_style_tab_preselects_a_photo_style_only_for_a_photo_model():
    from editing.models import DEFAULT_MODEL
    from ui import build_demo

    def presets(model):
        return [b for b in build_demo(default_model=model).blocks.values() if getattr(b, "label", None) == "Style presets"][0]

    assert presets(DEFAULT_MODEL).value == ["watercolor"]
    shapes = presets("shapes")
    assert shapes.value == [] and "cannot make" in shapes.info


def test_the_model_choices_say_what_each_gives_and_keep_their_names():
    from editing.models import BUILTIN_MODELS, DEFAULT_MODEL, SHAPES_MODEL
    from ui import widgets

    choices = widgets.model_choices("tiny")
    assert [name for _, name in choices] == ["tiny", DEFAULT_MODEL, SHAPES_MODEL, *[m for m in BUILTIN_MODELS if m != "tiny"]]
    assert all(label != name and "\n" not in label and len(label) <= 70 for label, name in choices)
    assert widgets.model_choices("me/my-model")[0] == ("me/my-model", "me/my-model")  # a custom default shows as itself


CLIPS = sorted(p.name for p in (Path(__file__).resolve().parent.parent / "assets").iterdir() if p.suffix in (".mp4", ".avi"))


@pytest.mark.parametrize("name", CLIPS)
def test_every_example_clip_is_shown_through_a_preview_browsers_play(name, tmp_path):
    """A clip browsers play is shown as it is; any other (tree.avi: Cinepak in AVI) through an H.264 copy
    with the same frames, rate and size, made once per content."""
    from editing.video_io import probe, read_clip
    from ui.preview import browser_playable, preview_for

    clip = Path(__file__).resolve().parent.parent / "assets" / name
    shown = preview_for(clip, tmp_path)
    assert browser_playable(shown)
    if browser_playable(clip):
        assert shown == str(clip) and not list(tmp_path.iterdir())
        return
    source, preview = probe(clip), probe(shown)
    assert (preview.frame_count, preview.width, preview.height) == (source.frame_count, source.width, source.height)
    assert preview.fps == pytest.approx(source.fps, rel=1e-3)
    first = FrameSelection(max_frames=4, size=128)
    difference = np.abs(read_clip(shown, first).frames.astype(int) - read_clip(clip, first).frames).mean()
    assert difference < 3  # visually the same frames
    mtime = Path(shown).stat().st_mtime_ns
    assert preview_for(clip, tmp_path) == shown and Path(shown).stat().st_mtime_ns == mtime  # reused, not redone


def test_a_new_clip_shows_its_preview_or_says_once_what_is_wrong_with_the_file(tree, tmp_path):
    from ui.clip_upload import check_clip

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    shown, line, clip = check_clip(str(bad), str(tmp_path))
    assert shown is None and clip is None
    assert line.count("bad.mp4 is not a readable video") == 1 and "settings" not in line
    shown, line, clip = check_clip(str(tree), str(tmp_path))
    assert shown.endswith("-tree-preview.mp4") and line is None and clip == str(tree)  # edits read the upload itself
    assert check_clip(None) == (None, "Pick a clip to see how many frames it gives.", None)


TABS = {"Edit": "", "Style sessions": "session-", "One-shot tuning": "oneshot-"}


def _upload_events(demo, prefix: str):
    """A tab's upload: (the handler checking a new file, the handler keeping the line and buttons in step
    with the trim widgets, the Markdown line, the buttons that need a plan, those that need a clip)."""
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == f"{prefix}source-file")
    arrived = next(d for d in demo.fns.values() if d.inputs == [upload])
    follow = [d for d in demo.fns.values() if d.inputs and d.inputs[0] is arrived.outputs[2]]  # the readable clip's State
    assert len({d.fn for d in follow}) == 1 and all(
        d.preprocess is False and d.queue is False for d in follow
    )  # raw values, no Error badge
    return arrived, follow[0], arrived.outputs[1], follow[0].outputs[1:], arrived.outputs[3:]


def _returns(event, *args) -> list:
    """What `event`'s handler returns for each of its outputs (Gradio takes a lone output's value as it is)."""
    value = event.fn(*args)
    if len(event.outputs) == 1:
        assert not isinstance(value, (tuple, list)), value
        return [value]
    assert len(value) == len(event.outputs)
    return list(value)


def _buttons(demo, prefix: str) -> dict[str, gr.Button]:
    return {
        b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Button) and (b.elem_id or "").startswith(prefix or "run-")
    }


@pytest.mark.parametrize("tab", TABS)
def test_each_tab_says_once_what_is_wrong_with_a_bad_upload_and_runs_only_a_readable_clip(tab, tree, car, tmp_path):
    """Every tab takes its clip through the same upload: a bad file is said once, in the line under it, and
    the tab's run buttons stay off; tree.avi (Cinepak) shows through its H.264 preview and turns them on;
    the line follows the trim widgets and the buttons follow the line."""
    from editing.video_io import plan_frames, probe
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    prefix = TABS[tab]
    arrived, follow, line, needs_plan, needs_clip = _upload_events(demo, prefix)
    buttons = needs_plan + needs_clip
    assert buttons and all(not b.interactive for b in buttons)  # nothing to run before a clip
    assert {b.elem_id for b in buttons} >= {
        "Edit": {"run-edit", "run-preview"},
        "Style sessions": {"session-create"},
        "One-shot tuning": {"oneshot-tune", "oneshot-edit"},
    }[tab]
    trims = [b.value for b in follow.inputs[1:]]  # start, end, stride, frames, size as the tab starts
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    shown, said, clip, *enabled = _returns(arrived, str(bad))
    assert shown["visible"] is False and clip is None and said.count("not a readable video") == 1
    assert all(update["interactive"] is False for update in enabled)
    kept, *enabled = _returns(follow, clip, *trims)
    assert isinstance(kept, type(gr.skip())) and all(update["interactive"] is False for update in enabled)  # the message stays
    shown, said, clip, *enabled = _returns(arrived, str(tree))
    assert shown["value"].endswith("-tree-preview.mp4") and shown["visible"] and clip == str(tree)
    assert all(update["interactive"] for update in enabled)
    plan, *enabled = _returns(follow, clip, *trims)
    assert "from 68 source frames (320x240)" in plan and all(update["interactive"] for update in enabled)
    _, _, clip, *_ = _returns(arrived, str(car))
    plan, *_ = _returns(follow, clip, 0, 0, 2, 5, 128)
    assert plan_frames(probe(car), FrameSelection(stride=2, max_frames=5, size=128)).summary() in plan


def test_a_number_still_being_typed_gets_a_hint_not_an_error(car):
    """Retyping the Frames box passes through values its slider refuses ("1" on the way to "16", an empty box
    for "1-"): the line says what to type and the plan buttons wait, and no event fails (Gradio would badge
    the line "Error")."""
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    arrived, follow, _, needs_plan, _ = _upload_events(demo, "")
    _, _, clip, *_ = _returns(arrived, str(car))
    for frames in (1, None, 65, float("nan"), "1-"):
        hint, *enabled = _returns(follow, clip, 0, 0, 1, frames, 256)
        assert hint == "Frames: type a number from 2 to 64 to see the plan.", frames
        assert all(update["interactive"] is False for update in enabled)
    hint, *_ = _returns(follow, clip, -1, 0, 1, 8, 256)
    assert hint.startswith("Start (s): type a number of 0 or more")
    plan, *enabled = _returns(follow, clip, None, None, 1, 16, 256)  # blank number boxes keep their defaults
    assert "**16 frames" in plan and all(update["interactive"] for update in enabled)
    plan, *enabled = _returns(follow, clip, 0, 0.05, 1, 8, 256)  # a trim that keeps 1 frame: no plan, no edit
    assert plan.startswith("Cannot edit with these settings") and all(update["interactive"] is False for update in enabled)


def test_the_style_tab_runs_styles_only_with_a_session_open():
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    buttons = _buttons(demo, "session-")
    runs = [buttons["session-run-presets"], buttons["session-run-prompt"]]
    assert all(not b.interactive for b in runs)
    follow = next(d for d in demo.fns.values() if d.outputs == runs)
    assert [u["interactive"] for u in _returns(follow, "skier")] == [True, True] and [
        u["interactive"] for u in _returns(follow, None)
    ] == [False, False]


def test_stop_during_an_edit_says_where_it_stopped_and_keeps_the_shown_outputs(car, tmp_path):
    from editing.pipeline import edit_video
    from ui.backend import Backend, CancelToken
    from ui.edit_tab import make_handlers

    token = CancelToken()

    def stopped_at_step_two(request, progress):
        def report(stage, done, total):
            if stage.endswith("denoise") and done == 2:
                token.cancel()  # what the Stop button does
            progress(stage, done, total)

        return edit_video(request, report)

    edit = make_handlers(Backend(stopped_at_step_two, output_root=tmp_path))["edit"]
    values = {"video": str(car), "prompt": "a red car", "token": token} | SMALL | {"steps": 10, "strength": 0.6}
    *shown, run = edit(values, None)
    assert all(isinstance(value, type(gr.skip())) for value in shown)  # the page keeps the last result
    assert run == {
        "message": "Stopped at step 2/6 of keyframes: editing (6 of the 10 steps at strength 0.6); the last result is kept."
    }  # the default: keyframes first
    assert not token.cancelled  # the next edit starts clear
    *_, run = edit(values | {"steps": 2}, None)
    assert run["message"] == ""


def test_the_before_after_view_and_scrubber_show_the_same_frame_of_source_and_edit(car, tmp_path):
    from editing.evaluate import read_png_zip
    from editing.video_io import read_clip
    from ui.backend import Backend
    from ui.edit_tab import make_handlers, request_from, show_frame, show_run

    values = {"video": str(car), "prompt": "a red car"} | SMALL | {"frames": 3}
    video, gif, frames_zip, details, warp, run = make_handlers(Backend(output_root=tmp_path))["edit"](values, None)
    source = read_clip(str(car), request_from(values, str(tmp_path)).selection).frames
    edited = read_png_zip(frames_zip)
    message, pair, scrubber = show_run(run)
    assert message == "" and pair["visible"] and scrubber["maximum"] == 2 and scrubber["interactive"]
    np.testing.assert_array_equal(pair["value"][0], source[0])
    np.testing.assert_array_equal(pair["value"][1], edited[0])
    before, after = show_frame(2, run)
    np.testing.assert_array_equal(before, source[2])
    np.testing.assert_array_equal(after, edited[2])
    assert list(warp["frame pair"]) == ["0-1", "1-2"]  # whole frame pairs on the plot's axis


def test_the_one_shot_tab_lays_out_step_one_before_step_two():
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    tab = next(b for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.label == "One-shot tuning")

    def section(label):
        """The tab's child (a row of the page) holding the button, read top to bottom."""
        block = next(b for b in demo.blocks.values() if isinstance(b, gr.Button) and b.value == label)
        while block.parent is not tab:
            block = block.parent
        return tab.children.index(block)

    assert section("1. Tune on the clip") < section("2. Edit with the tuned model")  # stacked, not side by side


def test_keyframes_are_edited_then_propagated_in_two_stages(car, tmp_path):
    """'Edit keyframes' shows the keyframes and keeps them; 'Propagate' fills in the rest, its keyframe
    frames exactly the ones shown; another clip, or Propagate before any keyframes, is one sentence."""
    import gradio as gr
    from PIL import Image

    from editing.evaluate import read_png_zip
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    handlers = make_handlers(Backend(output_root=tmp_path))
    values = {"video": str(car), "prompt": "a red car"} | SMALL | {"frames": 5, "stride": 3, "keyframes": "2"}
    gallery, staged, message = handlers["keyframes"](dict(values), None)
    assert [caption for _, caption in gallery] == ["frame 0", "frame 2", "frame 4"] and "Propagate" in message
    video, gif, frames_zip, details, warp, run = handlers["propagate"](dict(values) | {"staged": staged}, None)
    frames = read_png_zip(frames_zip)
    assert len(frames) == 5 and details["keyframes"] == [0, 2, 4]
    for (image, _), index in zip(gallery, (0, 2, 4)):
        np.testing.assert_array_equal(frames[index], image)
    with pytest.raises(gr.Error, match="edit the keyframes first"):
        handlers["propagate"](dict(values), None)
    with pytest.raises(gr.Error, match="changed since the keyframes were edited"):
        handlers["propagate"](dict(values) | {"start": 1.0, "staged": staged}, None)
    # an uploaded edited keyframe for frame 2 is that keyframe, exactly
    red = np.tile(np.array([200, 30, 30], np.uint8), (64, 64, 1))
    Image.fromarray(red).save(tmp_path / "red.png")
    gallery, _, _ = handlers["keyframes"](
        dict(values) | {"keyframe_upload": str(tmp_path / "red.png"), "keyframe_index": 2}, None
    )
    np.testing.assert_array_equal(gallery[1][0], red)
    with pytest.raises(gr.Error, match="keyframe_index"):
        handlers["keyframes"](dict(values) | {"keyframe_upload": str(tmp_path / "red.png"), "keyframe_index": -1}, None)


def test_fast_preview_runs_the_same_edit_with_the_fast_preset_and_says_its_output_means_nothing(car, tmp_path):
    """The button's handler runs one edit of the form's clip and prompt with `--preset fast`: the preset's
    sampler, steps, guidance, SDEdit start, LoRA and tiny autoencoder replace the form's (here 2 DDIM steps,
    strength 0.5), and with the built-in random model the status line and details carry the preset's note."""
    from editing.pipeline import edit_video
    from editing.presets import PRESET_NOTE, get_preset
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    seen = []

    def recording(request, progress):
        seen.append(request)
        return edit_video(request, progress)

    handlers = make_handlers(Backend(recording, output_root=tmp_path))
    values = {"video": str(car), "prompt": "a red car", "seed": 3} | SMALL | {"sampler": "ddim", "inversion": "ddim"}
    video, gif, frames_zip, details, _warp, run = handlers["fast_preview"](values, None)
    (request,) = seen
    fast = get_preset("fast")
    assert (request.edit.sampler, request.edit.steps, request.edit.strength, request.edit.guidance) == (
        fast.sampler,
        fast.steps,
        fast.strength,
        fast.guidance,
    )
    assert (
        request.engine.inversion == "none"
        and request.engine.feature_bank == fast.feature_bank
        and request.model_options.vae == "tiny"
    )
    assert (request.edit.prompt, request.edit.seed, request.selection.max_frames) == ("a red car", 3, 2)  # the form's own
    note = PRESET_NOTE.format(name="fast", model="tiny", lora=fast.lora)
    assert details["preset_note"] == note and note in run["message"] and "means nothing" in run["message"]
    assert "lora=random" in details["model"] and Path(video).is_file() and Path(frames_zip).is_file() and run["frames"] == 2
    # the plain edit of the same values is not the preset's, and carries no preset note
    *_, plain_details, _, plain_run = handlers["edit"](values, None)
    assert seen[-1].edit.sampler == "ddim" and "preset_note" not in plain_details and plain_run["message"] == ""


def test_the_keyframes_box_blank_is_the_commands_default_and_off_edits_every_frame(car, tmp_path):
    from editing.config import DEFAULT_KEYFRAMES, parse_keyframes
    from editing.requests import build_request
    from ui.forms import make_request
    from ui.widgets import KEYFRAME_CHOICES

    cli = build_request("edit", {"video": str(car), "out": "o.mp4", "prompt": "a car"}).engine.keyframes_every
    chosen = {
        value: make_request({"prompt": "a car", "keyframes": value} | SMALL, str(car), str(tmp_path)).engine.keyframes_every
        for _, value in KEYFRAME_CHOICES
    }
    assert chosen == {"": cli, "off": 0, "auto": -1, "4": 4, "8": 8} and cli == parse_keyframes(DEFAULT_KEYFRAMES) != 0


# ---------------------------------------------------------------- issue 32, item 11: app state and words


def test_a_new_upload_clears_the_edited_keyframes_and_turns_propagate_off():
    """The previous clip's edited keyframes are neither shown nor kept for Propagate once another clip is uploaded."""
    from ui import build_demo

    demo = build_demo(default_model="tiny")
    upload = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "source-file")
    gallery = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "keyframes")
    propagate = _buttons(demo, "run-")["run-propagate"]
    cleared = [d for d in demo.fns.values() if (upload._id, "change") in d.targets and gallery in d.outputs]
    assert len(cleared) == 1
    (event,) = cleared
    values = dict(zip(event.outputs, _returns(event)))
    assert values[gallery] == [] and values[propagate]["interactive"] is False
    staged = next(b for b in event.outputs if isinstance(b, gr.State))
    assert values[staged] is None


def test_a_runs_warnings_are_shown_as_warnings_and_details_name_the_controlnet(car, tmp_path, monkeypatch):
    """A warning the edit reports (damaged audio left out) is a toast, not only a line inside Details, and
    Details says which ControlNet ran for each ticked kind."""
    import dataclasses

    from editing.pipeline import edit_video
    from ui import details as shown
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    said = "the source's audio could not be kept (damaged); car-turn-edited.mp4 is written without it"

    def with_damaged_audio(request, progress):
        return dataclasses.replace(edit_video(request, progress), warnings=(said,))

    toasts = []
    monkeypatch.setattr(shown.gr, "Warning", lambda message, *a, **k: toasts.append(message))
    handlers = make_handlers(Backend(with_damaged_audio, output_root=tmp_path))
    values = {"video": str(car), "prompt": "a red car", "control_kinds": ["canny"]} | SMALL
    *_, details, _, _ = handlers["edit"](values, None)
    assert toasts == [said] and details["warnings"] == [said]
    assert set(details["controlnets"]) == {"canny"} and details["controlnets"]["canny"].startswith("random")


def test_details_name_the_controlnet_each_model_runs(car, tmp_path):
    """Without loading anything: the shapes folder's own ControlNet, SD-1.5's registered default, a named one."""
    from editing.condition_kinds import get_condition_kind
    from editing.models import DEFAULT_MODEL
    from ui.details import controlnet_names
    from ui.forms import make_request, option_values

    def request_names(values):
        return controlnet_names(
            make_request(option_values({"prompt": "a car", "control_kinds": ["canny"]} | values), str(car), str(tmp_path))
        )

    assert request_names({"model": "shapes"}) == {"canny": "shapes/controlnet-canny"}
    assert request_names({"model": DEFAULT_MODEL}) == {"canny": get_condition_kind("canny").default_controlnet("sd15")}
    assert request_names({"model": DEFAULT_MODEL, "control_model": ["canny=owner/my-canny"]}) == {"canny": "owner/my-canny"}


def test_the_prompt_placeholder_suits_the_model():
    from ui import build_demo
    from ui.widgets import SHAPES_EXAMPLES

    demo = build_demo(default_model="shapes")
    prompt = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "prompt")
    assert prompt.placeholder in SHAPES_EXAMPLES.values()
    follow = next(d for d in demo.fns.values() if d.outputs == [prompt])
    assert _returns(follow, "shapes")[0]["placeholder"] in SHAPES_EXAMPLES.values()
    photo = _returns(follow, "stable-diffusion-v1-5/stable-diffusion-v1-5")[0]["placeholder"]
    assert photo not in SHAPES_EXAMPLES.values() and "watercolor" in photo


def test_a_session_with_one_edit_says_one_edit(tmp_path, car):
    from editing.sessions import Entry, SessionStore
    from ui.backend import Backend
    from ui.session_tab import SessionHandlers

    store = SessionStore(tmp_path / "sessions")
    handlers = SessionHandlers(store, Backend(output_root=tmp_path / "runs"))
    owner = handlers.owner_of(None)
    session = store.owned(owner).create("cars", car, "a car")
    assert "0 edits" in handlers.show(owner, "cars")[2]
    entry_id, folder = store.owned(owner).new_entry_dir(session)
    (folder / "edit.mp4").write_bytes(car.read_bytes())
    store.owned(owner).add_entry(session, Entry(entry_id, "a red car", {}, {".mp4": "edit.mp4"}, {}, None))
    status = handlers.show(owner, "cars")[2]
    assert "1 edit" in status and "1 edits" not in status


# ---------------------------------------------------------------- issue 32, item 5: every upload plays or gets a sentence


def _h264_clip(path: Path, damage: str | None = None) -> Path:
    """A 20-frame 64x64 H.264 mp4 (yuv420p: the container, codec and pixel format browsers play); `damage`
    "slices": random bytes over three of its slices (FFmpeg conceals them, Chromium stops with a decode
    error); "stream": the whole coded stream replaced by random bytes (the headers still probe)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "5", "crf": "20"}
        for i in range(20):
            frame = np.zeros((64, 64, 3), np.uint8) + np.array([i * 10, 100, 200], np.uint8)
            frame[10 + i : 30 + i, 10:30] = 255
            picture = av.VideoFrame.from_ndarray((frame + rng.integers(0, 30, frame.shape)).astype(np.uint8), format="rgb24")
            picture.pts = i
            out.mux(stream.encode(picture))
        out.mux(stream.encode())
    data = bytearray(path.read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    end = moov - 4 if moov > mdat else len(data)
    if damage == "slices":
        for k in range(3):
            data[mdat + 200 + 700 * k : mdat + 240 + 700 * k] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    elif damage == "stream":
        data[mdat + 4 : end] = rng.integers(0, 256, end - mdat - 4, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_an_h264_clip_with_stream_errors_is_shown_through_a_clean_preview_and_an_undecodable_one_gets_a_sentence(tmp_path):
    """Playability is judged by decoding: an mp4/H.264/yuv420p clip with damaged slices (FFmpeg conceals
    them, a browser refuses the file) is shown through a re-encoded preview that decodes with no error; a
    clip none of whose frames decode gets one sentence, and no button turns on."""
    from editing.video_io import probe
    from ui.clip_upload import check_clip
    from ui.preview import browser_playable, decodes_cleanly

    good = _h264_clip(tmp_path / "good.mp4")
    assert browser_playable(good) and check_clip(str(good), str(tmp_path)) == (str(good), None, str(good))
    damaged = _h264_clip(tmp_path / "damaged.mp4", "slices")
    assert probe(damaged).codec == "h264" and not decodes_cleanly(damaged) and not browser_playable(damaged)
    shown, line, clip = check_clip(str(damaged), str(tmp_path / "previews"))
    assert line is None and clip == str(damaged) and shown != str(damaged)
    assert decodes_cleanly(shown) and probe(shown).frame_count == 20
    noise = _h264_clip(tmp_path / "noise.mp4", "stream")
    assert probe(noise).frame_count == 20  # its headers still describe a clip
    shown, line, clip = check_clip(str(noise), str(tmp_path / "previews"))
    assert shown is None and clip is None
    assert line.count("noise.mp4 cannot be shown") == 1 and "\n" not in line


# ---------------------------------------------------------------- issue 32, item 4: a button that cannot run says why first


def _gate(demo):
    """The Edit tab's event keeping Fast preview, Propagate and the line under the buttons in step with the model and plan."""
    fast = _buttons(demo, "run-")["run-fast-preview"]
    return next(d for d in demo.fns.values() if d.outputs and d.outputs[0] is fast)


def test_fast_preview_is_off_and_says_why_where_its_preset_cannot_run(car, monkeypatch):
    """The button follows the preset's own check (editing.presets.apply_preset): with a preset the shapes model
    has no distilled LoRA for, it is off and the line under the buttons gives the preset's sentence before any
    click; with a model the preset runs on, it turns on with the plan."""
    from ui import build_demo, edit_tab

    monkeypatch.setattr(edit_tab, "FAST_PREVIEW", "tcd")  # a preset without a shapes LoRA
    refused = edit_tab.preset_refusal("shapes")
    assert refused.startswith("preset tcd needs an SD-1.x model") and edit_tab.preset_refusal("tiny") is None
    demo = build_demo(default_model="shapes")
    note = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "button-note")
    assert note.visible and refused in note.value  # said before any click
    gate = _gate(demo)
    arrived, *_ = _upload_events(demo, "")
    _, _, clip, *_ = _returns(arrived, str(car))
    fast, propagate, line = _returns(gate, "shapes", None, clip, 0, 0, 1, 4, 64)
    assert fast["interactive"] is False and propagate["interactive"] is False and refused in line["value"] and line["visible"]
    fast, _, line = _returns(gate, "tiny", None, clip, 0, 0, 1, 4, 64)
    assert fast["interactive"] is True and line["visible"] is False
    fast, _, _ = _returns(gate, "tiny", None, None, 0, 0, 1, 4, 64)  # no clip yet: off, as every run button
    assert fast["interactive"] is False


def test_propagate_and_condition_maps_stay_off_for_a_clip_that_gives_one_frame(tmp_path):
    """A one-frame clip is refused at upload (the line says why): Propagate and Preview condition maps are off
    like the run buttons, also when keyframes of an earlier clip are kept."""
    import av

    from ui import build_demo

    one = tmp_path / "one.mp4"
    with av.open(str(one), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")))
        out.mux(stream.encode())
    demo = build_demo(default_model="tiny")
    arrived, follow, _, needs_plan, _ = _upload_events(demo, "")
    buttons = _buttons(demo, "run-")
    assert buttons["run-conditions"] in needs_plan and not buttons["run-conditions"].interactive
    _, line, clip, *_ = _returns(arrived, str(one))
    assert line.count("has 1 frame") == 1 and clip is None
    _, *enabled = _returns(follow, clip, 0, 0, 1, 8, 64)
    assert all(update["interactive"] is False for update in enabled)
    fast, propagate, _ = _returns(_gate(demo), "tiny", object(), clip, 0, 0, 1, 8, 64)  # keyframes kept from before
    assert fast["interactive"] is False and propagate["interactive"] is False


def test_style_presets_say_before_running_what_they_give_with_the_model():
    from editing.models import DEFAULT_MODEL
    from ui import build_demo

    demo = build_demo(default_model="shapes")
    presets = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "session-presets")
    assert "return the source unchanged" in presets.info
    follow = next(d for d in demo.fns.values() if d.outputs == [presets])
    assert "return the source unchanged" in _returns(follow, "shapes")[0]["info"]
    assert "draws noise" in _returns(follow, "tiny")[0]["info"]
    assert _returns(follow, DEFAULT_MODEL)[0]["info"] == ""


def _request_with(monkeypatch, *fields):
    """The edit command's request with `fields` (name, type, dataclasses.field) added, as a contributor would add them."""
    import dataclasses

    from editing import requests

    added = dataclasses.make_dataclass("HintedRequest", list(fields), bases=(requests.EditRequest,), frozen=True)
    monkeypatch.setitem(requests.COMMANDS, "edit", added)


def test_an_option_added_to_the_schema_is_a_widget_with_its_default_range_and_hint(monkeypatch):
    """A new field's default, range and app hint reach the widgets and the /edit API; a hint without its reason is refused."""
    from dataclasses import field

    from editing import requests
    from ui import build_demo, hints

    _request_with(
        monkeypatch,
        ("probe_sharpness", float, field(default=0.25, metadata={"help": "a probe", "range": "[0, 2]"})),
        (
            "probe_passes",
            int,
            field(
                default=40, metadata={"help": "a probe", "range": "[1, inf)", "app": {"default": 3, "max": 10, "why": "a test"}}
            ),
        ),
        ("probe_hidden", int, field(default=1, metadata={"help": "a probe", "app": {"api": False, "why": "a test"}})),
    )
    sharpness = hints.slider("probe_sharpness")
    passes = hints.slider("probe_passes")
    assert (sharpness.minimum, sharpness.maximum, sharpness.value) == (0, 2, 0.25)  # the schema's own
    assert (passes.minimum, passes.maximum, passes.step, passes.value) == (1, 10, 1, 3)  # the hint's, over the schema's
    assert hints.differences()["probe_passes"] == (40, 3, "a test")
    parameters = {
        p["parameter_name"]: p for p in build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    }
    assert parameters["probe_sharpness"]["parameter_default"] == 0.25 and parameters["probe_passes"]["parameter_default"] == 3
    assert "probe_hidden" not in parameters
    _request_with(monkeypatch, ("probe_bad", int, field(default=1, metadata={"help": "a probe", "app": {"default": 2}})))
    with pytest.raises(TypeError, match="probe_bad: app hints take .* with a 'why'"):
        requests.options("edit")


def test_the_forms_defaults_are_the_cli_defaults_but_the_declared_hints(car, tmp_path):
    """The untouched /edit form makes the CLI's default request with only the schema's declared app hints
    changed; the hints are the ones the app has always shown (fewer steps, frames and pixels, a lower
    strength, and the Region tab's margin and soft edge for a drawn mask)."""
    import dataclasses

    from editing import requests
    from ui import build_demo, hints
    from ui.edit_tab import request_from

    parameters = build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    form = {p["parameter_name"]: p["parameter_default"] for p in parameters if p["parameter_has_default"]}
    form |= {"video": str(car), "prompt": "a cat"}
    made = request_from(form, str(tmp_path), (".mp4",))
    declared = {name: app for name, (_, app, _) in hints.differences().items()}
    assert declared == {"steps": 10, "strength": 0.6, "frames": 8, "size": 256, "mask_grow": 2, "mask_feather": 3}
    cli = requests.edit_request(
        requests.defaults("edit") | declared | {"video": str(car), "out": made.output, "prompt": "a cat", "model": "tiny"}
    )
    assert dataclasses.replace(made, also_write=()) == cli
    undeclared = requests.edit_request(
        requests.defaults("edit") | {"video": str(car), "out": made.output, "prompt": "a cat", "model": "tiny"}
    )
    assert made != undeclared  # the control: the hints do change the form's request
