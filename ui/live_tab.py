"""The Live tab: edit the webcam, or an uploaded clip played as a stream, frame by frame (editing.stream).

Each user's engine (a StreamEditor with its bank) lives in their `gr.State`. The webcam sends frames through
Gradio's streaming event, which sends the camera's current frame once the previous one came back (so frames
the engine had no time for are never sent), and the handler skips a frame that arrives while its engine is busy. A played clip
follows the clip's clock: when an edit takes longer than a frame, the frames in between are skipped. The
prompt, strength and seed apply from the next frame; Stop ends the stream and frees the bank
(camera frames the browser still sends are ignored until Resume camera). The events use
their own concurrency id (LIVE_QUEUE), so a stream does not hold the file edits' GPU queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import gradio as gr
import numpy as np

from editing.errors import EditingError

from .backend import Backend

LIVE_QUEUE = "live"  # the Live tab's concurrency id (one frame per stream at a time)
STREAM_EVERY = 0.1  # seconds between webcam frames sent to the server
TIME_LIMIT = 600  # seconds a webcam stream runs before Gradio ends it
LIVE_PRESET = "fast"  # the few-step preset the engine runs (editing.presets)
LIVE_FRAMES = 300  # most frames of an uploaded clip played


class LiveSession:
    """One user's stream: the engine, what it was built for, and its speed."""

    def __init__(self):
        self.engine = None  # editing.stream.StreamEditor
        self.built_for: tuple = ()
        self.busy = threading.Lock()
        self.edited = 0
        self.dropped = 0
        self.latencies: list[float] = []
        self.finished: list[float] = []  # when the last frames came out (perf_counter seconds)
        self.stopped = False

    def __deepcopy__(self, memo) -> LiveSession:  # gr.State copies its initial value for each user
        return LiveSession()

    def stats(self) -> str:
        """The frame rate and latency line shown under the output."""
        recent = self.finished[-30:]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        latency = 1000 * float(np.mean(self.latencies[-30:])) if self.latencies else 0.0
        line = f"{fps:.1f} FPS · latency {latency:.0f} ms · {self.edited} edited, {self.dropped} dropped"
        return line + (" · stopped" if self.stopped else "")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.built_for = None, ()


def live_size(model: str) -> int:
    from editing.models import native_size

    return native_size(model)


def fit_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB frame resized so its long side is `size`, both sides multiples of 8."""
    import cv2

    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    frame = frame[..., :3].astype(np.uint8)
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    shape = (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))
    return cv2.resize(frame, shape, interpolation=cv2.INTER_AREA)


def engine_for(session: LiveSession, backend: Backend, model: str, prompt: str, strength: float, seed: int):
    """The session's engine for `model` (built on first use or when the model changes), set to the prompt,
    strength and seed."""
    from editing.requests import edit_request
    from editing.stream import StreamEditor

    if not (prompt or "").strip():
        raise EditingError("prompt: describe what the stream should look like")
    if session.engine is None or session.built_for != (model,):
        session.close()
        values = backend.checked({"model": model, "prompt": prompt, "strength": strength, "seed": int(seed)})
        request = edit_request({"video": "live", "out": "live.mp4", "preset": LIVE_PRESET, **values})
        session.engine, session.built_for = StreamEditor.from_request(request), (model,)
        session.edited, session.dropped, session.latencies, session.finished, session.stopped = 0, 0, [], [], False
    session.engine.update(prompt=prompt, strength=float(strength), seed=int(seed))
    return session.engine


def edit_one(session: LiveSession, backend: Backend, frame: np.ndarray, model: str, prompt: str, strength: float, seed: int):
    """Edit one frame for the session; None when the engine is busy with another (the frame is dropped) or
    the stream was stopped."""
    if session.stopped:
        return None
    if not session.busy.acquire(blocking=False):
        session.dropped += 1
        return None
    try:
        engine = engine_for(session, backend, model, prompt, strength, seed)
        begin = time.perf_counter()
        edited = engine.push(fit_frame(frame, live_size(model)))
        session.latencies = (session.latencies + [time.perf_counter() - begin])[-60:]
        session.finished = (session.finished + [time.perf_counter()])[-60:]
        session.edited += 1
        return edited
    finally:
        session.busy.release()


def make_handlers(backend: Backend):
    """The tab's handlers: (webcam frame, play clip, settings changed, stop, resume camera)."""

    def on_frame(frame, model, prompt, strength, seed, session: LiveSession):
        if frame is None or session.stopped:
            return gr.skip(), gr.skip(), session
        try:
            edited = edit_one(session, backend, frame, model, prompt, strength, seed)
        except EditingError as exc:
            raise gr.Error(str(exc)) from exc
        return (gr.skip() if edited is None else edited), session.stats(), session

    def play_clip(video, model, prompt, strength, seed, session: LiveSession) -> Iterator[tuple]:
        from editing.config import FrameSelection
        from editing.video_io import read_clip

        if not video:
            raise gr.Error("upload a clip to play")
        try:
            clip = read_clip(video, FrameSelection(max_frames=LIVE_FRAMES, size=live_size(model)))
            session.stopped = False
            engine_for(session, backend, model, prompt, strength, seed)
        except EditingError as exc:
            raise gr.Error(str(exc)) from exc
        period, start, shown = 1 / float(clip.fps), time.perf_counter(), -1
        while not session.stopped and session.engine is not None:
            due = int((time.perf_counter() - start) / period)  # the clip's frame now playing
            if due >= len(clip.frames):
                break
            session.dropped += max(0, due - shown - 1)
            shown = due
            settings = session.engine.settings.edit
            edited = edit_one(session, backend, clip.frames[due], model, settings.prompt, settings.strength, settings.seed)
            if edited is not None:
                yield edited, session.stats(), session

    def on_settings(prompt, strength, seed, session: LiveSession):
        if session.engine is not None and (prompt or "").strip():
            try:
                session.engine.update(prompt=prompt, strength=float(strength), seed=int(seed))
            except EditingError as exc:
                raise gr.Error(str(exc)) from exc
        return session

    def on_stop(session: LiveSession):
        session.stopped = True  # until Resume camera or Play clip (the browser's camera may keep sending frames)
        with session.busy:  # after the frame being edited
            session.close()
        return session.stats(), session

    def on_resume(session: LiveSession):
        session.stopped = False
        return "resumed: waiting for the camera's next frame", session

    return on_frame, play_clip, on_settings, on_stop, on_resume


