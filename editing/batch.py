"""`python -m editing batch SPEC.yaml --out DIR`: run every edit of an eval spec, write the outputs and
results.csv / results.json with each edit's status and timings.

Without `--ray` the edits run one after another in this process (this module never imports Ray). With
`--ray` they run on Ray workers (`editing.distributed`), and a long clip whose attention mode allows it is
split into segments that run on several workers (`split_edit`).

Re-running the same command skips edits whose output exists and was made from the same request: the
manifest (`DIR/manifest.json`) records, per edit, a key of everything that changes its output
(`request_key`) and the output's SHA-256.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from tqdm.auto import tqdm

from .cache import cache_key, content_hash
from .compat import sequential_reason
from .context import STAGES, frames_key
from .errors import ConfigError, EditingError
from .keyframes import Keyframes
from .requests import EditRequest
from .sampling import plan_frames

if TYPE_CHECKING:
    from .evaluate import EvalSpec
    from .pipeline import EditResult

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMATS = (".mp4", ".zip", ".gif")
BATCH_DEFAULTS = {"format": "mp4", "retries": 2}  # the batch command's option defaults (editing.cli reads them)
COLUMNS = (
    "name",
    "status",
    "error",
    "attempts",
    "worker",
    "segments",
    "frames",
    "output",
    "seconds_wall",
    *(f"seconds_{s}" for s in STAGES),
    "note",
)


@dataclass(frozen=True)
class BatchEdit:
    """One edit of a batch: its name, the request (output under the batch folder) and its manifest key;
    `error` says why it cannot run (its clip does not exist): it is a failed row, and the others run."""

    name: str
    request: EditRequest
    key: str
    error: str = ""


def batch_edits(spec: EvalSpec, out_dir: str | Path, suffix: str = ".mp4") -> list[BatchEdit]:
    """The spec's edits (editing.evaluate.EvalSpec) with outputs `<out>/<name><suffix>` and their keys."""
    if suffix not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(s[1:] for s in FORMATS)}, got {suffix.lstrip('.')!r}")
    out = Path(out_dir)
    edits = []
    for edit in spec.edits:
        request = dataclasses.replace(edit.request, output=str(out / f"{edit.name}{suffix}"), also_write=())
        if not Path(request.video).is_file():
            edits.append(BatchEdit(edit.name, request, "", f"video {request.video} does not exist"))
            continue
        edits.append(BatchEdit(edit.name, request, request_key(request)))
    return edits


def request_key(request: EditRequest) -> str:
    """What the output depends on: every setting of the request (not where it is written) and the content
    of the files it reads (the clip, tuned weights, condition videos)."""
    settings = dataclasses.asdict(dataclasses.replace(request, output="edit" + Path(request.output).suffix, also_write=()))
    settings.pop("output")
    files = {"video": content_hash(request.video)}
    if request.tuned:
        files["tuned"] = content_hash(request.tuned)
    for number, control in enumerate(request.engine.controls):
        if control.video:
            files[f"control_video_{number}"] = content_hash(control.video)
    return cache_key(settings=settings, files=files, suffix=Path(request.output).suffix)


# ---------------------------------------------------------------- splitting an edit into tasks


@dataclass(frozen=True)
class Segment:
    """One task of an edit: the clip frames it gets (anchors and bounding keyframes included), those whose
    output it keeps, and what it runs on them: `edit` (the core), `keyframes` (choose and edit the
    keyframes only: its output is the keyframes, in order) or `propagate` (the other frames from the
    edited keyframes among its frames)."""

    frames: tuple[int, ...]
    keeps: tuple[int, ...]
    kind: str = "edit"


@dataclass(frozen=True)
class EditTasks:
    """How one edit runs: its segments (one = the whole clip in one task) and how it was split, or why not."""

    segments: tuple[Segment, ...]
    note: str = ""


KEYFRAMES_NOTE = "keyframes then propagation: the keyframes are edited in one task, then the frames between them in propagation segments in parallel"


