"""The batch command and the app on a Ray cluster the tests start here (2 CPUs, tiny model, 2-5 frames, 2 steps).

Properties: a batch on two workers gives each edit what the single-process edit gives; a failed edit is
reported and the others finish; a worker that dies is replaced and its edit re-run, a bounded number of
times; a rerun skips what is done (and only that); a long clip split across workers (segments of whole
chunks, or keyframes then propagation segments) equals the single-process edit; on a cluster with GPUs
each worker holds one; the app with --ray serves an edit and Stop cancels the Ray task. Without --ray
the batch never imports Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from editing.config import KeyframeImage

from .conftest import ASSETS, ROOT, small_edit

BASE = {
    "model": "tiny",
    "device": "cpu",
    "size": 64,
    "steps": 2,
    "guidance": 3.0,
    "stride": 4,
    "keyframes": "off",
}  # every frame unless an edit names its keyframes


def _spec(tmp_path: Path, edits: list[dict], name: str = "spec.yaml", **defaults) -> Path:
    import yaml

    path = tmp_path / name
    settings = {**BASE, "frames": 2, "cache_dir": str(tmp_path / "cache"), **defaults}
    path.write_text(yaml.safe_dump({"defaults": settings, "edits": edits}), encoding="utf-8")
    return path


def _edits(spec: Path, out: Path):
    from editing.batch import batch_edits
    from editing.evaluate import load_spec

    return batch_edits(load_spec(spec, clip="none"), out, ".zip")


def _single_process(edit, tmp_path: Path) -> np.ndarray:
    """The same request edited in this process, from a cache of its own (nothing shared with the batch)."""
    from editing.pipeline import edit_video

    engine = dataclasses.replace(edit.request.engine, cache_dir=str(tmp_path / "own-cache"))
    request = dataclasses.replace(edit.request, engine=engine, output=str(tmp_path / f"single-{edit.name}.zip"))
    return edit_video(request).images


def _frames(path) -> np.ndarray:
    from editing.evaluate import read_png_zip

    return read_png_zip(path)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal within 1 level of 255 (float sums may round differently in another batch composition)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def test_the_batch_and_the_app_without_ray_run_here_and_never_import_ray(tmp_path):
    """One fresh interpreter (Ray must not be imported by anything): the batch runs its edit in this
    process, then the app's backend is the plain in-process one."""
    spec = _spec(tmp_path, [{"name": "car", "video": str(ASSETS / "car-turn.mp4"), "prompt": "a red car"}])
    code = textwrap.dedent(
        f"""
        import sys
        from editing.cli import main
        code = main(["batch", {str(spec)!r}, "--out", {str(tmp_path / "out")!r}, "--format", "zip"])
        batch_ray = "ray" in sys.modules
        import app
        from editing.pipeline import edit_video
        backend = app.build_backend(app.parse_args([]))
        print(code, batch_ray, backend.concurrency, backend.edit_fn is edit_video, "ray" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.split()[-5:] == ["0", "False", "1", "True", "False"], result.stderr[-800:]
    import json

    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [(r["name"], r["status"], r["worker"]) for r in rows] == [("car", "ok", "local")]
    assert (tmp_path / "out" / "car.zip").is_file() and "[ok] car" in result.stderr


def test_split_edit_splits_independent_modes_only():
    """`first` and `none` split into segments of whole chunks, each holding the anchor, that keep every
    frame exactly once; sequential modes and settings stay one task and say why."""
    from editing.batch import assemble, split_edit

    request = small_edit(Path("/tmp"), "x", chunk=3)
    for attention in ("first", "none"):
        tasks = split_edit(dataclasses.replace(request, engine=dataclasses.replace(request.engine, attention=attention)), 10, 3)
        assert len(tasks.segments) == 3
        assert sorted(f for s in tasks.segments for f in s.keeps) == list(range(10))
        assert all(0 in s.frames and set(s.keeps) <= set(s.frames) for s in tasks.segments)
        outputs = [
            np.array(s.frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8) for s in tasks.segments
        ]
        assert assemble(10, tasks.segments, outputs)[:, 0, 0, 0].tolist() == list(range(10))
    assert len(split_edit(request, 3, 4).segments) == 1  # one chunk: nothing to split
    assert len(split_edit(request, 10, 1).segments) == 1  # one worker
    for engine, reason in (
        ({"attention": "sparse-causal"}, "sparse-causal needs"),
        ({"attention": "window"}, "window needs"),
        ({"feature_bank": 2}, "feature bank"),
        ({"smooth_flow": True}, "flow smoothing"),
    ):
        tasks = split_edit(dataclasses.replace(request, engine=dataclasses.replace(request.engine, **engine)), 10, 3)
        assert len(tasks.segments) == 1 and reason in tasks.note and "run in order" in tasks.note


def test_propagation_tasks_give_each_segment_its_bounding_keyframes_and_the_frames_between():
    from editing.batch import assemble, propagation_tasks

    tasks = propagation_tasks((0, 4, 8), 11, 2)
    keyframes, *segments = tasks.segments
    assert (keyframes.kind, keyframes.frames, keyframes.keeps) == ("keyframes", (0, 4, 8), (0, 4, 8))
    assert [(s.kind, s.frames, s.keeps) for s in segments] == [
        ("propagate", (0, 1, 2, 3, 4), (1, 2, 3)),
        ("propagate", (4, 5, 6, 7, 8, 9, 10), (5, 6, 7, 9, 10)),  # the frames after the last keyframe too
    ]
    assert "keyframes 0, 4, 8 edited in one task, then 2 propagation segments in parallel (frames 0-4, 4-10)" == tasks.note
    outputs = [np.array(s.frames, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8) for s in tasks.segments]
    assert assemble(11, tasks.segments, outputs)[:, 0, 0, 0].tolist() == list(range(11))
    # more spans than workers: consecutive spans grouped by frames to propagate; fewer: one span each
    assert [s.frames[:: len(s.frames) - 1] for s in propagation_tasks((0, 8, 16, 24), 30, 3).segments[1:]] == [
        (0, 8),
        (8, 16),
        (16, 29),
    ]
    assert [s.frames for s in propagation_tasks((2, 5), 9, 8).segments[1:]] == [(0, 1, 2), (2, 3, 4, 5), (5, 6, 7, 8)]
    assert [s.frames for s in propagation_tasks((0,), 4, 2).segments[1:]] == [(0, 1, 2, 3)]
    assert propagation_tasks((0, 1, 2), 3, 2).segments == (
        propagation_tasks((0, 1, 2), 3, 2).segments[0],
    )  # nothing to propagate


def test_split_edit_runs_keyframes_first_when_there_are_workers_to_share():
    from editing.batch import KEYFRAMES_NOTE, split_edit

    request = small_edit(Path("/tmp"), "x", chunk=3, keyframes="4")
    tasks = split_edit(request, 10, 2)
    assert [(s.kind, s.frames) for s in tasks.segments] == [("keyframes", tuple(range(10)))] and tasks.note == KEYFRAMES_NOTE
    causal = dataclasses.replace(request, engine=dataclasses.replace(request.engine, attention="sparse-causal", keyframes="auto"))
    assert split_edit(causal, 10, 2).segments[0].kind == "keyframes"  # the keyframes' attention stays inside their task
    assert [s.kind for s in split_edit(request, 10, 1).segments] == ["edit"]  # one worker: the whole edit in one task
    pinned = dataclasses.replace(
        request, engine=dataclasses.replace(request.engine, keyframes=None, keyframe_images=(KeyframeImage(0, "k.png"),))
    )
    tasks = split_edit(pinned, 10, 2)
    assert len(tasks.segments) == 1 and "keyframe-image without --keyframes" in tasks.note


KEYFRAME_EDIT = {"video": str(ASSETS / "man-skiing.mp4"), "keyframes": "3", "keyframe_refine": 0.5}  # 5 frames: keys 0, 3


def test_keyframes_then_propagation_segments_in_one_process_equal_the_whole_edit(tmp_path):
    """The split's stages run here one after another (no Ray): keyframes, each propagation segment on its
    own frames, assembled. Equal to the edit in one call: bit for bit except where refinement batched
    other frames together. Keyframe 3's refinement group holds frames 2 and 4, of both segments: in one
    batch of 3 in the whole edit, in two batches of 2 when split, so float sums run in another order
    there (within 1 level, and only in the refined pixels)."""
    from editing.batch import assemble, propagation_input, propagation_tasks
    from editing.core import StageTimer
    from editing.keyframes import Keyframes, clip_flows, composite_mask, fuse_frame
    from editing.pipeline import edit_here, keyframes_here, propagating
    from editing.video_io import read_clip

    request = dataclasses.replace(
        small_edit(tmp_path, "kf", frames=5, keyframes="3", keyframe_refine=0.5), video=KEYFRAME_EDIT["video"]
    )
    frames = read_clip(request.video, request.selection, request.limits).frames
    quiet = lambda stage, done, total: None  # noqa: E731
    whole = edit_here(frames, request, quiet, StageTimer())[0].frames
    keyed, _ = keyframes_here(frames, request, quiet, StageTimer())
    assert keyed.keyframes == (0, 3) and len(keyed.frames) == 2
    tasks = propagation_tasks(keyed.keyframes, len(frames), 2)
    assert [s.frames for s in tasks.segments[1:]] == [(0, 1, 2, 3), (3, 4)]
    outputs = [keyed.frames]
    for segment in tasks.segments[1:]:
        source, staged = propagation_input(segment, keyed.keyframes, keyed.frames, frames)
        outputs.append(propagating(staged)(source, request, quiet, StageTimer())[0].frames)
    split = assemble(5, tasks.segments, outputs)

    flows, made = clip_flows(frames), Keyframes(keyed.keyframes, keyed.frames)
    fused = {f: fuse_frame(f, made, flows) for f in (1, 2, 4)}
    assert [(fused[f].nearest, bool(fused[f].unseen.any())) for f in (1, 2, 4)] == [(0, True), (3, True), (3, True)]
    np.testing.assert_array_equal(split[[0, 1, 3]], whole[[0, 1, 3]])  # keyframes; frame 1's group (keyframe 0) is the same
    assert _close(split, whole)
    for frame in (2, 4):
        refined = composite_mask(fused[frame].unseen) > 0
        np.testing.assert_array_equal(split[frame][~refined], whole[frame][~refined])


# ---------------------------------------------------------------- on a local Ray cluster


def test_on_a_cluster_with_gpus_each_worker_holds_one(tmp_path):
    """A CPU machine declaring 2 logical GPUs: the pool starts one worker per GPU (each asking for
    num_gpus=1, no CPU), Ray gives each its own GPU, and an edit on CPU still runs on them. In its own
    process, on its own cluster (the module's cluster has no GPUs)."""
    pytest.importorskip("ray")
    code = textwrap.dedent(
        f"""
        import json, ray
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=100 * 2**20, configure_logging=False, log_to_driver=False)
        from editing.distributed import WorkerPool, placement
        from editing.video_io import read_clip
        from tests.conftest import small_edit
        pool = WorkerPool()
        actors = [pool.idle.get() for _ in range(pool.count)]
        gpus = sorted(str(i["gpus"]) for i in ray.get([a.info.remote() for a in actors]))
        request = small_edit(__import__("pathlib").Path({str(tmp_path)!r}), "gpu", frames=2)
        frames = read_clip(request.video, request.selection, request.limits).frames
        payload = ray.get(actors[1].edit.remote(frames, request))
        print(json.dumps({{"count": pool.count, "resources": pool.resources, "capped": placement(1), "gpus": gpus,
                          "status": payload["status"], "shape": list(payload["edited"].frames.shape) if payload["status"] == "ok" else payload}}))
        pool.close()
        ray.shutdown()
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=400)
    import json

    assert result.returncode == 0, result.stderr[-1500:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["count"], report["resources"]) == (2, {"num_gpus": 1, "num_cpus": 0})
    assert report["capped"] == [1, {"num_gpus": 1, "num_cpus": 0}]  # --workers 1 on 2 GPUs: one worker
    assert report["gpus"] == ["[0]", "[1]"]  # one GPU each, not shared
    assert (report["status"], report["shape"]) == ("ok", [2, 64, 64, 3])  # the edit itself on the CPU (device cpu)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, configure_logging=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_a_long_clip_split_across_workers_equals_the_single_process_edit(cluster, tmp_path):
    """5 frames in chunks of 2 under `first` run as 2 segments on 2 workers; sparse-causal runs in order
    as one task and the batch says so; both equal the edit made in one process.

    Through the command line, which starts its own 2 workers: it runs before the shared `pool` below
    takes the cluster's 2 CPUs (pytest keeps the file's order)."""
    import json

    from editing.cli import main

    car = str(ASSETS / "car-turn.mp4")
    clips = [
        {"name": "first", "video": car, "prompt": "a red car", "attention": "first"},
        {"name": "causal", "video": car, "prompt": "a red car", "attention": "sparse-causal"},
        {
            "name": "sdedit",
            "video": car,
            "prompt": "a red car",
            "attention": "first",
            "inversion": "none",
            "strength": 0.7,
            "seed": 3,
        },
    ]
    out = tmp_path / "out"
    spec = _spec(tmp_path, clips, frames=5, chunk=2)
    edits = _edits(spec, out)
    # The command line's path: `batch --ray local` joins the cluster this process already runs.
    assert main(["batch", str(spec), "--out", str(out), "--format", "zip", "--ray", "local", "--workers", "2"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert (report["ray"], report["workers"]) == ("local", 2)
    rows = {row["name"]: row for row in report["rows"]}
    assert [rows[n]["segments"] for n in ("first", "causal", "sdedit")] == [2, 1, 2]
    assert len(rows["first"]["worker"].split(",")) == 2  # the two segments ran on both workers
    assert any("causal" in note and "run in order" in note for note in report["notes"])
    for edit in edits:
        assert rows[edit.name]["status"] == "ok", rows[edit.name]
        assert _close(_frames(edit.request.output), _single_process(edit, tmp_path)), edit.name


@pytest.fixture(scope="module")
def pool(cluster):
    """Two CPU workers shared by the tests (each worker imports torch and builds the tiny model once)."""
    from editing.distributed import WorkerPool

    workers = WorkerPool(2)
    try:
        yield workers
    finally:
        workers.close()


def test_batch_on_two_workers_reports_a_failure_and_resumes(pool, tmp_path):
    from editing import distributed
    from editing.batch import run_batch

    (tmp_path / "not-a-model").mkdir()
    clips = [
        {"name": "car", "video": str(ASSETS / "car-turn.mp4"), "prompt": "a red car"},
        {"name": "skier", "video": str(ASSETS / "man-skiing.mp4"), "prompt": "an oil painting"},
        {"name": "broken", "video": str(ASSETS / "car-turn.mp4"), "prompt": "a car", "model": str(tmp_path / "not-a-model")},
    ]
    out = tmp_path / "out"
    edits = _edits(_spec(tmp_path, clips), out)
    report = run_batch(edits, out, distributed.batch_runner(pool=pool))
    rows = {row["name"]: row for row in report.rows}
    assert [rows[n]["status"] for n in ("car", "skier", "broken")] == ["ok", "ok", "failed"]
    assert "no model_index.json" in rows["broken"]["error"]
    assert len({rows["car"]["worker"], rows["skier"]["worker"]}) == 2  # both workers ran edits
    for edit in edits[:2]:
        assert _close(_frames(edit.request.output), _single_process(edit, tmp_path))
    assert (out / "results.csv").read_text().count("\n") == 4 and report.failures == 1

    # Rerun: the done edits are skipped (outputs untouched), the failed one runs again.
    stamp = {e.name: os.stat(e.request.output).st_mtime_ns for e in edits[:2]}
    report = run_batch(edits, out, distributed.batch_runner(pool=pool))
    assert [r["status"] for r in report.rows] == ["skipped", "skipped", "failed"]
    assert {e.name: os.stat(e.request.output).st_mtime_ns for e in edits[:2]} == stamp
    # Another prompt for the skier, and a damaged output for the car: both are edited again.
    clips[1]["prompt"] = "a pencil sketch"
    Path(edits[0].request.output).write_bytes(b"damaged")
    edits = _edits(_spec(tmp_path, clips[:2], "changed.yaml"), out)
    report = run_batch(edits, out, distributed.batch_runner(pool=pool))
    assert [r["status"] for r in report.rows] == ["ok", "ok"]
    assert _close(_frames(edits[1].request.output), _single_process(edits[1], tmp_path))


def test_a_keyframe_edit_split_over_two_workers_equals_the_single_process_edit(pool, tmp_path):
    """Keyframes in one task, then the propagation segments on both workers, assembled: equal to the
    edit made in one process, and the results say how it was split. A second keyframe edit (auto) runs
    alongside, so one edit's stages interleave with the other's."""
    from editing import distributed
    from editing.batch import run_batch

    clips = [
        {"name": "every3", "prompt": "an oil painting", **KEYFRAME_EDIT},
        {"name": "auto", "video": str(ASSETS / "car-turn.mp4"), "prompt": "a red car", "keyframes": "auto", "seed": 5},
    ]
    out = tmp_path / "out"
    edits = _edits(_spec(tmp_path, clips, frames=5), out)
    report = run_batch(edits, out, distributed.batch_runner(pool=pool))
    rows = {row["name"]: row for row in report.rows}
    assert [rows[n]["status"] for n in ("every3", "auto")] == ["ok", "ok"], rows
    assert rows["every3"]["segments"] == 3  # the keyframes' task and 2 propagation segments
    assert (
        "keyframes 0, 3 edited in one task, then 2 propagation segments in parallel (frames 0-3, 3-4)" in rows["every3"]["note"]
    )
    assert any(n.startswith("every3: keyframes 0, 3 edited in one task") for n in report.notes)
    assert "edited in one task, then" in rows["auto"]["note"]
    for edit in edits:
        assert _close(_frames(edit.request.output), _single_process(edit, tmp_path)), edit.name


def dying_editor(frames, request, progress, timer):
    """Runs the edit, except that the worker process dies for prompts starting with 'die': once for
    'die once' (a marker in the cache folder remembers), always for 'die always'."""
    from editing.pipeline import edit_here

    prompt = request.edit.prompt
    marker = Path(request.engine.cache_dir) / f"died-{prompt.replace(' ', '-')}"
    if prompt == "die always" or (prompt == "die once" and not marker.exists()):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)
    return edit_here(frames, request, progress, timer)


def test_a_dead_worker_is_replaced_and_its_edit_retried_a_bounded_number_of_times(pool, tmp_path):
    from editing import distributed
    from editing.batch import run_batch

    car = str(ASSETS / "car-turn.mp4")
    clips = [
        {"name": n, "video": car, "prompt": p} for n, p in (("once", "die once"), ("always", "die always"), ("fine", "a red car"))
    ]
    out = tmp_path / "out"
    edits = _edits(_spec(tmp_path, clips), out)
    report = run_batch(edits, out, distributed.batch_runner(retries=1, editor=dying_editor, pool=pool))
    rows = {row["name"]: row for row in report.rows}
    assert (rows["once"]["status"], rows["once"]["attempts"]) == ("ok", 2)
    assert (rows["always"]["status"], rows["always"]["attempts"]) == ("failed", 2)
    assert "worker died 2 times" in rows["always"]["error"]
    assert rows["fine"]["status"] == "ok" and _close(_frames(edits[2].request.output), _single_process(edits[2], tmp_path))
    assert _close(_frames(edits[0].request.output), _single_process(edits[0], tmp_path))


def _recording_editor(record: str, frames, request, progress, timer):
    """The worker's edit, writing to `record` how it ended (done, or the Cancelled message)."""
    from editing.errors import Cancelled
    from editing.pipeline import edit_here

    try:
        result = edit_here(frames, request, progress, timer)
    except Cancelled as exc:
        Path(record).write_text(f"cancelled: {exc}")
        raise
    Path(record).write_text("done")
    return result


def test_the_app_with_ray_serves_an_edit_and_stop_cancels_the_ray_task(pool, tmp_path, car):
    from gradio_client import Client, handle_file

    from editing.errors import Cancelled
    from ui import build_demo
    from ui.backend import CancelToken, ray_backend

    from .test_app import _free_port

    record = tmp_path / "record.txt"
    backend = ray_backend("auto", editor=functools.partial(_recording_editor, str(record)), pool=pool)
    assert backend.concurrency == 2  # one GPU job per worker at once
    demo = build_demo(default_model="tiny", backend=backend)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        video, gif, frames_zip, details, warp = client.predict(
            video=handle_file(str(car)), prompt="a red car", model="tiny", frames=2, size=64, steps=2, api_name="/edit"
        )
        assert video.endswith(".mp4") and record.read_text() == "done"  # a worker made it
        assert details["frames"] == 2 and len(_frames(frames_zip)) == 2

        # Stop: the app's token makes its progress callback raise Cancelled; the Ray task is cancelled
        # and the worker's edit stops at its next step (it records Cancelled, not done).
        token, stages = CancelToken(), []

        def progress(stage, done, total):
            stages.append(stage)
            if stage.endswith("denoise") and done >= 1:
                token.cancel()

        long_edit = dataclasses.replace(
            small_edit(tmp_path, "stopped", frames=2), edit=dataclasses.replace(small_edit(tmp_path, "x").edit, steps=40)
        )
        with pytest.raises(Cancelled):
            backend.edit(long_edit, progress, token)
        assert "load_model" in stages and "denoise" in stages  # the worker's progress reached the app
        deadline = time.monotonic() + 60
        while not record.read_text().startswith("cancelled") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert record.read_text().startswith("cancelled: the run was cancelled during denoise")
        assert not Path(long_edit.output).exists()
    finally:
        demo.close()