def create_tab(backend: Backend, default_model: str) -> dict[str, gr.components.Component]:
    """Lay out the tab and wire it to the backend."""
    on_frame, play_clip, on_settings, on_stop, on_resume = make_handlers(backend)
    with gr.Row():
        with gr.Column():
            camera = gr.Image(label="Webcam", sources=["webcam"], streaming=True, type="numpy", elem_id="live-camera", height=320)
            video = gr.File(label="…or upload a clip to play as a stream", file_types=["video"], elem_id="live-clip", height=90)
            model = gr.Textbox(default_model, label="Model", elem_id="live-model")
            prompt = gr.Textbox(label="Prompt", placeholder="what the stream should look like", elem_id="live-prompt")
            with gr.Row():
                strength = gr.Slider(0.1, 1.0, value=0.5, step=0.05, label="Strength", elem_id="live-strength")
                seed = gr.Number(0, label="Seed", precision=0, elem_id="live-seed")
            with gr.Row():
                play = gr.Button("Play clip", variant="primary", elem_id="live-play")
                stop = gr.Button("Stop", variant="stop", elem_id="live-stop")
                resume = gr.Button("Resume camera", elem_id="live-resume")
        with gr.Column():
            output = gr.Image(label="Edited", type="numpy", elem_id="live-output", height=320)
            stats = gr.Markdown("", elem_id="live-stats")
    session = gr.State(LiveSession())
    settings = [model, prompt, strength, seed, session]
    streaming = camera.stream(
        on_frame, [camera, *settings], [output, stats, session], stream_every=STREAM_EVERY, time_limit=TIME_LIMIT,
        concurrency_id=LIVE_QUEUE, concurrency_limit=backend.concurrency, api_visibility="private",
    )  # fmt: skip
    playing = play.click(
        play_clip,
        [video, *settings],
        [output, stats, session],
        concurrency_id=LIVE_QUEUE,
        concurrency_limit=backend.concurrency,
        api_visibility="private",
    )
    for widget in (prompt, strength, seed):
        widget.change(on_settings, [prompt, strength, seed, session], session, api_visibility="private", queue=False)
    stop.click(on_stop, session, [stats, session], cancels=[streaming, playing], api_visibility="private")
    resume.click(on_resume, session, [stats, session], api_visibility="private")
    return {"camera": camera, "video": video, "prompt": prompt, "output": output, "stats": stats}