def split_edit(request: EditRequest, frame_count: int, workers: int) -> EditTasks:
    """The tasks an edit of `frame_count` frames runs as on `workers` workers.

    Keyframes then propagation (`--keyframes`, with or without `--keyframe-image`) runs as two stages:
    one task chooses and edits the keyframes (they attend to each other, so they stay together), then
    `propagation_tasks` splits the other frames by the keyframes they lie between, each segment needing
    only its bounding keyframes and the source frames (and so the flow) between them.

    A clip longer than one chunk whose attention mode makes chunks independent given the anchor frame
    (`first`, `none`: `AttentionMode.independent_chunks`) is split into up to `workers` segments of whole
    chunks; each segment also holds the anchor, whose trajectory (inversion and denoising) is the same in
    every segment because it attends only to itself. Everything else runs as one task whose chunks run in
    order, and the note says why.
    """
    whole = EditTasks((Segment(tuple(range(frame_count)), tuple(range(frame_count))),))
    engine = request.engine
    if engine.keyframes_every and workers > 1 and frame_count > 1 and request.decode_frames is None:
        return EditTasks((Segment(tuple(range(frame_count)), (), "keyframes"),), KEYFRAMES_NOTE)
    plan = plan_frames(frame_count, engine.chunk, engine.attention, engine.window).with_calls(engine.token_merge)
    if workers <= 1 or len(plan.batches) <= 1:
        return whole
    reason = sequential_reason(request)
    if reason:
        return dataclasses.replace(whole, note=f"{reason}; its {len(plan.batches)} chunks run in order on one worker")
    groups = np.array_split(np.arange(len(plan.batches)), min(workers, len(plan.batches)))
    segments = []
    for group in groups:
        keeps = tuple(t for b in group for t in plan.batches[b].targets)
        frames = tuple(sorted(set(keeps) | set(plan.anchors)))
        segments.append(Segment(frames, keeps))
    return EditTasks(tuple(segments), f"split into {len(segments)} segments of whole chunks, each with the anchor frame")


def propagation_tasks(keys: tuple[int, ...], frame_count: int, workers: int) -> EditTasks:
    """Stage 2 of a split keyframe edit, once the keyframes `keys` are edited: the keyframes' segment (its
    output is the edited keyframes) and up to `workers` propagation segments.

    A span is the frames between two consecutive keyframes, with both (or, before the first keyframe or
    after the last, the one keyframe it has). Each non-keyframe is made from its nearest keyframe on each
    side along the source's flow between them, and its unseen regions are refined attending to its
    nearest keyframe alone, with the same noise in every frame: so a frame needs nothing outside its span.
    Consecutive spans are grouped into segments of about equal numbers of frames to propagate."""
    keys = tuple(sorted(keys))
    spans = [(a, b) for a, b in zip(keys, keys[1:]) if b - a > 1]
    if keys[0] > 0:
        spans.insert(0, (0, keys[0]))
    if keys[-1] < frame_count - 1:
        spans.append((keys[-1], frame_count - 1))
    keyframes = Segment(keys, keys, "keyframes")
    if not spans:
        return EditTasks((keyframes,), f"all {len(keys)} frames are keyframes, edited in one task; nothing to propagate")
    work = [len(_between(span, keys)) for span in spans]
    total, count, done = sum(work), min(max(1, workers), len(spans)), 0
    groups: dict[int, list[tuple[int, int]]] = {}
    for span, size in zip(spans, work):  # each span to the group its middle frame falls in
        groups.setdefault(min(count - 1, int((done + size / 2) * count / total)), []).append(span)
        done += size
    segments = []
    for members in groups.values():
        frames = tuple(range(members[0][0], members[-1][1] + 1))
        segments.append(Segment(frames, tuple(f for f in frames if f not in keys), "propagate"))
    ranges = ", ".join(f"{s.frames[0]}-{s.frames[-1]}" for s in segments)
    parallel = "1 propagation segment" if len(segments) == 1 else f"{len(segments)} propagation segments in parallel"
    note = f"keyframes {_listed(keys)} edited in one task, then {parallel} (frames {ranges})"
    return EditTasks((keyframes, *segments), note)


def _between(span: tuple[int, int], keys: tuple[int, ...]) -> list[int]:
    return [f for f in range(span[0], span[1] + 1) if f not in keys]


