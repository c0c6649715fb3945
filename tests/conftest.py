"""Shared fixtures: real clips from assets/, bad inputs made from them, and the tiny offline model."""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
sys.path.insert(0, str(ROOT))

# Tests never reach the Hub: the built-in models need nothing from it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# OpenMP threads that wait for work sleep instead of spinning (set before torch is imported; inherited by the
# CLI subprocesses and Ray workers). The tests' tiny models run many small ops: with spinning waiters, two
# threads on a CPU shared with other processes cost many times one thread (docs/development.md, test time).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Inversions and condition maps go to a temporary cache, never the user's."""
    os.environ["EDITING_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def skiing() -> Path:
    """A real clip with an audio track: 91 frames at 29.97 fps, 718x718."""
    return ASSETS / "man-skiing.mp4"


@pytest.fixture(scope="session")
def car() -> Path:
    """A real clip without audio: 80 frames at 10 fps, 480x480."""
    return ASSETS / "car-turn.mp4"


@pytest.fixture(scope="session")
def tree() -> Path:
    """A real AVI (Cinepak): 68 frames at 15 fps, 320x240."""
    return ASSETS / "tree.avi"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared machine two spinning threads cost 10x
    (a module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny():
    from editing.models import load_backbone

    return load_backbone("tiny", device="cpu")


def small_edit(tmp_path: Path, name: str, frames: int = 3, **engine):
    """A 2-step tiny-model edit of a few 64 px frames of car-turn.mp4, sharing tmp_path's cache."""
    from editing.config import EditConfig, EngineConfig, FrameSelection
    from editing.pipeline import EditRequest

    return EditRequest(
        video=str(ASSETS / "car-turn.mp4"),
        output=str(tmp_path / f"{name}.mp4"),
        edit=EditConfig(prompt="a red car", steps=2, guidance=3.0),
        selection=FrameSelection(max_frames=frames, stride=4, size=64),
        engine=EngineConfig(cache_dir=str(tmp_path / "cache"), **engine),
        model="tiny",
    )


def encode_frames(path: Path, frames: np.ndarray, fps, codec: str, pix_fmt: str = "yuv420p", fmt: str | None = None) -> Path:
    """Write frames with an arbitrary codec and container (for testing readers, not the product writer)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            out.mux(stream.encode(video_frame))
        out.mux(stream.encode())
    return path


def raw_h264(path: Path, frames: np.ndarray) -> Path:
    """An H.264 elementary stream (no container, no timestamps), whatever the file is named."""
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


@pytest.fixture
def bad_inputs(tmp_path, car) -> dict[str, Path]:
    """Every kind of unusable input the app must refuse with a clear one-line error."""
    from editing.config import FrameSelection
    from editing.video_io import read_clip

    frames = read_clip(car, FrameSelection(max_frames=4, size=64)).frames
    data = car.read_bytes()
    inputs = {
        "empty": tmp_path / "empty.mp4",
        "text": tmp_path / "notes.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "single_frame": tmp_path / "one-frame.mp4",
        "no_frame_rate": tmp_path / "raw-stream.mp4",
        "missing": tmp_path / "does-not-exist.mp4",
    }
    inputs["empty"].write_bytes(b"")
    inputs["text"].write_text("this is a text file, not a video\n" * 20)
    inputs["truncated"].write_bytes(data[: len(data) // 2])
    encode_frames(inputs["single_frame"], frames[:1], 10, "libx264")
    raw_h264(inputs["no_frame_rate"], frames)
    return inputs


def pytest_collection_modifyitems(config, items):
    """Tests that need pretrained weights run only with RUN_REAL_WEIGHTS=1 (and the Hub or a local copy)."""
    if os.environ.get("RUN_REAL_WEIGHTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs pretrained weights; run with RUN_REAL_WEIGHTS=1 HF_HUB_OFFLINE=0")
    for item in items:
        if "real_weights" in item.keywords:
            item.add_marker(skip)
