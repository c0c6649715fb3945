"""Video in and out: probe, select and resize frames, write mp4 (with the source's audio), gif, png zip.

Decoding and encoding use PyAV, whose wheels bundle FFmpeg with libx264 and AAC, so no system
ffmpeg is needed. Every writer goes through `editing.files.atomic_output`, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from .config import FrameSelection, VideoLimits
from .errors import VideoError
from .files import atomic_output
from .frames import check_frames

log = logging.getLogger(__name__)

_INDEXED_CONTAINERS = ("mov", "mp4", "m4a", "3gp", "matroska", "webm")


@dataclass(frozen=True)
class VideoInfo:
    """What a user needs to know about a source video before editing it."""

    path: str
    fps: float
    frame_count: int
    width: int
    height: int
    duration: float
    has_audio: bool
    codec: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Clip:
    """Selected, resized RGB frames of a source video and the time range they cover."""

    frames: np.ndarray  # (N, H, W, 3) uint8 RGB
    fps: Fraction  # source fps divided by the stride
    start: float  # time of the first kept frame, seconds from the video's start
    end: float  # end of the time the kept frames cover
    source: VideoInfo
    indices: tuple[int, ...]  # source frame numbers that were kept

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


@dataclass(frozen=True)
class AudioSource:
    """The span of a file's audio to put under an output video."""

    path: str
    start: float
    end: float


def _open(path: Path):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path.name} is not a readable video ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())[:120]


