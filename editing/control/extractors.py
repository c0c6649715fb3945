"""Condition extractors: turn RGB frames into the images SD-1.5 ControlNets were trained on.

Every extractor maps (N, H, W, 3) uint8 RGB frames to (N, H, W, 3) uint8 RGB condition images of the
same size:
  - canny: white OpenCV Canny edges on black;
  - pose: an OpenPose-18 skeleton in ControlNet's colours on black, from mediapipe's BlazePose (its
    weights ship with the package, so it works offline);
  - depth: grey MiDaS inverse depth (near = bright), from controlnet-aux's `MidasDetector`;
  - softedge: HED (or PiDiNet) soft edges, from controlnet-aux.
depth and softedge need annotator weights: a Hub repo (default `lllyasviel/Annotators`) or a local
folder holding the checkpoint. A user may also bring a condition video of their own
(`conditions_from_video`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..condition_kinds import condition_kind, get_condition_kind
from ..config import FrameSelection, VideoLimits
from ..errors import ConfigError, ModelLoadError, VideoError
from ..frames import check_frames
from ..models import is_offline_error
from ..video_io import read_clip, resize_frames

log = logging.getLogger(__name__)

Extractor = Callable[..., np.ndarray]

DEFAULT_ANNOTATORS = "lllyasviel/Annotators"
OFFLINE_ALTERNATIVES = (
    "a local folder holding {filename} (--annotators), a condition video of your own, "
    "or the canny or pose conditions, which need no download"
)
CACHE_KEY_VERSION = 1  # bump when an extractor's output changes, so cached condition maps are not reused

# Which BlazePose landmark gives each OpenPose-18 (COCO) keypoint; both name sides from the person's view.
# OpenPose order: nose, neck, R shoulder, R elbow, R wrist, L shoulder, L elbow, L wrist, R hip, R knee,
# R ankle, L hip, L knee, L ankle, R eye, L eye, R ear, L ear. The neck is the midpoint of the shoulders.
NECK = "neck"
BLAZEPOSE_TO_OPENPOSE: tuple[int | str, ...] = (0, NECK, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
BLAZEPOSE_SHOULDERS = (11, 12)
NUM_BLAZEPOSE_LANDMARKS = 33


def register_extractor(name: str, controlnets: dict[str, str] | None = None) -> Callable[[Extractor], Extractor]:
    """Register the decorated extractor as the condition kind `name` (see editing.condition_kinds)."""
    return condition_kind(name, controlnets)


def _get_extractor(kind: str) -> Extractor:
    return get_condition_kind(kind).load_extractor()


def _option_defaults(kind: str) -> dict[str, Any]:
    """The options an extractor accepts, with their default values."""
    parameters = list(inspect.signature(_get_extractor(kind)).parameters.values())[1:]  # skip the frames
    return {p.name: p.default for p in parameters}


def extract_conditions(kind: str, frames: np.ndarray, annotator_source: str | None = None, **options) -> np.ndarray:
    """Condition images of kind `kind` for (N, H, W, 3) uint8 RGB frames, same shape and dtype."""
    extractor = _get_extractor(kind)
    defaults = _option_defaults(kind)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        accepted = ", ".join(name for name in defaults if name != "annotator_source") or "none"
        raise ConfigError(f"the {kind} condition has no option {', '.join(unknown)}; its options are: {accepted}")
    if "annotator_source" in defaults:
        options["annotator_source"] = annotator_source
    elif annotator_source is not None:
        log.info("the %s condition needs no annotator weights; ignoring %s", kind, annotator_source)
    frames = check_frames(frames)
    return extractor(frames, **options)


# ---------------------------------------------------------------- canny


def canny(frames: np.ndarray, low_threshold: float = 100, high_threshold: float = 200) -> np.ndarray:
    """White Canny edges on black, as 3 equal channels."""
    if not (0 <= low_threshold <= high_threshold):
        raise ConfigError(f"canny thresholds must satisfy 0 <= low <= high, got low={low_threshold}, high={high_threshold}")
    edges = [cv2.Canny(frame, float(low_threshold), float(high_threshold)) for frame in frames]
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)


# ---------------------------------------------------------------- pose


@dataclass(frozen=True)
class Point:
    """A keypoint in normalised image coordinates (0..1 from the left and from the top)."""

    x: float
    y: float


def blazepose_to_openpose(landmarks: np.ndarray, min_visibility: float = 0.3) -> list[Point | None]:
    """The 18 OpenPose keypoints from 33 BlazePose (x, y, visibility) rows; hidden or off-frame ones are None."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (NUM_BLAZEPOSE_LANDMARKS, 3):
        raise ValueError(f"expected ({NUM_BLAZEPOSE_LANDMARKS}, 3) landmarks (x, y, visibility), got {landmarks.shape}")

    def point(index: int) -> Point | None:
        x, y, visibility = landmarks[index]
        seen = visibility >= min_visibility and 0 <= x <= 1 and 0 <= y <= 1
        return Point(float(x), float(y)) if seen else None

    keypoints: list[Point | None] = []
    for source in BLAZEPOSE_TO_OPENPOSE:
        if source == NECK:
            left, right = (point(i) for i in BLAZEPOSE_SHOULDERS)
            keypoints.append(Point((left.x + right.x) / 2, (left.y + right.y) / 2) if left and right else None)
        else:
            keypoints.append(point(source))
    return keypoints


