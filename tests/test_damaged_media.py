"""Nothing lost on damaged media (issue 18, defect 6): damaged audio packets are skipped, audio that cannot
be kept is left out with a note, and a failed write after denoising leaves the frames as PNGs."""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from editing import video_io
from editing.config import EditConfig, FrameSelection

SMALL = dict(max_frames=4, size=64)


def clip_with_audio(path: Path, container: str, audio_codec: str, video_codec: str, seconds: float = 2.0) -> Path:
    """A short clip of moving gradients with a stereo 440 Hz tone (48 kHz) in `audio_codec`."""
    fps, side = 10, 64
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = side, side, "yuv420p"
        audio = out.add_stream(audio_codec, rate=48000)
        audio.layout = "stereo"
        frame_size = audio.codec_context.frame_size or 1536
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        for i in range(int(seconds * fps)):
            image = np.stack([np.roll(ramp, 3 * i)[None, :].repeat(side, 0)] * 3, -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        done = 0
        while done < seconds * 48000:
            t = (np.arange(frame_size) + done) / 48000
            samples = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.3
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 48000, done
            out.mux(audio.encode(chunk))
            done += frame_size
        out.mux(video.encode())
        out.mux(audio.encode())
    return path


def damage_audio_packets(path: Path, target: Path, every: int = 3) -> int:
    """Overwrite the inside of every `every`-th audio packet (found by demuxing) with random bytes; returns how many."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        packets = [
            (p.pos, p.size)
            for p in container.demux(container.streams.audio[0])
            if p.size > 8 and p.pos is not None and p.pos >= 0
        ]
    rng = np.random.default_rng(0)
    damaged = 0
    for number, (position, size) in enumerate(packets):
        if number % every == 1 or every == 1:
            data[position + 2 : position + size - 2] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()
            damaged += 1
    target.write_bytes(bytes(data))
    return damaged


def refused_packets(path: Path) -> int:
    """How many audio packets the decoder refuses: the damage is real, not cosmetic."""
    refused = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.audio[0]):
            try:
                packet.decode()
            except av.error.FFmpegError:
                refused += 1
    return refused


@pytest.fixture(scope="module", params=[("avi", "ac3", "mpeg4"), ("mp4", "aac", "libx264")], ids=["avi-ac3", "mp4-aac"])
def damaged(request, tmp_path_factory):
    container, audio_codec, video_codec = request.param
    folder = tmp_path_factory.mktemp(audio_codec)
    good = clip_with_audio(folder / f"good.{container}", container, audio_codec, video_codec)
    bad = folder / f"damaged.{container}"
    damaged_count = damage_audio_packets(good, bad)
    assert damaged_count > 5 and refused_packets(bad) > 0 and refused_packets(good) == 0
    return good, bad


def test_damaged_audio_packets_are_skipped_and_the_rest_is_kept(damaged, tmp_path):
    good, bad = damaged
    frames = video_io.read_clip(bad, FrameSelection(**SMALL)).frames
    notes: list[str] = []
    out = video_io.write_mp4(tmp_path / "out.mp4", frames, 10, video_io.AudioSource(str(bad), 0.0, 2.0), notes=notes)
    info = video_io.probe(out)
    assert info.has_audio and info.frame_count == len(frames)
    assert len(notes) == 1 and "damaged audio packets" in notes[0] and "skipped" in notes[0]
    with av.open(str(out)) as written:
        kept = sum(f.samples for f in written.decode(written.streams.audio[0]))
    assert 0.3 * 2.0 * 48000 < kept  # most of the two seconds survive


def test_audio_that_cannot_be_kept_is_left_out_and_the_note_says_so(tmp_path):
    good = clip_with_audio(tmp_path / "good.avi", "avi", "ac3", "mpeg4")
    bad = tmp_path / "all-damaged.avi"
    damage_audio_packets(good, bad, every=1)
    frames = video_io.read_clip(bad, FrameSelection(**SMALL)).frames
    notes: list[str] = []
    out = video_io.write_mp4(tmp_path / "out.mp4", frames, 10, video_io.AudioSource(str(bad), 0.0, 2.0), notes=notes)
    info = video_io.probe(out)
    assert not info.has_audio and info.frame_count == len(frames)
    assert len(notes) == 1 and "audio could not be kept" in notes[0] and "written without it" in notes[0]
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_an_edit_of_a_clip_with_damaged_audio_is_written_and_says_what_was_skipped(damaged, tmp_path):
    from editing.pipeline import EditRequest, edit_video

    _, bad = damaged
    request = EditRequest(
        str(bad),
        str(tmp_path / "out.mp4"),
        EditConfig(prompt="a cat", steps=1, guidance=1.0, strength=0.5),
        FrameSelection(**SMALL),
        model="tiny",
        device="cpu",
    )
    result = edit_video(request)
    assert Path(result.output) == tmp_path / "out.mp4" and video_io.probe(result.output).has_audio
    assert any("damaged audio packets" in w for w in result.warnings) and result.to_dict()["warnings"] == list(result.warnings)


@pytest.mark.parametrize("failing", ["write_mp4", "write_gif"])
def test_a_failed_write_after_denoising_keeps_the_frames_as_pngs(car, tmp_path, monkeypatch, failing):
    from editing.pipeline import EditRequest, edit_video

    def full_disk(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(video_io, failing, full_disk)
    out = tmp_path / ("out.mp4" if failing == "write_mp4" else "out.gif")
    request = EditRequest(
        str(car),
        str(out),
        EditConfig(prompt="a cat", steps=1, guidance=1.0, strength=0.5),
        FrameSelection(**SMALL),
        model="tiny",
        device="cpu",
    )
    result = edit_video(request)
    assert not out.exists() and result.output == str(tmp_path / "out-frames.zip")
    with zipfile.ZipFile(result.output) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == result.frames
    (warning,) = result.warnings
    assert f"{out.name} could not be written (No space left on device)" in warning and "out-frames.zip" in warning
    assert str(tmp_path) not in warning  # the reason names files, not the server's folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-frames.zip"]  # no partial file


def test_when_another_format_was_written_the_edit_keeps_it(car, tmp_path, monkeypatch):
    """The app asks for mp4, gif and zip: a failed mp4 leaves the gif and the zip, and says so."""
    from editing.pipeline import EditRequest, edit_video

    monkeypatch.setattr(video_io, "write_mp4", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("encoder exploded")))
    request = EditRequest(
        str(car), str(tmp_path / "out.mp4"), EditConfig(prompt="a cat", steps=1, guidance=1.0, strength=0.5), FrameSelection(**SMALL),
        model="tiny", device="cpu", also_write=(str(tmp_path / "out.gif"), str(tmp_path / "out.zip")),
    )  # fmt: skip
    result = edit_video(request)
    assert result.output == str(tmp_path / "out.gif") and result.also_written == (str(tmp_path / "out.zip"),)
    assert result.warnings == ("out.mp4 could not be written (encoder exploded)",)


def test_the_app_offers_the_frames_when_the_video_could_not_be_written(car, monkeypatch):
    from ui.backend import Backend
    from ui.edit_tab import make_handlers

    monkeypatch.setattr(video_io, "write_mp4", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    video, gif, frames_zip, details, *_ = make_handlers(Backend())["edit"](
        {"video": str(car), "prompt": "a cat", "model": "tiny", "steps": 1, "frames": 4, "size": 64}, None
    )
    assert video is None and gif is not None and frames_zip is not None
    assert details["warnings"] == ["car-turn-edited.mp4 could not be written (No space left on device)"]


def test_write_mp4_keeps_fraction_rates(tmp_path):
    """The audio-less path is unchanged: a 30000/1001 clip writes and reads back its frames."""
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    out = video_io.write_mp4(tmp_path / "a.mp4", frames, Fraction(30000, 1001))
    assert video_io.probe(out).frame_count == 3


def test_the_cli_says_what_was_left_out_and_exits_non_zero_when_the_output_is_not_the_one_asked(
    car, tmp_path, monkeypatch, capsys
):
    from editing import cli

    monkeypatch.setattr(video_io, "write_mp4", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    code = cli.main(
        [
            "edit",
            str(car),
            "--model",
            "tiny",
            "--prompt",
            "a cat",
            "--frames",
            "4",
            "--size",
            "64",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "out.mp4"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "warning: out.mp4 could not be written (No space left on device)" in err and "out-frames.zip" in err
    assert (tmp_path / "out-frames.zip").is_file() and not (tmp_path / "out.mp4").exists()
