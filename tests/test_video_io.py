"""Video in and out on real clips: metadata, selection, resizing, round trips with audio, bad input."""

from __future__ import annotations

import io
import zipfile
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from editing.config import FrameSelection, VideoLimits
from editing.errors import ConfigError, VideoError
from editing.files import atomic_output
from editing.video_io import (
    AudioSource,
    probe,
    read_clip,
    target_size,
    write_gif,
    write_mp4,
    write_png_zip,
    write_video,
)

from .conftest import encode_frames


def test_probe_reports_metadata_of_real_clips(skiing, car, tree):
    ski = probe(skiing)
    assert (ski.frame_count, ski.width, ski.height, ski.has_audio) == (91, 718, 718, True)
    assert ski.fps == pytest.approx(30000 / 1001)
    assert ski.duration == pytest.approx(91 / ski.fps)
    road = probe(car)
    assert (road.fps, road.frame_count, road.width, road.height, road.has_audio) == (10.0, 80, 480, 480, False)
    avi = probe(tree)
    assert (avi.frame_count, avi.width, avi.height) == (68, 320, 240)
    assert avi.fps == pytest.approx(15, rel=1e-4)


@pytest.mark.parametrize(
    "suffix, codec, pix_fmt",
    [
        (".webm", "libvpx-vp9", "yuv420p"),
        (".mov", "libx264", "yuv420p"),
        (".avi", "mjpeg", "yuvj420p"),
        (".mp4", "mpeg4", "yuv420p"),
    ],
)
def test_reads_every_container(tmp_path, car, suffix, codec, pix_fmt):
    frames = read_clip(car, FrameSelection(max_frames=6, size=128)).frames
    path = encode_frames(tmp_path / f"clip{suffix}", frames, 12, codec, pix_fmt)
    info = probe(path)
    assert (info.frame_count, info.width, info.height) == (6, 128, 128)
    assert info.fps == pytest.approx(12)
    clip = read_clip(path, FrameSelection(max_frames=None, size=128))
    assert clip.num_frames == 6
    assert np.abs(clip.frames.astype(int) - frames.astype(int)).mean() < 12  # lossy codecs, same pictures


def test_reads_gif(tmp_path, car):
    frames = read_clip(car, FrameSelection(max_frames=5, size=96)).frames
    path = write_gif(tmp_path / "clip.gif", frames, 10)
    info = probe(path)
    assert (info.frame_count, info.width, info.height) == (5, 96, 96)
    assert info.fps == pytest.approx(10)
    assert read_clip(path, FrameSelection(max_frames=None, size=96)).num_frames == 5


def test_selection_by_time_stride_and_count(car):
    clip = read_clip(car, FrameSelection(start=1.0, end=5.0, stride=3, max_frames=None, size=128))
    assert clip.indices == tuple(range(10, 50, 3))
    assert clip.fps == Fraction(10, 3)
    assert clip.start == pytest.approx(1.0)
    assert clip.end == pytest.approx((clip.indices[-1] + 3) / 10)
    capped = read_clip(car, FrameSelection(start=1.0, stride=2, max_frames=4, size=128))
    assert capped.indices == (10, 12, 14, 16)


def test_selection_that_keeps_too_little_is_refused(car):
    with pytest.raises(VideoError, match="past the end"):
        read_clip(car, FrameSelection(start=9.0, size=128))
    with pytest.raises(VideoError, match="keeps 1 frame"):
        read_clip(car, FrameSelection(start=7.9, size=128))


@pytest.mark.parametrize(
    "width, height", [(718, 718), (640, 480), (480, 640), (320, 240), (1920, 1080), (1080, 1920), (333, 997)]
)
@pytest.mark.parametrize("long_side", [256, 512, 768])
def test_target_size_keeps_aspect_with_multiples_of_8(width, height, long_side):
    new_width, new_height = target_size(width, height, long_side)
    assert new_width % 8 == 0 and new_height % 8 == 0
    assert max(new_width, new_height) == long_side
    assert abs(new_width / new_height - width / height) < 8 / min(new_width, new_height) * (width / height) + 1e-9


def test_portrait_clip_stays_portrait(tmp_path, tree):
    landscape = read_clip(tree, FrameSelection(max_frames=4, size=320)).frames
    portrait = np.ascontiguousarray(np.rot90(landscape, axes=(1, 2)))  # 240x320 -> 320 tall, 240 wide
    path = encode_frames(tmp_path / "portrait.mp4", portrait, 15, "libx264")
    clip = read_clip(path, FrameSelection(max_frames=None, size=256))
    assert (clip.height, clip.width) == (256, 192)