def _listed(keys: tuple[int, ...], most: int = 12) -> str:
    shown = ", ".join(map(str, keys[:most]))
    return shown if len(keys) <= most else f"{shown}, ... ({len(keys)} in all)"


def propagation_input(segment: Segment, keys: tuple[int, ...], edited_keys: np.ndarray, frames: np.ndarray):
    """What a propagation segment's task gets: its source frames and the edited keyframes among them,
    staged (editing.pipeline.StagedKeyframes) for `propagating`, their indices counted from the segment's
    first frame."""
    # here, not at the top: editing.pipeline would load PyAV and PIL into the CLI's start-up
    from .pipeline import StagedKeyframes

    source = frames[list(segment.frames)]
    inside = [k for k in keys if k in segment.frames]
    start = segment.frames[0]
    staged = Keyframes(tuple(k - start for k in inside), edited_keys[[keys.index(k) for k in inside]])
    return source, StagedKeyframes(staged, frames_key(source).content)


def segment_request(request: EditRequest, segment: Segment) -> EditRequest:
    """The request one segment's task runs on its frames: the same request (chunk size and so memory
    included), since its frames do not depend on how they are grouped; conditions are extracted from
    the frames the task gets."""
    return request


def assemble(frame_count: int, segments: tuple[Segment, ...], outputs: list[np.ndarray]) -> np.ndarray:
    """The clip's edited frames from each segment's output (in its frames' order), each frame from the
    segment that keeps it."""
    first = outputs[0]
    clip = np.empty((frame_count, *first.shape[1:]), dtype=first.dtype)
    done = np.zeros(frame_count, dtype=bool)
    for segment, frames in zip(segments, outputs):
        position = {frame: i for i, frame in enumerate(segment.frames)}
        for frame in segment.keeps:
            clip[frame] = frames[position[frame]]
            done[frame] = True
    if not done.all():
        raise EditingError(f"segments left frames {np.flatnonzero(~done).tolist()} unedited")
    return clip


# ---------------------------------------------------------------- manifest and results


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """`DIR/manifest.json`: per edit name, the request key and the SHA-256 of the output it made."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / MANIFEST
        try:
            self.entries = json.loads(self.path.read_text(encoding="utf-8")).get("edits", {})
        except (OSError, ValueError, AttributeError):
            self.entries = {}

    def done(self, edit: BatchEdit) -> dict | None:
        """The recorded row when the edit's output exists and was made from this request, else None."""
        entry = self.entries.get(edit.name)
        output = Path(edit.request.output)
        if not isinstance(entry, dict) or entry.get("key") != edit.key or not output.is_file():
            return None
        return entry.get("row") if entry.get("sha256") == file_sha256(output) else None

    def record(self, edit: BatchEdit, row: dict) -> None:
        self.entries[edit.name] = {"key": edit.key, "sha256": file_sha256(edit.request.output), "row": row}
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps({"edits": self.entries}, indent=2), encoding="utf-8")
        os.replace(temporary, self.path)  # a killed batch never leaves half a manifest


@dataclass(frozen=True)
class Run:
    """How a finished edit ran: attempts, the workers, the segments it was split into, wall seconds and a note."""

    attempts: int = 1
    worker: str = "local"
    segments: int = 1
    wall: float = 0.0
    note: str = ""


def result_row(edit: BatchEdit, result: EditResult, run: Run | None = None) -> dict:
    """The results row of a finished edit (an editing.pipeline.EditResult)."""
    run = run or Run()
    return dict(
        name=edit.name,
        status="ok",
        error="",
        attempts=run.attempts,
        worker=run.worker,
        segments=run.segments,
        frames=result.frames,
        output=str(Path(result.output).name),
        seconds_wall=round(run.wall, 4),
        **{f"seconds_{stage}": round(result.seconds.get(stage, 0.0), 4) for stage in STAGES},
        note="; ".join(n for n in (run.note, *result.warnings) if n),
    )