def draw_openpose(keypoints: Sequence[Point | None], height: int, width: int) -> np.ndarray:
    """An OpenPose-18 skeleton in ControlNet's colours on a black (height, width, 3) RGB canvas."""
    # here, not at the top: controlnet_aux is heavy and only pose drawing needs it
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if not any(keypoints):
        return canvas
    return draw_bodypose(canvas, [Keypoint(p.x, p.y) if p else None for p in keypoints])


def _landmark_array(result: Any) -> np.ndarray | None:
    """mediapipe's pose landmarks as a (33, 3) array of x, y, visibility; None when no person was found."""
    if result.pose_landmarks is None:
        return None
    return np.array([(m.x, m.y, m.visibility) for m in result.pose_landmarks.landmark], dtype=np.float64)


def detect_pose(frames: np.ndarray, min_visibility: float = 0.3) -> list[list[Point | None]]:
    """OpenPose-18 keypoints per frame from mediapipe BlazePose, tracking one person through the frames."""
    # here, not at the top: mediapipe is heavy and only pose detection needs it
    import mediapipe as mp

    detected = []
    with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1) as pose:
        for frame in frames:
            landmarks = _landmark_array(pose.process(np.ascontiguousarray(frame)))
            if landmarks is None:
                detected.append([None] * len(BLAZEPOSE_TO_OPENPOSE))
            else:
                detected.append(blazepose_to_openpose(landmarks, min_visibility))
    return detected


def pose(frames: np.ndarray, min_visibility: float = 0.3) -> np.ndarray:
    """OpenPose skeletons drawn from BlazePose landmarks; a frame without a person is black."""
    if not 0 <= min_visibility <= 1:
        raise ConfigError(f"pose min_visibility must be between 0 and 1, got {min_visibility}")
    height, width = frames.shape[1:3]
    people = detect_pose(frames, min_visibility)
    missing = sum(not any(keypoints) for keypoints in people)
    if missing:
        log.info("pose: no person found in %d of %d frames; their condition images are black", missing, len(frames))
    return np.stack([draw_openpose(keypoints, height, width) for keypoints in people])


# ---------------------------------------------------------------- annotators with weights (depth, softedge)


@dataclass(frozen=True)
class Annotator:
    """A controlnet-aux detector class and the checkpoint file it reads from a repo or folder."""

    what: str  # for messages
    class_name: str
    filename: str


ANNOTATORS = {
    "midas": Annotator("depth (MiDaS)", "MidasDetector", "dpt_hybrid-midas-501f0c75.pt"),
    "hed": Annotator("soft edge (HED)", "HEDdetector", "ControlNetHED.pth"),
    "pidinet": Annotator("soft edge (PiDiNet)", "PidiNetDetector", "table5_pidinet.pth"),
}
_annotators: dict[tuple[str, str, str], Any] = {}
_annotators_lock = threading.Lock()


def _resolve_source(source: str | os.PathLike | None) -> str:
    """A local folder as an absolute path, or a Hub repo id; None means the default annotator repo."""
    text = str(source or DEFAULT_ANNOTATORS).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or not all(text.split("/")):
        raise ModelLoadError(f"annotator source {text} is neither an existing folder nor a Hub repo id (owner/name)")
    return text


def _load_failure(annotator: Annotator, source: str, exc: Exception) -> ModelLoadError:
    """One sentence telling why an annotator could not be loaded and what to use instead."""
    if is_offline_error(exc):
        return ModelLoadError(
            f"the {annotator.what} annotator weights could not be downloaded from '{source}' (the Hugging Face Hub "
            f"is unreachable); use {OFFLINE_ALTERNATIVES.format(filename=annotator.filename)}"
        )
    if type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
        return ModelLoadError(f"'{source}' on the Hub has no {annotator.filename} for the {annotator.what} annotator")
    reason = " ".join(str(exc).split())[:200]
    return ModelLoadError(f"could not load the {annotator.what} annotator from {source}: {reason}")


