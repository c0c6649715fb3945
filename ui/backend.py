"""The adapter the tabs call: edit a clip, preview its first frame, preview condition maps, measure flicker.

Handlers never touch the library directly, so tests can swap the edit function; every long call takes a
progress callback and a CancelToken, and frees memory when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import shutil
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editing.context import frames_key
from editing.errors import Cancelled
from editing.flows import Flows, source_flows
from editing.memo import ClipMemo
from editing.pipeline import EditRequest, EditResult, ProgressFn, edit_video

from .serving import LOCAL, ServePolicy

EditFn = Callable[[EditRequest, ProgressFn], EditResult]
OUTPUT_MAX_AGE = 3600  # seconds a run's files stay on disk (Gradio copies what it serves into its own cache)
PREVIEW_FRAMES = 2  # the shortest clip the pipeline edits; the first of them is shown
SOURCE_FLOWS_BYTES = 64 * 1024**2  # source flows kept for the warp errors of later edits of the same frames
SESSION_MEMOS = 4  # style sessions whose text encodings and condition maps stay in memory (at most 256 MB each)


class CancelToken:
    """Set by the Stop button; the edit's progress callback then raises Cancelled at the next step."""

    def __init__(self):
        self._event = threading.Event()
        self.reached: tuple[str, int, int] | None = None  # the last (stage, done, total) a run reported

    def __deepcopy__(self, memo) -> CancelToken:
        return CancelToken()  # gr.State copies its initial value per user: each user gets a fresh token

    def __reduce__(self):
        return (CancelToken, ())  # spaces.GPU pickles handler arguments into its worker: a fresh token there

    def cancel(self) -> None:
        self._event.set()

    def reset(self) -> None:
        self._event.clear()
        self.reached = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def cancellable(progress: ProgressFn, token: CancelToken | None) -> ProgressFn:
    """`progress` that first raises Cancelled when the token has been set."""

    def report(stage: str, done: int, total: int) -> None:
        if token is not None:
            token.reached = (stage, done, total)  # where a stop leaves the run
            if token.cancelled:
                raise Cancelled(f"the run was cancelled during {stage.replace('_', ' ')}")
        progress(stage, done, total)

    return report


def free_memory() -> None:
    """Return the memory of a finished or stopped run: Python garbage, then the GPU allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def freeing_memory():
    """Free a run's memory when it ends, however it ends.

    A failure's traceback keeps every frame's locals (latents, frames, activations) alive, so those frames
    are cleared first; otherwise a stopped run's tensors would outlive `free_memory`. A run that finished on
    the CPU has freed its tensors by reference counting as its frames returned, so the full collection, which
    walks every live object (the loaded models' too) while the result waits, is left to Python's own
    schedule; with a GPU it runs, so that the allocator's cache can be handed back.
    """
    failed = False
    try:
        yield
    except BaseException as exc:
        failed = True
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        if failed or torch.cuda.is_available():
            free_memory()


def fresh_output_dir(root: Path | None = None) -> str:
    """A new folder for one run's files; folders of runs older than OUTPUT_MAX_AGE are removed."""
    root = root or Path(tempfile.gettempdir()) / "video-edit-outputs"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another run may be removing the same folder
            if old.is_dir() and time.time() - old.stat().st_mtime > OUTPUT_MAX_AGE:
                shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix="run-", dir=root)


@dataclass(frozen=True)
class Outputs:
    """Where an edit's files are, grouped by format, plus the result it reported."""

    result: EditResult
    files: dict[str, str]

    def get(self, suffix: str) -> str | None:
        return self.files.get(suffix)

    def details(self) -> dict:
        """The result for people: file names only, never the server's paths."""
        return public_details(self.result.to_dict())


PATH_FIELDS = ("output", "tuned", "path", "weights")  # result fields holding one server path
PATHS_FIELDS = ("also_written",)  # result fields holding a list of them


def public_details(result: dict) -> dict:
    """A result dict with every server path replaced by its file name (what the Details panel shows)."""
    shown = dict(result)
    for name in PATH_FIELDS:
        if isinstance(shown.get(name), str):
            shown[name] = Path(shown[name]).name
    for name in PATHS_FIELDS:
        if isinstance(shown.get(name), (list, tuple)):
            shown[name] = [Path(p).name for p in shown[name]]
    return shown


