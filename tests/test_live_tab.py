"""The Live tab's handlers driven in-process (ui.live_tab): frames in, edited frames out, settings while running, Stop."""

from __future__ import annotations

import copy

import gradio as gr
import numpy as np
import pytest

from ui.backend import Backend
from ui.live_tab import LIVE_QUEUE, LiveSession, create_tab, make_handlers

from .conftest import ASSETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frame(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)  # a webcam frame of another size


def test_the_tab_streams_frames_takes_new_settings_drops_when_busy_and_stop_frees_the_bank():
    on_frame, play_clip, on_settings, on_stop, on_resume = make_handlers(Backend())
    session = copy.deepcopy(LiveSession())  # what gr.State gives each user

    edited, stats, session = on_frame(_frame(), "tiny", "a red car", 0.5, 0, session)
    assert edited.dtype == np.uint8 and edited.shape[2] == 3 and edited.shape[1] > edited.shape[0]
    assert "FPS" in stats and "latency" in stats and "1 edited" in stats
    engine = session.engine
    bank = engine.bank
    assert bank.nbytes() > 0

    session = on_settings("a blue bird", 0.8, 3, session)  # while running: the next frame uses them
    assert (
        engine.settings.edit.prompt == "a blue bird" and engine.settings.edit.strength == 0.8 and engine.settings.edit.seed == 3
    )
    _, stats, session = on_frame(_frame(1), "tiny", "a blue bird", 0.8, 3, session)
    assert session.engine is engine and "2 edited" in stats  # the same engine and bank

    with session.busy:  # a frame arriving while one is being edited is dropped, not queued
        skipped, _, session = on_frame(_frame(2), "tiny", "a blue bird", 0.8, 3, session)
    assert skipped is not None and not isinstance(skipped, np.ndarray) and session.dropped == 1

    played = play_clip(str(ASSETS / "car-turn.mp4"), "tiny", "a blue bird", 0.8, 3, session)
    frame, stats, session = next(played)
    assert frame.ndim == 3 and "edited" in stats
    stats, session = on_stop(session)
    assert "stopped" in stats and session.engine is None and bank.nbytes() == 0
    assert list(played) == []  # the played stream ends
    skipped, _, _ = on_frame(_frame(), "tiny", "a red car", 0.5, 0, session)
    assert not isinstance(skipped, np.ndarray)  # a stopped stream edits nothing more
    _, session = on_resume(session)
    edited, stats, session = on_frame(_frame(), "tiny", "a red car", 0.5, 0, session)
    assert isinstance(edited, np.ndarray) and "1 edited" in stats and session.engine is not engine  # a new stream, a new bank

    with pytest.raises(gr.Error, match="prompt"):
        on_frame(_frame(), "tiny", "  ", 0.5, 0, LiveSession())


def test_the_tab_builds_with_its_own_queue():
    with gr.Blocks() as demo:
        parts = create_tab(Backend(), "tiny")
    streams = [fn for fn in demo.fns.values() if fn.concurrency_id == LIVE_QUEUE]
    assert len(streams) == 2 and parts["camera"].streaming