def _audio_samples(path, start=0.0, end=None) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.codec_context.sample_rate)
        chunks = [c.to_ndarray().ravel() for f in container.decode(stream) for c in resampler.resample(f)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(chunks)
    return samples[round(start * rate) : None if end is None else round(end * rate)], rate


def _envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    window = rate // 100  # 10 ms
    usable = len(samples) // window * window
    return np.sqrt((samples[:usable].reshape(-1, window) ** 2).mean(axis=1))


def test_mp4_round_trip_keeps_fps_frames_aspect_and_audio(tmp_path, skiing):
    clip = read_clip(skiing, FrameSelection(start=0.5, end=2.5, stride=2, max_frames=None, size=256))
    out = write_mp4(tmp_path / "out.mp4", clip.frames, clip.fps, AudioSource(str(skiing), clip.start, clip.end))
    info = probe(out)
    assert info.fps == pytest.approx(float(clip.fps)) and info.fps == pytest.approx(probe(skiing).fps / 2)
    assert (info.frame_count, info.width, info.height, info.has_audio) == (clip.num_frames, 256, 256, True)
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt, audio.codec_context.name) == ("h264", "yuv420p", "aac")
        audio_seconds = float(audio.duration * audio.time_base)
    assert audio_seconds == pytest.approx(clip.end - clip.start, abs=0.05)
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "moov first (faststart) so browsers can play while loading"
    # The audio is the kept time range of the source, not its beginning.
    kept, rate = _audio_samples(out)
    source_range, _ = _audio_samples(skiing, clip.start, clip.end)
    source_start, _ = _audio_samples(skiing, 0.0, clip.end - clip.start)
    envelope, same, other = _envelope(kept, rate), _envelope(source_range, rate), _envelope(source_start, rate)
    n = min(len(envelope), len(same), len(other))
    matching = np.corrcoef(envelope[:n], same[:n])[0, 1]
    shifted = np.corrcoef(envelope[:n], other[:n])[0, 1]
    assert matching > 0.9 and matching > shifted + 0.2


def test_png_zip_is_lossless_and_gif_keeps_frame_count(tmp_path, car):
    frames = read_clip(car, FrameSelection(max_frames=5, size=128)).frames
    archive = write_png_zip(tmp_path / "frames.zip", frames)
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")) for n in names])
    assert names[0] == "frame_00000.png" and np.array_equal(decoded, frames)
    gif = write_video(tmp_path / "clip.gif", frames, Fraction(10))
    assert Image.open(gif).n_frames == 5


def test_unknown_output_format_is_refused(tmp_path, car):
    frames = read_clip(car, FrameSelection(max_frames=2, size=64)).frames
    with pytest.raises(VideoError, match=".mp4, .gif or .zip"):
        write_video(tmp_path / "clip.mkv", frames, Fraction(10))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "is empty"),
        ("text", "not a readable video"),
        ("truncated", "truncated"),
        ("single_frame", "has 1 frame"),
        ("no_frame_rate", "no frame rate"),
        ("missing", "does not exist"),
    ],
)
def test_bad_input_gets_one_clear_error(bad_inputs, kind, message):
    with pytest.raises(VideoError, match=message) as caught:
        probe(bad_inputs[kind])
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "limits, message",
    [
        (VideoLimits(max_side=256), "largest side allowed is 256"),
        (VideoLimits(max_duration=2.0), "limit is 2 s"),
        (VideoLimits(max_source_frames=50), "more than 50 frames"),
        (VideoLimits(max_file_mb=0.1), "limit is 0 MB"),
    ],
)
def test_configurable_limits_refuse_absurd_inputs(car, limits, message):
    with pytest.raises(VideoError, match=message):
        probe(car, limits)


def test_settings_validate_themselves():
    with pytest.raises(ConfigError, match="multiple of 8"):
        FrameSelection(size=250)
    with pytest.raises(ConfigError, match="after start"):
        FrameSelection(start=3, end=2)
    with pytest.raises(ConfigError, match="stride"):
        FrameSelection(stride=0)
    with pytest.raises(ConfigError, match="max_side"):
        VideoLimits(max_side=0)


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as partial:
            partial.write_bytes(b"half a video")
            raise RuntimeError("encoder crashed")
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_writer_failure_midway_leaves_no_output(tmp_path, car, monkeypatch):
    import av

    frames = read_clip(car, FrameSelection(max_frames=3, size=64)).frames
    real, made = av.VideoFrame, []

    class FailingSecondFrame:  # the encoder's input fails on the second frame: inside atomic_output
        @staticmethod
        def from_ndarray(*args, **kwargs):
            made.append(1)
            if len(made) == 2:
                raise RuntimeError("failed midway")
            return real.from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av, "VideoFrame", FailingSecondFrame)
    with pytest.raises(RuntimeError, match="failed midway"):
        write_mp4(tmp_path / "out.mp4", frames, 10)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_audio_source_leaves_the_audio_out_and_says_so(tmp_path, car):
    """Issue 18: audio that cannot be kept never costs the video (it used to fail the whole write)."""
    frames = read_clip(car, FrameSelection(max_frames=3, size=64)).frames
    notes: list[str] = []
    out = write_mp4(tmp_path / "out.mp4", frames, 10, AudioSource(str(tmp_path / "gone.mp4"), 0, 1), notes=notes)
    assert not probe(out).has_audio and len(notes) == 1 and "written without it" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