class Backend:
    """What the tabs call; `edit_fn` is the library's `edit_video` unless a test swaps it."""

    def __init__(
        self, edit_fn: EditFn = edit_video, output_root: Path | None = None, policy: ServePolicy = LOCAL, concurrency: int = 1
    ):
        self.edit_fn = edit_fn
        self.output_root = output_root
        self.policy = policy  # what the forms may ask for when the app is served to others
        self.concurrency = concurrency  # GPU jobs run at once (the app's GPU queue): 1 here, one per worker on a cluster
        self._memos: OrderedDict[str, ClipMemo] = OrderedDict()
        self._memos_lock = threading.Lock()
        self._flows = ClipMemo(SOURCE_FLOWS_BYTES)

    def session_memo(self, session: str) -> ClipMemo:
        """The in-memory memo of one session's clip (editing.memo: text encodings, condition maps), kept
        for the SESSION_MEMOS most recently used sessions; `session` is its folder (unique per owner)."""
        with self._memos_lock:
            memo = self._memos.pop(session, None) or ClipMemo()
            self._memos[session] = memo
            while len(self._memos) > SESSION_MEMOS:
                self._memos.popitem(last=False)
            return memo

    def checked(self, values: dict) -> dict:
        """Form values as the serving policy allows them (the Model field); ConfigError otherwise."""
        return self.policy.checked(values)

    def output_dir(self) -> str:
        return fresh_output_dir(self.output_root)

    def edit(self, request: EditRequest, progress: ProgressFn, token: CancelToken | None = None) -> Outputs:
        """Run one edit; memory is freed afterwards even when it fails or is cancelled."""
        with freeing_memory():
            result = self.edit_fn(request, cancellable(progress, token))
        paths = [result.output, *result.also_written]
        return Outputs(result, {Path(p).suffix.lower(): p for p in paths})

    def tune(self, request, progress: ProgressFn):
        """One-shot tuning (editing.tuning.tune_video) of a validated TuneRequest, in this process."""
        from editing.tuning import tune_video

        return tune_video(request, progress)

    def edit_keyframes(self, request: EditRequest, progress: ProgressFn, token: CancelToken | None = None):
        """Stage 1 of a staged edit: the clip's keyframes only (in this process, also with --ray)."""
        from editing.pipeline import edit_keyframes_of

        with freeing_memory():
            return edit_keyframes_of(request, cancellable(progress, token))

    def propagate(self, request: EditRequest, staged, progress: ProgressFn, token: CancelToken | None = None) -> Outputs:
        """Stage 2: the other frames from the staged keyframes, written like an edit."""
        from editing.pipeline import edit_video, propagating

        with freeing_memory():
            result = edit_video(request, cancellable(progress, token), editor=propagating(staged))
        paths = [result.output, *result.also_written]
        return Outputs(result, {Path(p).suffix.lower(): p for p in paths})

    def preview_first_frame(self, request: EditRequest, progress: ProgressFn, token: CancelToken | None = None) -> np.ndarray:
        """The first edited frame, from the same pipeline run on the selection's first frames only."""
        selection = dataclasses.replace(request.selection, max_frames=PREVIEW_FRAMES)
        output = str(Path(request.output).with_name(Path(request.output).stem + "-preview.zip"))
        short = dataclasses.replace(
            request, selection=selection, output=output, also_write=(), decode_frames=(0,)
        )  # decode only the frame shown
        outputs = self.edit(short, progress, token)
        return outputs.result.images[0]

    def condition_previews(self, request: EditRequest, frame_count: int = 1) -> list[tuple[np.ndarray, str]]:
        """The condition map of each requested ControlNet on the first selected frame(s), with captions."""
        from editing.control import extract_conditions
        from editing.video_io import read_clip

        selection = dataclasses.replace(request.selection, max_frames=max(2, frame_count))
        frames = read_clip(request.video, selection, request.limits).frames[:frame_count]
        previews = []
        for spec in request.engine.controls:
            images = extract_conditions(spec.kind, frames, annotator_source=request.engine.annotators)
            previews += [(image, f"{spec.kind} (scale {spec.scale:g})") for image in images]
        return previews

    def source_frames(self, request: EditRequest) -> np.ndarray:
        """The selected source frames at the output's size (what each edited frame is compared with)."""
        from editing.video_io import read_clip

        return read_clip(request.video, request.selection, request.limits).frames

    def warp_errors(self, request: EditRequest, outputs: Outputs, source: np.ndarray | None = None) -> np.ndarray:
        """Per frame pair temporal warp error of the edited frames the result carries (never read back from
        its files), along the optical flow of `source` (the caller's decoded frames; decoded here if None)."""
        from editing.metrics import warp_errors

        edited = outputs.result.images
        if edited is None:
            return np.zeros(0)
        source = self.source_frames(request) if source is None else source
        return warp_errors(source, edited, self.source_flows(source))

    def source_flows(self, source: np.ndarray) -> Flows:
        """The source frames' flows (editing.flows.source_flows, as warp errors measure them), kept by the
        frames' content so that the next edit of the same frames (another prompt, seed or preset) reuses them;
        at most SOURCE_FLOWS_BYTES are kept, least recently used first out."""
        return self._flows.kept(("source flows", frames_key(source).content), lambda: source_flows(source))


def ray_backend(address: str, workers: int | None = None, policy: ServePolicy = LOCAL, editor=None, pool=None) -> Backend:
    """A Backend whose edits run on the Ray cluster at `address` (`local`, `auto` or an address), one at a
    time per worker; decoding, writing and the rest of the app stay in this process. Imports Ray."""
    import functools

    from editing import distributed

    distributed.connect(address, workers)
    remote = distributed.RayEditor(workers, editor=editor, pool=pool)
    return Backend(functools.partial(edit_video, editor=remote), policy=policy, concurrency=remote.slots)