def failed_row(edit: BatchEdit, error: str, attempts: int = 1, worker: str = "", wall: float = 0.0, note: str = "") -> dict:
    return dict(
        name=edit.name, status="failed", error=error, attempts=attempts, worker=worker, seconds_wall=round(wall, 4), note=note
    )


def describe(exc: BaseException) -> str:
    """One line for a failed edit: our errors as they are, anything else with its type."""
    text = " ".join(str(exc).split())[:300]
    return text if isinstance(exc, EditingError) else f"{type(exc).__name__}: {text}"


@dataclass
class BatchReport:
    rows: list[dict]
    csv: Path
    json: Path
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(1 for row in self.rows if row["status"] == "failed")


def write_results(out: Path, rows: list[dict], seconds: float, notes: list[str], runner: dict) -> BatchReport:
    """results.csv (one row per edit) and results.json (the rows, the notes, how the batch ran)."""
    paths = out / "results.csv", out / "results.json"
    with open(paths[0], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    document = {"rows": rows, "notes": notes, "seconds": round(seconds, 4), **runner}
    paths[1].write_text(json.dumps(document, indent=2), encoding="utf-8")
    return BatchReport(rows, *paths, seconds, notes)


class BatchProgress:
    """A bar over all edits on stderr, and one line per finished, failed, skipped or retried edit."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=total, desc="edits", unit="edit", file=self.stream, disable=None)

    def line(self, text: str) -> None:
        self.bar.write(text, file=self.stream)

    def finished(self, row: dict) -> None:
        if row["status"] == "failed":
            self.line(f"[failed] {row['name']}: {row['error']}")
        elif row["status"] == "skipped":
            self.line(f"[skipped] {row['name']}: its output is up to date")
        else:
            worker = f" on {row['worker']}" if row.get("worker") else ""
            self.line(f"[ok] {row['name']}: {row['frames']} frames in {row['seconds_wall']:.2f} s{worker}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- running a batch

# runner(pending edits, progress, on_done(edit, row)) -> notes; on_done records each finished edit
Runner = Callable[[list[BatchEdit], BatchProgress, Callable[[BatchEdit, dict], None]], list[str]]


def run_here(edits: list[BatchEdit], progress: BatchProgress, on_done: Callable[[BatchEdit, dict], None]) -> list[str]:
    """Run the edits one after another in this process (the batch without --ray)."""
    # here, not at the top: editing.pipeline would load PyAV and PIL into the CLI's start-up
    from .pipeline import edit_video

    for edit in edits:
        begin = time.perf_counter()
        try:
            result = edit_video(edit.request)
            row = result_row(edit, result, Run(wall=time.perf_counter() - begin))
        except Exception as exc:  # one failed edit is reported and the others still run
            log.debug("edit %s failed", edit.name, exc_info=True)
            row = failed_row(edit, describe(exc), wall=time.perf_counter() - begin)
        on_done(edit, row)
    return []


def run_batch(
    edits: list[BatchEdit],
    out_dir: str | Path,
    runner: Runner = run_here,
    runner_info: dict | None = None,
    stream: TextIO | None = None,
) -> BatchReport:
    """Skip the edits the manifest shows done, run the others with `runner`, write the results."""
    begin = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    rows: dict[str, dict] = {}
    progress = BatchProgress(len(edits), stream)
    pending = []
    for edit in edits:
        if edit.error:  # known to fail before running (a missing clip): its row, and the others run
            rows[edit.name] = failed_row(edit, edit.error, attempts=0)
            progress.finished(rows[edit.name])
            continue
        earlier = manifest.done(edit)
        if earlier is None:
            pending.append(edit)
            continue
        rows[edit.name] = {**earlier, "status": "skipped"}
        progress.finished(rows[edit.name])

    def on_done(edit: BatchEdit, row: dict) -> None:
        if row["status"] == "ok":
            manifest.record(edit, row)
        rows[edit.name] = row
        progress.finished(row)

    try:
        notes = runner(pending, progress, on_done) if pending else []
    finally:
        progress.close()
    ordered = [rows[edit.name] for edit in edits if edit.name in rows]
    return write_results(out, ordered, time.perf_counter() - begin, notes, runner_info or {"ray": None, "workers": 1})
