"""Browser-playable previews of uploads: an H.264 copy (PyAV) of any clip a browser cannot play, judged by
its container, codec and pixel format and by decoding it with FFmpeg's error detection on (a stream error
that FFmpeg would conceal makes Chromium stop with PIPELINE_ERROR_DECODE). Edits still read the uploaded
file itself."""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from editing.cache import content_hash
from editing.files import atomic_output

# (container, codec, pixel format or None for any) that Chromium, Firefox and Safari all play.
PLAYABLE = {
    ("mp4", "h264", "yuv420p"), ("mp4", "h264", "yuvj420p"), ("mp4", "av1", None),
    ("webm", "vp8", None), ("webm", "vp9", None), ("webm", "av1", None),
}  # fmt: skip
PREVIEW_CRF = 17  # visually lossless: the preview stands for the upload on screen


def browser_playable(path: str | Path) -> bool:
    """Whether browsers play this file as it is (H.264 4:2:0 or AV1 in mp4; VP8, VP9 or AV1 in webm)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                return False
            stream = container.streams.video[0]
            names = container.format.name.split(",")
            family = "mp4" if "mp4" in names or "mov" in names else "webm" if "webm" in names else None
            codec = stream.codec_context.name if stream.codec_context is not None else None
            pix_fmt = stream.codec_context.pix_fmt if stream.codec_context is not None else None
    except av.error.FFmpegError:
        return False
    return ((family, codec, pix_fmt) in PLAYABLE or (family, codec, None) in PLAYABLE) and decodes_cleanly(path)


def decodes_cleanly(path: str | Path) -> bool:
    """Whether every frame of the first video stream decodes with no error FFmpeg detects (`err_detect`
    explode: a damaged slice raises instead of being concealed), and at least one frame does."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return _decodes_cleanly(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _decodes_cleanly(path: str, size: int, mtime_ns: int) -> bool:
    """decodes_cleanly for one version of a file (the examples are judged once per process)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"err_detect": "crccheck+bitstream+buffer+explode"}
            return any(True for _ in container.decode(stream))
    except (av.error.FFmpegError, IndexError, ValueError):
        return False


def write_preview(source: str | Path, output: str | Path, crf: int = PREVIEW_CRF) -> Path:
    """Re-encode `source`'s frames as H.264/yuv420p mp4 at its frame rate and size (odd sides padded by
    one pixel), frame by frame, FFmpeg concealing damaged slices; the file appears only when complete (and
    only with at least one frame: else VideoError). Audio is left out."""
    from editing.errors import VideoError

    with av.open(str(source), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or stream.guessed_rate or 25).limit_denominator(1001)
        width, height = stream.codec_context.width, stream.codec_context.height
        even_w, even_h = width + width % 2, height + height % 2
        with atomic_output(output) as partial:
            with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
                video = out.add_stream("libx264", rate=rate)
                video.width, video.height, video.pix_fmt = even_w, even_h, "yuv420p"
                video.options = {"crf": str(crf), "preset": "veryfast"}
                written = 0
                for i, frame in enumerate(container.decode(stream)):
                    written += 1
                    rgb = frame.to_ndarray(format="rgb24")
                    if rgb.shape[:2] != (even_h, even_w):
                        rgb = np.pad(rgb, ((0, even_h - rgb.shape[0]), (0, even_w - rgb.shape[1]), (0, 0)), mode="edge")
                    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                    picture.pts, picture.time_base = i, 1 / rate
                    out.mux(video.encode(picture))
                if not written:
                    raise VideoError(f"no frame of {Path(source).name} could be decoded")
                out.mux(video.encode())
    return Path(output)


def preview_for(source: str | Path, folder: str | Path) -> str:
    """`source` itself when browsers play it, else its H.264 preview in `folder` (one made earlier there for
    the same bytes is reused: the examples' previews outlive the server)."""
    if browser_playable(source):
        return str(source)
    preview = Path(folder) / f"{content_hash(source)[:16]}-{Path(source).stem}-preview.mp4"
    if not preview.is_file():
        write_preview(source, preview)
    return str(preview)
