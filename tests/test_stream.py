"""The streaming engine (editing.stream): frames in one at a time, a bounded bank, the `live` command."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from editing.errors import ConfigError
from editing.stream import StreamEditor, stream_frames

from .conftest import ASSETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIVE_OPTIONS = [
    "--model",
    "tiny",
    "--prompt",
    "a red car",
    "--steps",
    "2",
    "--strength",
    "0.5",
    "--guidance",
    "1",
    "--inversion",
    "none",
    "--feature-bank",
    "2",
    "--size",
    "64",
    "--stride",
    "4",
]


def _request(tmp_path, frames: int = 4, **extra):
    from editing.requests import edit_request

    values = {
        "video": str(ASSETS / "car-turn.mp4"),
        "out": str(tmp_path / "live.zip"),
        "model": "tiny",
        "prompt": "a red car",
        "steps": 2,
        "strength": 0.5,
        "guidance": 1.0,
    }
    values |= {
        "inversion": "none",
        "feature_bank": 2,
        "size": 64,
        "stride": 4,
        "frames": frames,
        "cache_dir": str(tmp_path / "cache"),
    } | extra
    return edit_request(values)


@pytest.fixture(scope="module")
def frames():
    """Twelve 64 px frames of car-turn.mp4 (every 4th)."""
    from editing import video_io
    from editing.config import FrameSelection

    return video_io.read_clip(str(ASSETS / "car-turn.mp4"), FrameSelection(max_frames=12, stride=4, size=64)).frames


def _editor(tiny, tmp_path, **extra) -> StreamEditor:
    from editing.core import EditParts

    return StreamEditor(EditParts.of(_request(tmp_path, **extra)), tiny)


def _zip_frames(path) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        return np.stack(
            [np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in sorted(archive.namelist())]
        )


def test_streaming_a_clip_equals_the_live_command_frame_for_frame(tiny, tmp_path, capsys):
    from editing import video_io
    from editing.cli import main

    out = tmp_path / "live.zip"
    assert main(["live", str(ASSETS / "car-turn.mp4"), "--out", str(out), "--frames", "4", *LIVE_OPTIONS]) == 0
    printed = capsys.readouterr().out
    assert "FPS" in printed and "latency" in printed
    request = _request(tmp_path)
    source = video_io.read_clip(request.video, request.selection, request.limits).frames
    with _editor(tiny, tmp_path) as editor:
        streamed = stream_frames(editor, source)
    assert np.array_equal(_zip_frames(out), streamed)


def test_the_bank_is_bounded_whatever_the_stream_length(tiny, tmp_path, frames):
    import psutil

    with _editor(tiny, tmp_path) as short:
        stream_frames(short, frames[:3])
        short_sizes, short_bytes = short.bank.sizes(), short.bank.nbytes()
    with _editor(tiny, tmp_path) as long:
        stream_frames(long, frames[:4])
        rss = psutil.Process().memory_info().rss
        for _ in range(4):  # 4 + 4 x 12 = 52 frames
            stream_frames(long, frames)
        grown = psutil.Process().memory_info().rss - rss
        assert long.count == 52
        assert long.bank.sizes() == short_sizes == {"anchor": short_sizes["anchor"], "recent": 2, "staged": 0}
        assert long.bank.nbytes() == short_bytes  # the anchor and the 2 most recent frames, per step and layer
    assert grown < 50 * 2**20  # no growth with the frames: a few tensors' worth at most


def test_close_frees_the_bank_and_refuses_more_frames(tiny, tmp_path, frames):
    editor = _editor(tiny, tmp_path)
    editor.push(frames[0])
    assert editor.bank.nbytes() > 0
    bank = editor.bank
    editor.close()
    assert editor.bank is None and bank.nbytes() == 0
    with pytest.raises(ConfigError, match="closed"):
        editor.push(frames[1])


def test_a_frame_that_fails_midway_leaves_the_bank_unchanged(tiny, tmp_path, frames):
    """A frame interrupted inside the UNet (after some layers staged their keys) never enters the bank,
    and the stream goes on exactly as if it had never been pushed."""
    with _editor(tiny, tmp_path) as reference:
        expected = stream_frames(reference, frames[[0, 1, 2]])

    with _editor(tiny, tmp_path) as editor:
        editor.push(frames[0])
        editor.push(frames[1])
        before = {place: [(f, k.clone()) for f, k, _ in entries] for place, entries in editor.bank.recent.items()}
        seen = {}
        decode = tiny.vae.decode

        def failing(*args, **kwargs):  # after the UNet: every layer of every step has staged its keys
            seen["staged"] = editor.bank.sizes()["staged"]
            raise RuntimeError("frame dropped")

        tiny.vae.decode = failing
        try:
            with pytest.raises(RuntimeError, match="dropped"):
                editor.push(frames[5])
        finally:
            tiny.vae.decode = decode
        assert seen["staged"] > 0
        after = {place: [(f, k) for f, k, _ in entries] for place, entries in editor.bank.recent.items()}
        assert editor.bank.sizes()["staged"] == 0 and editor.count == 2
        assert before.keys() == after.keys()
        assert all(
            [f for f, _ in before[p]] == [f for f, _ in after[p]]
            and all(torch_equal(a, b) for (_, a), (_, b) in zip(before[p], after[p]))
            for p in before
        )
        assert np.array_equal(editor.push(frames[2]), expected[2])  # a skipped frame is as if never pushed


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_prompt_strength_and_seed_changes_take_effect_mid_stream(tiny, tmp_path, frames):
    with _editor(tiny, tmp_path) as same:
        kept = stream_frames(same, frames[:3])
    with _editor(tiny, tmp_path) as changed:
        first = changed.push(frames[0])
        changed.update(prompt="a blue bird")
        second = changed.push(frames[1])
        changed.update(strength=1.0, seed=3)
        third = changed.push(frames[2])
        assert changed.settings.edit.prompt == "a blue bird" and changed.settings.edit.strength == 1.0
    assert np.array_equal(first, kept[0])  # nothing changes before the update
    assert not np.array_equal(second, kept[1])
    assert not np.array_equal(third, kept[2])
    with _editor(tiny, tmp_path) as editor, pytest.raises(ConfigError, match="strength"):
        editor.update(strength=2.0)


def test_live_refuses_what_a_stream_cannot_do(tiny, tmp_path):
    import dataclasses

    from editing.core import EditParts

    parts = EditParts.of(_request(tmp_path))
    with pytest.raises(ConfigError, match="live edits"):
        StreamEditor(dataclasses.replace(parts, tuned="weights.safetensors"), tiny)


def test_a_stream_leaves_the_backbones_processors_to_file_edits(tiny, tmp_path, frames):
    """A stream runs on its own UNet copy: the shared backbone's processors stay the file edits' while it
    streams, and the copy is made once per UNet."""
    before = {name: type(p) for name, p in tiny.unet.attn_processors.items()}
    editor = _editor(tiny, tmp_path)
    editor.push(frames[0])
    assert editor.backbone.unet is not tiny.unet
    assert {name: type(p) for name, p in tiny.unet.attn_processors.items()} == before
    assert {type(p).__name__ for p in editor.backbone.unet.attn_processors.values()} == {"BankAttnProcessor"}
    assert _editor(tiny, tmp_path).backbone.unet is editor.backbone.unet