def _stream_fps(stream: av.stream.Stream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0 and rate < 1000:
            return Fraction(rate)
    return None


def probe(path: str | os.PathLike, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Read a video's metadata and refuse inputs that cannot be edited, with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path.name} is empty (0 bytes)")
    if size > limits.max_file_mb * 1e6:
        raise VideoError(f"{path.name} is {size / 1e6:.0f} MB; the limit is {limits.max_file_mb:.0f} MB")
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path.name} has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # e.g. an SVG: FFmpeg sees an image stream it has no decoder for
            raise VideoError(f"{path.name} is not a readable video (no decoder for its picture stream)")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise VideoError(f"{path.name} has no usable frame size (none, or larger than FFmpeg decodes)")
        if max(width, height) > limits.max_side:
            raise VideoError(f"{path.name} is {width}x{height}; the largest side allowed is {limits.max_side} px")
        fps = _stream_fps(stream)
        if fps is None:
            raise VideoError(f"{path.name} has no frame rate (zero or missing)")
        declared_frames = stream.frames
        count, timed = _count_frames(container, stream, path, limits)
        format_names = container.format.name.split(",")
        has_audio = bool(container.streams.audio)
        codec = stream.codec_context.name
    if declared_frames > count and any(name in _INDEXED_CONTAINERS for name in format_names):
        raise VideoError(f"{path.name} is truncated: its index lists {declared_frames} frames but only {count} are present")
    if count and not timed:
        raise VideoError(f"{path.name} has no frame rate: its frames carry no timestamps (a raw stream, not a video file)")
    if count < 2:
        raise VideoError(f"{path.name} has {count} frame{'s' * (count != 1)}; a video needs at least 2")
    duration = count / float(fps)
    if duration > limits.max_duration:
        raise VideoError(f"{path.name} lasts {duration:.0f} s; the limit is {limits.max_duration:.0f} s")
    return VideoInfo(str(path), float(fps), count, width, height, duration, has_audio, codec)


def _count_frames(
    container: av.container.InputContainer, stream: av.stream.Stream, path: Path, limits: VideoLimits
) -> tuple[int, bool]:
    """Count video packets by demuxing only (one packet holds one frame); also tell if any has a timestamp."""
    count, timed = 0, False
    try:
        for packet in container.demux(stream):
            if packet.size:
                count += 1
                timed = timed or packet.pts is not None or packet.dts is not None
                if count > limits.max_source_frames:
                    raise VideoError(f"{path.name} has more than {limits.max_source_frames} frames, the limit")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{path.name} is truncated or corrupt ({_reason(exc)})") from exc
    return count, timed


def target_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Width and height with the long side near `long_side`, both multiples of 8, aspect kept."""
    scale = long_side / max(width, height)
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (N, H, W, 3) uint8 frames; area filter when shrinking, cubic when enlarging."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrinking = width * height < frames.shape[1] * frames.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames])


def read_clip(
    path: str | os.PathLike,
    selection: FrameSelection = FrameSelection(),
    limits: VideoLimits = VideoLimits(),
    info: VideoInfo | None = None,
) -> Clip:
    """Decode the frames `selection` asks for, resized so the long side is `selection.size`."""
    info = info or probe(path, limits)
    path = Path(path)
    if selection.start >= info.duration:
        raise VideoError(f"start ({selection.start:g} s) is past the end of {path.name} ({info.duration:.2f} s)")
    frames, indices = [], []
    kept = selected_range(info, selection)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if index >= kept.stop or (selection.max_frames and len(frames) >= selection.max_frames):
                    break
                if index not in kept:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                indices.append(index)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path.name} is truncated or corrupt: decoding failed at frame {index} ({_reason(exc)})") from exc
    if len(frames) < 2:
        raise VideoError(
            f"the selection keeps {len(frames)} frame{'s' * (len(frames) != 1)} of {path.name}; widen the time range or lower the stride"
        )
    width, height = target_size(info.width, info.height, selection.size)
    array = resize_frames(np.stack(frames), width, height)
    fps = Fraction(info.fps).limit_denominator(1001) / selection.stride
    start = indices[0] / info.fps
    end = min(info.duration, (indices[-1] + selection.stride) / info.fps)
    return Clip(array, fps, start, end, info, tuple(indices))


@dataclass(frozen=True)
class FramePlan:
    """What a selection of a video yields, known before decoding: source frame numbers, fps, output size."""

    indices: tuple[int, ...]
    fps: float
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    def summary(self) -> str:
        """One line for people: frame count, output size, frame rate and duration."""
        seconds = self.num_frames / self.fps
        return f"{self.num_frames} frames, {self.width}x{self.height} px at {self.fps:.2f} fps ({seconds:.2f} s)"


def selected_range(info: VideoInfo, selection: FrameSelection) -> range:
    """The source frame indices the time range and stride keep (before the frame-count cap)."""
    start = round(selection.start * info.fps)
    end = info.frame_count if selection.end is None else min(info.frame_count, round(selection.end * info.fps))
    return range(start, end, selection.stride)


def plan_frames(info: VideoInfo, selection: FrameSelection) -> FramePlan:
    """The frames and size `read_clip(info.path, selection)` will return, from metadata alone."""
    indices = tuple(selected_range(info, selection))[: selection.max_frames or None]
    if len(indices) < 2:
        name = Path(info.path).name
        raise VideoError(
            f"the selection keeps {len(indices)} frame{'s' * (len(indices) != 1)} of {name}; widen the time range or lower the stride"
        )
    width, height = target_size(info.width, info.height, selection.size)
    return FramePlan(indices, info.fps / selection.stride, width, height)


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: Fraction | float,
    audio: AudioSource | None = None,
    crf: int = 18,
    notes: list[str] | None = None,
) -> Path:
    """Write H.264/yuv420p mp4 that browsers play, with `audio`'s time span re-encoded as AAC.

    Damaged audio packets are skipped; audio that cannot be kept at all is left out and the video written
    without it. Either is said in one sentence appended to `notes`; the video itself is never lost to its audio.
    """
    if audio is not None:
        try:
            return _write_mp4(path, frames, fps, audio, crf, notes)
        except AudioError as exc:
            log.warning("%s: %s", Path(path).name, exc)
            _note(notes, f"the source's audio could not be kept ({exc}); {Path(path).name} is written without it")
    return _write_mp4(path, frames, fps, None, crf, notes)


def _write_mp4(
    path: str | Path, frames: np.ndarray, fps: Fraction | float, audio: AudioSource | None, crf: int, notes: list[str] | None
) -> Path:
    frames = check_frames(frames)
    height, width = frames.shape[1:3]
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs even width and height, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_output(path) as partial:
        with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
            video = out.add_stream("libx264", rate=rate)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"crf": str(crf), "preset": "veryfast"}
            audio_in = _open_audio(audio)
            try:
                audio_out = _add_audio_stream(out, audio_in) if audio_in else None
                for i, array in enumerate(frames):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                    frame.pts = i
                    frame.time_base = 1 / rate
                    out.mux(video.encode(frame))
                out.mux(video.encode())
                if audio_in:
                    _copy_audio(audio_in, audio_out, out, audio, notes)
            finally:
                if audio_in:
                    audio_in.close()
        return Path(path)


class AudioError(Exception):
    """The source's audio cannot be put under the output; the video is then written without it."""


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def _open_audio(audio: AudioSource | None):
    if audio is None:
        return None
    try:
        container = _open(Path(audio.path))
    except VideoError as exc:
        raise AudioError(str(exc)) from exc
    if not container.streams.audio:
        container.close()
        return None
    return container


def _add_audio_stream(out: av.container.OutputContainer, audio_in: av.audio.stream.AudioStream):
    source = audio_in.streams.audio[0]
    try:
        stream = out.add_stream("aac", rate=source.codec_context.sample_rate or 44100)
        stream.layout = "stereo" if source.codec_context.channels >= 2 else "mono"
    except (av.error.FFmpegError, ValueError, TypeError, AttributeError) as exc:
        raise AudioError(f"its audio stream cannot be re-encoded: {_reason(exc)}") from exc
    return stream


def _copy_audio(
    audio_in: av.audio.stream.AudioStream,
    audio_out: av.audio.stream.AudioStream,
    out: av.container.OutputContainer,
    audio: AudioSource,
    notes: list[str] | None = None,
) -> None:
    """Decode the source audio in [start, end), relative to the video's start, and encode it as AAC.

    Packets the decoder refuses (damaged bytes) are skipped, and counted in `notes`; any other failure, or
    audio of which nothing decodes, raises AudioError."""
    try:
        written, skipped, ended_early = _copy_audio_samples(audio_in, audio_out, out, audio)
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise AudioError(_reason(exc)) from exc
    name = Path(audio.path).name
    if written == 0 and (skipped or ended_early):
        raise AudioError(f"none of the audio of {name} in the kept time range decodes")
    if skipped:
        _note(notes, f"{skipped} damaged audio packet{'s' * (skipped != 1)} of {name} skipped; the audio has gaps there")
    if ended_early:
        _note(notes, f"the audio of {name} is cut short where it stops being readable ({ended_early})")


def _copy_audio_samples(
    audio_in: av.audio.stream.AudioStream,
    audio_out: av.audio.stream.AudioStream,
    out: av.container.OutputContainer,
    audio: AudioSource,
) -> tuple[int, int, str]:
    """(samples written, damaged packets skipped, why reading stopped early or '')."""
    source = audio_in.streams.audio[0]
    video = audio_in.streams.video[0] if audio_in.streams.video else None
    origin = float(video.start_time * video.time_base) if video is not None and video.start_time is not None else 0.0
    rate = audio_out.codec_context.sample_rate
    resampler = av.AudioResampler(format="fltp", layout=audio_out.layout.name, rate=rate)
    first, last = round(audio.start * rate), round(audio.end * rate)  # sample window, source time
    written, skipped, ended_early = 0, 0, ""
    packets = audio_in.demux(source)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as exc:  # the container itself is damaged from here on
            ended_early = _reason(exc)
            break
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:  # a damaged packet: skip it, keep the rest
            skipped += 1
            continue
        done = False
        for frame in decoded:
            if frame.pts is None:
                continue
            for chunk in resampler.resample(frame):
                begin = round((float(frame.pts * frame.time_base) - origin) * rate)
                samples = chunk.to_ndarray()
                lo, hi = max(first - begin, 0), min(last - begin, samples.shape[1])
                if hi <= lo:
                    done = done or begin >= last
                    continue
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, lo:hi]), format="fltp", layout=audio_out.layout.name
                )
                piece.sample_rate = rate
                piece.pts = written
                piece.time_base = Fraction(1, rate)
                written += hi - lo
                out.mux(audio_out.encode(piece))
        if done:
            break
    out.mux(audio_out.encode())
    return written, skipped, ended_early


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: Fraction | float) -> Path:
    """Write a looping GIF at the given frame rate."""
    frames = check_frames(frames)
    images = [Image.fromarray(frame) for frame in frames]
    with atomic_output(path) as partial:
        images[0].save(partial, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / float(fps)), loop=0)
    return Path(path)


def write_png_zip(path: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write every frame as a numbered PNG inside one zip file."""
    frames = check_frames(frames)
    with atomic_output(path) as partial:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for i, frame in enumerate(frames):
                buffer = io.BytesIO()
                Image.fromarray(frame).save(buffer, format="PNG")
                archive.writestr(f"frame_{i:05d}.png", buffer.getvalue())
    return Path(path)


def write_video(
    path: str | os.PathLike,
    clip_frames: np.ndarray,
    fps: Fraction,
    audio: AudioSource | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write frames in the format the file extension names: .mp4, .gif or .zip (PNG frames); what was left
    out (damaged audio) is said in `notes`."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return write_mp4(path, clip_frames, fps, audio, notes=notes)
    if suffix == ".gif":
        return write_gif(path, clip_frames, fps)
    if suffix == ".zip":
        return write_png_zip(path, clip_frames)
    raise VideoError(f"cannot write {Path(path).name}: the output must end in .mp4, .gif or .zip")