def load_annotator(name: str, source: str | os.PathLike | None = None, device: str = "cpu") -> Any:
    """A controlnet-aux annotator (`midas`, `hed`, `pidinet`) from a Hub repo or folder, cached per process."""
    annotator = ANNOTATORS[name]
    resolved = _resolve_source(source)
    key = (annotator.class_name, resolved, str(device))
    with _annotators_lock:
        if key in _annotators:
            return _annotators[key]
        if Path(resolved).is_dir() and not (Path(resolved) / annotator.filename).is_file():
            raise ModelLoadError(f"annotator folder {resolved} has no {annotator.filename} (the {annotator.what} checkpoint)")
        try:
            # here, not at the top: controlnet_aux is heavy and loads only when an annotator is built
            import controlnet_aux

            detector_class = getattr(controlnet_aux, annotator.class_name)
            detector = detector_class.from_pretrained(resolved, filename=annotator.filename).to(device)
        except Exception as exc:  # loaders raise many types; the user needs one sentence
            raise _load_failure(annotator, resolved, exc) from exc
        log.info("loaded the %s annotator from %s on %s", annotator.what, resolved, device)
        _annotators[key] = detector
        return detector


def clear_annotators() -> None:
    """Forget every loaded annotator."""
    with _annotators_lock:
        _annotators.clear()


def _check_resolution(detect_resolution: int) -> int:
    if detect_resolution < 64:
        raise ConfigError(f"detect_resolution must be at least 64 pixels, got {detect_resolution}")
    return int(detect_resolution)


def _run_annotator(detector: Any, frames: np.ndarray, detect_resolution: int) -> np.ndarray:
    """Apply a controlnet-aux detector frame by frame and resize its maps back to the frame size."""
    height, width = frames.shape[1:3]
    maps = []
    for frame in frames:
        out = detector(frame, detect_resolution=detect_resolution, image_resolution=detect_resolution, output_type="np")
        out = np.asarray(out)
        out = np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out[..., :3]
        maps.append(cv2.resize(out, (width, height), interpolation=cv2.INTER_LINEAR) if out.shape[:2] != (height, width) else out)
    return np.stack(maps).astype(np.uint8)


def depth(
    frames: np.ndarray, annotator_source: str | None = None, detect_resolution: int = 512, device: str = "cpu"
) -> np.ndarray:
    """Grey MiDaS inverse depth (near = bright)."""
    _check_resolution(detect_resolution)
    return _run_annotator(load_annotator("midas", annotator_source, device), frames, detect_resolution)


def softedge(
    frames: np.ndarray,
    annotator_source: str | None = None,
    detector: str = "hed",
    detect_resolution: int = 512,
    device: str = "cpu",
) -> np.ndarray:
    """HED (or PiDiNet) soft edges, white on black."""
    if detector not in ("hed", "pidinet"):
        raise ConfigError(f"softedge detector must be 'hed' or 'pidinet', got '{detector}'")
    _check_resolution(detect_resolution)
    return _run_annotator(load_annotator(detector, annotator_source, device), frames, detect_resolution)


# ---------------------------------------------------------------- user-supplied conditions and caching


def conditions_from_video(
    path: str | os.PathLike,
    num_frames: int,
    width: int,
    height: int,
    selection: FrameSelection = FrameSelection(),
    limits: VideoLimits = VideoLimits(),
) -> np.ndarray:
    """Condition images from a user's video: the source's frame selection, resized to the edited size."""
    clip = read_clip(path, selection, limits)
    if clip.num_frames < num_frames:
        raise VideoError(
            f"condition video {Path(path).name} gives {clip.num_frames} frames for this selection but the edit needs {num_frames}"
        )
    if not math.isclose(clip.width / clip.height, width / height, rel_tol=0.02):
        name = Path(path).name
        log.warning("condition video %s is %dx%d; stretching it to %dx%d", name, clip.width, clip.height, width, height)
    return resize_frames(clip.frames[:num_frames], width, height)


def _canonical(value: Any) -> Any:
    """A JSON-ready value that does not depend on spelling: 100 == 100.0, tuples == lists, paths as text."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    raise TypeError(f"cannot use a {type(value).__name__} in a condition cache key")


def condition_cache_key(
    kind: str, clip_content_hash: str, selection: FrameSelection, size: tuple[int, int], options: dict
) -> str:
    """sha256 naming a condition map: same clip, selection, (width, height) and effective options, same key.

    `options` are the keywords given to `extract_conditions`, `annotator_source` included; defaults are
    filled in, so leaving an option out and passing its default give the same key. The device is left
    out: it changes where the map is computed, not what it shows.
    """
    defaults = _option_defaults(kind)
    effective = {**defaults, **options}
    effective.pop("device", None)
    if "annotator_source" in defaults:
        effective["annotator_source"] = _resolve_source(effective["annotator_source"])
    else:
        effective.pop("annotator_source", None)  # extractors without weights ignore it
    document = {
        "version": CACHE_KEY_VERSION,
        "kind": kind,
        "clip": clip_content_hash,
        "selection": {
            "start": selection.start,
            "end": selection.end,
            "stride": selection.stride,
            "max_frames": selection.max_frames,
            "size": selection.size,
        },
        "size": list(size),
        "options": effective,
    }
    text = json.dumps(_canonical(document), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
