"""Edits on a Ray cluster: the batch's edits (and the segments of a long clip) and the app's GPU jobs.

Imported only with `--ray`. Each worker is a Ray actor that keeps its loaded backbones (the in-process
model cache of `editing.models`), one per GPU (`num_gpus=1`), or `workers` CPU actors on a cluster
without GPUs. Frames travel to the workers and back through Ray's object store; the driver decodes the
clips and writes the outputs, so only paths the request itself names (local models, tuned weights,
condition videos) must be readable on every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, TaskCancelledError

from . import video_io
from .batch import (
    BatchEdit,
    BatchProgress,
    EditTasks,
    Run,
    assemble,
    describe,
    failed_row,
    propagation_input,
    propagation_tasks,
    result_row,
    segment_request,
    split_edit,
)
from .context import ProgressFn, StageTimer
from .errors import Cancelled, EditingError
from .pipeline import EditRequest, EditResult, FramesEditor, ModelInfo, edit_here, keyframes_here, propagating, write_outputs

log = logging.getLogger(__name__)

RETRIES = 2  # times an edit (or a segment) is re-run after its worker died
WAIT_SECONDS = 0.5  # how often the driver looks for finished tasks (and Stop) while none reports


# ---------------------------------------------------------------- the cluster


def connect(address: str, workers: int | None = None, object_store_mb: int | None = None) -> None:
    """Join the cluster at `address` (`auto`: the one this machine runs), or start one here (`local`).

    A cluster already joined by this process (a test's `ray.init`) is used as it is."""
    if ray.is_initialized():
        return
    options = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if address == "local":
        if workers:
            options["num_cpus"] = max(workers, os.cpu_count() or 1)
        if object_store_mb:
            options["object_store_memory"] = object_store_mb * 2**20
        ray.init(**options)
    else:
        options.pop("include_dashboard")
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EditingError(f"could not join the Ray cluster at {address}: {' '.join(str(exc).split())[:200]}") from exc


def placement(workers: int | None = None) -> tuple[int, dict]:
    """How many workers to start and the resources each asks for: one per GPU of the cluster (at most
    `workers`), else `workers` (default 2) CPU workers."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return min(gpus, workers or gpus), {"num_gpus": 1, "num_cpus": 0}
    return max(1, workers or 2), {"num_cpus": 1}


@ray.remote
class EditWorker:
    """One worker: runs the core on frames sent to it, keeping the backbones it loaded between edits."""

    def info(self) -> dict:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "gpus": ray.get_gpu_ids()}

    def edit(self, frames: np.ndarray, request: EditRequest, editor: FramesEditor | None = None) -> dict:
        """Edit the frames (with `editor`, edit_here by default); a failure comes back as its message (the
        worker keeps serving)."""
        timer = StageTimer()
        try:
            edited, model = (editor or edit_here)(frames, request, lambda stage, done, total: None, timer)
        except Exception as exc:
            log.debug("edit failed", exc_info=True)
            return {"status": "failed", "error": describe(exc)}
        return {"status": "ok", "edited": edited, "model": model}

    def edit_stream(self, frames: np.ndarray, request: EditRequest, editor: FramesEditor | None = None):
        """Edit the frames, yielding ("progress", stage, done, total) as it goes and ("done", result dict) last.

        `ray.cancel` on the stream sets the task's cancel flag; the edit then stops at its next step."""
        events: queue.Queue = queue.Queue()
        stop = threading.Event()

        def progress(stage: str, done: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled(f"the run was cancelled during {stage.replace('_', ' ')}")
            events.put(("progress", stage, done, total))

        def run() -> None:
            timer = StageTimer()
            try:
                edited, model = (editor or edit_here)(frames, request, progress, timer)
                events.put(("done", {"status": "ok", "edited": edited, "model": model}))
            except Cancelled as exc:
                events.put(("done", {"status": "cancelled", "error": str(exc)}))
            except Exception as exc:
                events.put(("done", {"status": "failed", "error": describe(exc)}))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        context = ray.get_runtime_context()
        try:
            while True:
                try:
                    event = events.get(timeout=0.1)
                except queue.Empty:
                    if context.is_canceled():
                        stop.set()
                    continue
                while event[0] != "done" and not events.empty():  # only the latest progress matters
                    event = events.get_nowait()
                if context.is_canceled():
                    stop.set()
                yield event
                if event[0] == "done":
                    return
        finally:  # also when Ray closes the stream after ray.cancel: the edit stops at its next step
            stop.set()
            thread.join()


class WorkerPool:
    """The batch's or the app's workers; a dead one is replaced by a fresh one."""

    def __init__(self, workers: int | None = None):
        self.count, self.resources = placement(workers)
        self.serial = 0
        self.idle: queue.Queue = queue.Queue()
        self.names: dict = {}
        for _ in range(self.count):
            self.idle.put(self._start())

    def _start(self):
        self.serial += 1
        actor = EditWorker.options(**self.resources, max_restarts=0).remote()
        self.names[actor] = f"worker-{self.serial}"
        return actor

    def replace(self, actor: Any):
        """A fresh worker in place of one that died."""
        self.names.pop(actor, None)
        with contextlib.suppress(Exception):  # already dead
            ray.kill(actor, no_restart=True)
        return self._start()

    def name(self, actor: Any) -> str:
        return self.names.get(actor, "worker")

    def close(self) -> None:
        for actor in list(self.names):
            with contextlib.suppress(Exception):  # already dead
                ray.kill(actor, no_restart=True)
        self.names.clear()


# ---------------------------------------------------------------- the batch


@dataclass
class _Job:
    """One edit in flight: its decoded clip, its tasks and what came back (a split keyframe edit: the
    keyframes' task first, then `tasks` becomes the keyframes and the propagation segments)."""

    edit: BatchEdit
    clip: video_io.Clip
    tasks: EditTasks
    begin: float
    slots: int = 1  # the pool's workers, for splitting stage 2
    keys: tuple[int, ...] = ()  # the edited keyframes of a keyframe edit
    outputs: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    model: ModelInfo | None = None
    attempts: int = 1
    failed: bool = False


def batch_runner(
    workers: int | None = None, retries: int = RETRIES, editor: FramesEditor | None = None, pool: WorkerPool | None = None
):
    """A runner for `editing.batch.run_batch` that runs the edits on this process's Ray cluster, on
    `pool` (kept) or on `workers` new workers (stopped at the end); `editor` runs the core on them (whole
    edits and segments of whole chunks; a split keyframe edit's stages run the library's own stage
    editors, `keyframes_here` and `propagating`)."""

    def run(edits: list[BatchEdit], progress: BatchProgress, on_done: Callable[[BatchEdit, dict], None]) -> list[str]:
        workers_used = pool or WorkerPool(workers)
        try:
            return _schedule(edits, workers_used, progress, on_done, retries, editor)
        finally:
            if pool is None:
                workers_used.close()

    return run


def _schedule(
    edits: list[BatchEdit],
    pool: WorkerPool,
    progress: BatchProgress,
    on_done: Callable[[BatchEdit, dict], None],
    retries: int,
    editor: FramesEditor | None = None,
) -> list[str]:
    """Hand tasks to idle workers, collect results, retry a dead worker's task, finish each edit."""
    idle = [pool.idle.get() for _ in range(pool.count)]
    scheduler = _Scheduler(pool, progress, on_done, retries, editor, list(edits), idle)
    try:
        return scheduler.run()
    finally:  # the workers go back to the pool (a dead one was replaced already)
        for actor in [*scheduler.idle, *(entry[0] for entry in scheduler.running.values())]:
            pool.idle.put(actor)


@dataclass
class _Scheduler:
    """The batch's scheduling state: edits not started (a clip is decoded when a worker is free for it),
    tasks ready to run as (job, segment, attempt), running tasks by object ref as (actor, job, segment,
    attempt), idle workers and the notes for the user."""

    pool: WorkerPool
    progress: BatchProgress
    on_done: Callable[[BatchEdit, dict], None]
    retries: int
    editor: FramesEditor | None
    waiting: list[BatchEdit]
    idle: list[Any]
    tasks: list[tuple[_Job, int, int]] = field(default_factory=list)
    running: dict[Any, tuple[Any, _Job, int, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def fail(self, job: _Job, error: str) -> None:
        """Give up on `job`: drop its tasks and record it as failed."""
        job.failed = True
        self.tasks[:] = [t for t in self.tasks if t[0] is not job]
        self.on_done(
            job.edit,
            failed_row(job.edit, error, job.attempts, ",".join(job.workers), time.perf_counter() - job.begin, job.tasks.note),
        )

    def run(self) -> list[str]:
        """Hand tasks to idle workers and collect results until every edit is done or failed."""
        while self.waiting or self.tasks or self.running:
            while self.idle and (self.tasks or self.waiting):
                if not self.tasks:
                    job = _start_job(self.waiting.pop(0), self.pool.count, self.on_done)
                    if job is not None:
                        if job.tasks.note:
                            self.notes.append(f"{job.edit.name}: {job.tasks.note}")
                            self.progress.line(f"[note] {job.edit.name}: {job.tasks.note}")
                        self.tasks += [(job, number, 1) for number in range(len(job.tasks.segments))]
                    continue
                job, number, attempt = self.tasks.pop(0)
                actor = self.idle.pop(0)
                self.running[actor.edit.remote(*_task_input(job, number, self.editor))] = (actor, job, number, attempt)
            if not self.running:
                continue
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                actor, job, number, attempt = self.running.pop(ref)
                try:
                    payload = ray.get(ref)
                except RayActorError as exc:
                    name = self.pool.name(actor)
                    self.idle.append(self.pool.replace(actor))
                    if job.failed:
                        continue
                    if attempt > self.retries:
                        job.attempts = max(job.attempts, attempt)
                        self.fail(job, f"its worker died {attempt} times ({type(exc).__name__})")
                    else:
                        job.attempts = max(job.attempts, attempt + 1)
                        self.progress.line(f"[retry] {job.edit.name}: {name} died; attempt {attempt + 1} of {self.retries + 1}")
                        self.tasks.insert(0, (job, number, attempt + 1))
                    continue
                except Exception as exc:  # the task itself could not run (e.g. the frames could not be sent)
                    self.idle.append(actor)
                    if not job.failed:
                        self.fail(job, describe(exc))
                    continue
                self.idle.append(actor)
                if job.failed:
                    continue
                if payload["status"] != "ok":
                    job.workers.append(self.pool.name(actor))
                    self.fail(job, payload["error"])
                    continue
                _collect(job, number, payload, self.pool.name(actor))
                if job.tasks.segments[number].kind == "keyframes" and not job.keys:  # stage 2: the propagation segments
                    job.keys = tuple(payload["edited"].keyframes)
                    job.tasks = propagation_tasks(job.keys, len(job.clip.frames), job.slots)
                    self.notes.append(f"{job.edit.name}: {job.tasks.note}")
                    self.progress.line(f"[note] {job.edit.name}: {job.tasks.note}")
                    self.tasks[:0] = [(job, n, 1) for n in range(1, len(job.tasks.segments))]  # ahead of other edits' tasks
                if len(job.outputs) == len(job.tasks.segments):
                    _finish(job, self.on_done)
        return self.notes


def _task_input(job: _Job, number: int, editor: FramesEditor | None) -> tuple:
    """What segment `number` of the job's tasks is sent: its frames, the request and the editor that runs it."""
    segment = job.tasks.segments[number]
    request = job.edit.request
    if segment.kind == "keyframes":
        return job.clip.frames, request, keyframes_here
    if segment.kind == "propagate":
        frames, staged = propagation_input(segment, job.keys, job.outputs[0], job.clip.frames)
        return frames, request, propagating(staged)
    return job.clip.frames[list(segment.frames)], segment_request(request, segment), editor


def _start_job(edit: BatchEdit, workers: int, on_done: Callable[[BatchEdit, dict], None]) -> _Job | None:
    """Decode an edit's clip and split it into tasks; a clip that cannot be read fails the edit here."""
    begin = time.perf_counter()
    try:
        request = edit.request
        clip = video_io.read_clip(request.video, request.selection, request.limits)
        tasks = split_edit(request, len(clip.frames), workers)
    except Exception as exc:
        on_done(edit, failed_row(edit, describe(exc), wall=time.perf_counter() - begin))
        return None
    job = _Job(edit, clip, tasks, begin, slots=workers)
    job.seconds["decode"] = time.perf_counter() - begin
    return job


def _collect(job: _Job, number: int, payload: dict, worker: str) -> None:
    edited = payload["edited"]
    job.outputs[number] = edited.frames
    job.model = payload["model"]
    job.workers.append(worker)
    job.warnings += [w for w in edited.warnings if w not in job.warnings]
    for stage, seconds in edited.seconds.items():  # summed over segments: the work done, not the wall time
        job.seconds[stage] = job.seconds.get(stage, 0.0) + seconds


def _finish(job: _Job, on_done: Callable[[BatchEdit, dict], None]) -> None:
    """Assemble the segments, write the output, report the edit."""
    edit, clip = job.edit, job.clip
    try:
        segments = job.tasks.segments
        frames = assemble(len(clip.frames), segments, [job.outputs[i] for i in range(len(segments))])
        begin = time.perf_counter()
        audio = video_io.AudioSource(edit.request.video, clip.start, clip.end) if clip.source.has_audio else None
        written, notes = write_outputs([edit.request.output], frames, clip.fps, audio)
        job.seconds["encode_video"] = time.perf_counter() - begin
    except Exception as exc:
        on_done(
            edit,
            failed_row(edit, describe(exc), job.attempts, ",".join(job.workers), time.perf_counter() - job.begin, job.tasks.note),
        )
        return
    result = EditResult(
        written[0],
        len(frames),
        float(clip.fps),
        clip.width,
        clip.height,
        job.model.name,
        job.model.random_weights,
        seconds=job.seconds,
        warnings=(*job.warnings, *notes),
        images=frames,
    )
    if written[0] != edit.request.output:
        on_done(edit, failed_row(edit, "; ".join(notes), job.attempts, ",".join(job.workers), time.perf_counter() - job.begin))
        return
    workers = ",".join(dict.fromkeys(job.workers))
    on_done(
        edit,
        result_row(
            edit, result, Run(job.attempts, workers, len(job.tasks.segments), time.perf_counter() - job.begin, job.tasks.note)
        ),
    )


# ---------------------------------------------------------------- the app's jobs


class RayEditor:
    """A FramesEditor (editing.pipeline) that runs each edit on a free worker of the cluster.

    Progress comes back from the worker as the edit goes; when the app's progress callback raises
    Cancelled (Stop), the Ray task is cancelled and the worker stops at its next step. A worker that
    dies is replaced and the edit re-run on a free worker, up to `retries` times."""

    def __init__(
        self,
        workers: int | None = None,
        retries: int = RETRIES,
        editor: FramesEditor | None = None,
        pool: WorkerPool | None = None,
    ):
        self.pool = pool or WorkerPool(workers)
        self.owned = pool is None
        self.retries = retries
        self.editor = editor

    @property
    def slots(self) -> int:
        """How many edits can run at once (the app's GPU queue serves this many)."""
        return self.pool.count

    def __call__(self, frames: np.ndarray, request: EditRequest, progress: ProgressFn, timer: StageTimer):
        for attempt in range(1, self.retries + 2):
            actor = self.pool.idle.get()
            try:
                payload = self._run(actor, frames, request, progress)
            except RayActorError:
                actor = self.pool.replace(actor)
                if attempt > self.retries:
                    raise EditingError(f"the worker running this edit died {attempt} times") from None
                continue
            finally:
                self.pool.idle.put(actor)
            if payload["status"] == "ok":
                return payload["edited"], payload["model"]
            raise (Cancelled if payload["status"] == "cancelled" else EditingError)(payload["error"])
        raise AssertionError("unreachable")

    def _run(self, actor: Any, frames: np.ndarray, request: EditRequest, progress: ProgressFn) -> dict:
        stream = actor.edit_stream.options(num_returns="streaming").remote(frames, request, self.editor)
        try:
            while True:
                try:
                    event = ray.get(next(stream))
                except StopIteration:
                    raise EditingError("the worker ended the edit without a result") from None
                if event[0] == "done":
                    return event[1]
                progress(*event[1:])
        except Cancelled:
            ray.cancel(stream)
            raise
        except TaskCancelledError:
            raise Cancelled("the run was cancelled") from None

    def close(self) -> None:
        if self.owned:
            self.pool.close()
