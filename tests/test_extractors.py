"""Condition extractors: canny, pose on a real skier, annotators offline and from a local folder, user videos, cache keys."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from editing.config import FrameSelection
from editing.control import (
    CONDITION_KINDS,
    condition_cache_key,
    conditions_from_video,
    extract_conditions,
    extractors,
    register_extractor,
)
from editing.control.extractors import BLAZEPOSE_TO_OPENPOSE, Point, blazepose_to_openpose, draw_openpose
from editing.errors import ConfigError, ModelLoadError, VideoError
from editing.video_io import read_clip, write_mp4

# ControlNet's OpenPose scheme (lllyasviel/ControlNet annotator/openpose/util.py): limb i joins LIMBS[i]
# (OpenPose-18 indices) in COLORS[i] * 0.6; keypoint i is a dot in COLORS[i].
COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0), (0, 255, 85),
          (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255),
          (255, 0, 170), (255, 0, 85)]  # fmt: skip
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0), (0, 14),
         (14, 16), (0, 15), (15, 17)]  # fmt: skip
NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST, R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE = range(13)
R_EYE, L_EYE, R_EAR, L_EAR = range(14, 18)


def limb_color(a: int, b: int) -> tuple[int, ...]:
    """The RGB colour the limb from keypoint a to keypoint b is drawn in."""
    return tuple(int(c * 0.6) for c in COLORS[LIMBS.index((a, b))])


def colors_in(image: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


@pytest.fixture(autouse=True)
def fresh_annotators():
    extractors.clear_annotators()
    yield
    extractors.clear_annotators()


@pytest.fixture(scope="module")
def skier_frames(skiing) -> np.ndarray:
    return read_clip(skiing, FrameSelection(max_frames=4, size=256)).frames


# ---------------------------------------------------------------- registry and dispatch


def test_registry_holds_the_four_kinds_and_refuses_duplicates():
    assert {"canny", "pose", "depth", "softedge"} <= set(CONDITION_KINDS)
    with pytest.raises(ValueError, match="already registered"):
        register_extractor("canny")(lambda frames: frames)
    assert CONDITION_KINDS["canny"].load_extractor() is extractors.canny


def test_unknown_kind_and_option_are_refused():
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="control must be one of canny, pose, depth, softedge.*got 'segmentation'"):
        extract_conditions("segmentation", frames)
    with pytest.raises(ConfigError, match="no option low; its options are: low_threshold, high_threshold"):
        extract_conditions("canny", frames, low=10)
    with pytest.raises(ConfigError, match="low <= high"):
        extract_conditions("canny", frames, low_threshold=200, high_threshold=100)
    with pytest.raises(ConfigError, match="'hed' or 'pidinet'"):
        extract_conditions("softedge", frames, detector="sobel")
    with pytest.raises(ConfigError, match="at least 64 pixels"):
        extract_conditions("depth", frames, detect_resolution=32)  # refused before any weights are fetched
    with pytest.raises(ConfigError, match="min_visibility"):
        extract_conditions("pose", frames, min_visibility=1.5)
    with pytest.raises(ValueError, match="uint8"):
        extract_conditions("canny", frames.astype(np.float32))


# ---------------------------------------------------------------- canny


def test_canny_is_white_edges_on_black_and_follows_thresholds(skier_frames):
    edges = extract_conditions("canny", skier_frames)
    assert edges.shape == skier_frames.shape and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 0] == edges[..., 2]).all()
    assert np.array_equal(edges[0, ..., 0], cv2.Canny(skier_frames[0], 100, 200))  # the documented defaults
    loose = extract_conditions("canny", skier_frames, low_threshold=30, high_threshold=60)
    assert (loose > 0).sum() > (edges > 0).sum()
    assert ((edges > 0) & (loose == 0)).sum() == 0  # lower thresholds only add edges


# ---------------------------------------------------------------- pose


def blazepose(**points: tuple[float, float, float]) -> np.ndarray:
    """33 hidden BlazePose landmarks, with the named ones set to (x, y, visibility)."""
    names = {"nose": 0, "left_eye": 2, "right_eye": 5, "left_ear": 7, "right_ear": 8, "left_shoulder": 11, "right_shoulder": 12,
             "left_elbow": 13, "right_elbow": 14, "left_wrist": 15, "right_wrist": 16, "left_hip": 23, "right_hip": 24,
             "left_knee": 25, "right_knee": 26, "left_ankle": 27, "right_ankle": 28}  # fmt: skip
    landmarks = np.zeros((33, 3))
    landmarks[:, :2] = 0.5
    for name, value in points.items():
        landmarks[names[name]] = value
    return landmarks


def test_blazepose_to_openpose_maps_names_neck_and_visibility():
    landmarks = blazepose(
        nose=(0.5, 0.1, 0.9), right_shoulder=(0.4, 0.3, 0.9), left_shoulder=(0.6, 0.32, 0.9), right_elbow=(0.35, 0.45, 0.8),
        left_elbow=(0.65, 0.45, 0.1), right_hip=(0.45, 0.6, 0.9), left_knee=(0.55, 0.8, 0.5), right_eye=(0.48, 0.08, 0.9),
        left_ear=(0.56, 0.1, 0.9), left_wrist=(1.2, 0.5, 0.99),
    )  # fmt: skip
    points = blazepose_to_openpose(landmarks, min_visibility=0.3)
    assert len(points) == 18
    assert points[NOSE] == Point(0.5, 0.1)
    assert points[NECK].x == pytest.approx(0.5) and points[NECK].y == pytest.approx(0.31)  # midpoint of the shoulders
    assert points[R_SHOULDER] == Point(0.4, 0.3) and points[L_SHOULDER] == Point(0.6, 0.32)  # the person's sides, kept
    assert points[R_ELBOW] == Point(0.35, 0.45) and points[R_HIP] == Point(0.45, 0.6) and points[L_KNEE] == Point(0.55, 0.8)
    assert points[R_EYE] == Point(0.48, 0.08) and points[L_EAR] == Point(0.56, 0.1)
    assert points[L_ELBOW] is None  # visibility 0.1 < 0.3
    assert points[L_WRIST] is None  # visible but outside the frame
    assert all(points[i] is None for i in (R_WRIST, L_HIP, R_KNEE, R_ANKLE, 13, L_EYE, R_EAR))  # hidden landmarks
    assert blazepose_to_openpose(landmarks, min_visibility=0.6)[L_KNEE] is None
    hidden_shoulder = landmarks.copy()
    hidden_shoulder[11, 2] = 0.0
    assert blazepose_to_openpose(hidden_shoulder)[NECK] is None  # the neck needs both shoulders


def test_mapping_covers_every_openpose_keypoint_once():
    indices = [i for i in BLAZEPOSE_TO_OPENPOSE if i != "neck"]
    assert len(BLAZEPOSE_TO_OPENPOSE) == 18 and len(set(indices)) == 17


def test_drawing_uses_the_controlnet_openpose_colours():
    points = blazepose_to_openpose(
        blazepose(nose=(0.5, 0.15, 1), right_shoulder=(0.35, 0.3, 1), left_shoulder=(0.65, 0.3, 1), right_elbow=(0.3, 0.5, 1))
    )
    image = draw_openpose(points, 128, 160)
    assert image.shape == (128, 160, 3) and image.dtype == np.uint8
    drawn = colors_in(image) - {(0, 0, 0)}
    limbs = {limb_color(NECK, R_SHOULDER), limb_color(NECK, L_SHOULDER), limb_color(R_SHOULDER, R_ELBOW), limb_color(NECK, NOSE)}
    dots = {COLORS[i] for i in (NOSE, NECK, R_SHOULDER, L_SHOULDER, R_ELBOW)}
    assert drawn == limbs | dots
    assert tuple(image[round(0.15 * 128), round(0.5 * 160)]) == COLORS[NOSE]  # a dot where the nose is
    assert not draw_openpose([None] * 18, 32, 32).any()


def test_pose_on_a_real_skier(skier_frames):
    poses = extract_conditions("pose", skier_frames)
    assert poses.shape == skier_frames.shape and poses.dtype == np.uint8
    palette = {(0, 0, 0)} | set(COLORS) | {limb_color(*limb) for limb in LIMBS}
    # The skier faces the camera in a yellow jacket and black trousers on white snow under a blue sky.
    hsv = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2HSV) for frame in skier_frames])
    clothes = ((hsv[..., 0] >= 15) & (hsv[..., 0] <= 40) & (hsv[..., 1] > 100)) | (hsv[..., 2] < 80)
    for image, person in zip(poses, clothes):
        drawn = image.any(-1)
        assert drawn.any()
        assert colors_in(image) <= palette  # nothing but ControlNet's colours on black
        torso_and_limbs = [(NECK, R_SHOULDER), (NECK, L_SHOULDER), (R_SHOULDER, R_ELBOW), (L_SHOULDER, L_ELBOW), (NECK, R_HIP),
                           (NECK, L_HIP), (R_HIP, R_KNEE), (L_HIP, L_KNEE)]  # fmt: skip
        assert {limb_color(*limb) for limb in torso_and_limbs} <= colors_in(image)
        ys, xs = np.nonzero(drawn)
        box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        assert box_area < drawn.size / 2  # one person, not the whole frame
        assert person[drawn].mean() > 0.75 > 2 * person.mean()  # the skeleton lies on the skier, not on snow or sky

        def mean_x(color):
            return np.nonzero((image == color).all(-1))[1].mean()

        # Facing the camera, the person's right arm is on the image's left.
        assert mean_x(limb_color(R_SHOULDER, R_ELBOW)) < mean_x(limb_color(L_SHOULDER, L_ELBOW))


def test_pose_without_a_person_is_black(tree):
    frames = read_clip(tree, FrameSelection(max_frames=2, size=128)).frames
    grey = np.full((2, 96, 128, 3), 128, np.uint8)
    for empty in (frames, grey):
        poses = extract_conditions("pose", empty)
        assert poses.shape == empty.shape and not poses.any()


# ---------------------------------------------------------------- annotators with weights


def offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


@pytest.mark.parametrize("kind, options", [("softedge", {}), ("softedge", {"detector": "pidinet"}), ("depth", {})])
def test_annotator_offline_gives_one_line_with_alternatives(monkeypatch, tmp_path, kind, options):
    offline_hub(monkeypatch, tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        extract_conditions(kind, np.zeros((1, 64, 64, 3), np.uint8), **options)
    message = str(caught.value)
    assert "\n" not in message and message.count(". ") == 0
    assert "could not be downloaded" in message and "lllyasviel/Annotators" in message
    for alternative in ("local folder", "--annotators", "condition video", "canny", "pose"):
        assert alternative in message


def test_annotator_source_is_checked(tmp_path):
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hub repo id"):
        extract_conditions("softedge", frames, annotator_source=str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="has no ControlNetHED.pth"):
        extract_conditions("softedge", frames, annotator_source=str(tmp_path))


@pytest.fixture
def hed_folder(tmp_path):
    """A local annotator folder holding a HED checkpoint with random weights."""
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), tmp_path / "ControlNetHED.pth")
    return tmp_path


def test_hed_from_a_local_folder_runs_offline(monkeypatch, tmp_path, hed_folder):
    import controlnet_aux

    offline_hub(monkeypatch, tmp_path)
    calls = []
    load = controlnet_aux.HEDdetector.from_pretrained.__func__

    def spy(cls, source, **kwargs):
        calls.append((source, kwargs))
        return load(cls, source, **kwargs)

    monkeypatch.setattr(controlnet_aux.HEDdetector, "from_pretrained", classmethod(spy))
    frames = np.random.default_rng(0).integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    edges = extract_conditions("softedge", frames, annotator_source=str(hed_folder), detect_resolution=64)
    assert edges.shape == frames.shape and edges.dtype == np.uint8
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 0] == edges[..., 2]).all()
    assert calls == [(str(hed_folder.resolve()), {"filename": "ControlNetHED.pth"})]
    extract_conditions("softedge", frames[:1], annotator_source=str(hed_folder), detect_resolution=64)
    assert len(calls) == 1  # the loaded annotator is reused


def test_pidinet_from_a_local_folder_runs_offline(monkeypatch, tmp_path):
    from controlnet_aux.pidi.model import pidinet

    offline_hub(monkeypatch, tmp_path)
    torch.manual_seed(0)
    weights = {f"module.{name}": value for name, value in pidinet().state_dict().items()}  # saved as trained with DataParallel
    torch.save({"state_dict": weights}, tmp_path / "table5_pidinet.pth")
    frames = np.random.default_rng(0).integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    edges = extract_conditions("softedge", frames, annotator_source=str(tmp_path), detector="pidinet", detect_resolution=64)
    assert edges.shape == frames.shape and edges.dtype == np.uint8


class FakeMidas:
    """Stands in for MidasDetector: a left-to-right ramp at the detection resolution."""

    def __init__(self, source: str, filename: str):
        self.source, self.filename, self.device = source, filename, None

    def to(self, device):
        self.device = device
        return self

    def __call__(self, image, detect_resolution, image_resolution, output_type):
        ramp = np.linspace(0, 255, detect_resolution).astype(np.uint8)
        return np.repeat(np.tile(ramp, (detect_resolution, 1))[..., None], 3, axis=-1)


def test_depth_passes_the_folder_through_and_resizes_back(monkeypatch, tmp_path):
    import controlnet_aux

    (tmp_path / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"")
    fake = classmethod(lambda cls, source, filename: FakeMidas(source, filename))
    monkeypatch.setattr(controlnet_aux.MidasDetector, "from_pretrained", fake)
    frames = np.zeros((3, 48, 80, 3), np.uint8)
    depth = extract_conditions("depth", frames, annotator_source=str(tmp_path), detect_resolution=64)
    assert depth.shape == frames.shape and depth.dtype == np.uint8
    assert (np.diff(depth[0, 0, :, 0].astype(int)) >= 0).all()  # the ramp survives the resize, unmirrored
    detector = extractors.load_annotator("midas", str(tmp_path))
    assert detector.source == str(tmp_path.resolve()) and detector.filename == "dpt_hybrid-midas-501f0c75.pt"
    assert detector.device == "cpu"


# ---------------------------------------------------------------- user condition videos


@pytest.fixture(scope="module")
def car_as_condition_video(car, tmp_path_factory):
    """The whole car clip re-encoded at 128 px: a condition video aligned frame for frame with its source."""
    full = read_clip(car, FrameSelection(max_frames=None, size=128))
    return write_mp4(tmp_path_factory.mktemp("conditions") / "car.mp4", full.frames, full.fps)


def test_condition_video_follows_the_source_selection(car, car_as_condition_video):
    selection = FrameSelection(start=1.0, stride=3, max_frames=4, size=128)
    source = read_clip(car, selection)
    conditions = conditions_from_video(car_as_condition_video, source.num_frames, source.width, source.height, selection)
    assert conditions.shape == source.frames.shape and conditions.dtype == np.uint8
    aligned = np.abs(conditions.astype(int) - source.frames.astype(int)).mean()
    shifted = read_clip(car, FrameSelection(start=1.3, stride=3, max_frames=4, size=128)).frames
    assert aligned < np.abs(conditions.astype(int) - shifted.astype(int)).mean() / 2  # the same frames, not neighbours
    smaller = conditions_from_video(car_as_condition_video, 3, 96, 64, selection)
    assert smaller.shape == (3, 64, 96, 3)


def test_condition_video_with_too_few_frames_is_refused(tmp_path, car):
    short = read_clip(car, FrameSelection(max_frames=3, size=64))
    path = write_mp4(tmp_path / "short.mp4", short.frames, short.fps)
    with pytest.raises(VideoError, match="gives 3 frames for this selection but the edit needs 8") as caught:
        conditions_from_video(path, 8, 64, 64, FrameSelection(max_frames=8, size=64))
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- cache keys


def test_cache_key_is_deterministic_and_sensitive(tmp_path):
    selection = FrameSelection(start=1.0, stride=2, max_frames=8, size=256)
    key = condition_cache_key("canny", "abc123", selection, (256, 192), {"low_threshold": 50, "high_threshold": 150})
    assert len(key) == 64 and int(key, 16) >= 0
    same = [
        condition_cache_key("canny", "abc123", FrameSelection(start=1, stride=2, max_frames=8, size=256), (256, 192),
                            {"high_threshold": 150.0, "low_threshold": 50}),
        condition_cache_key("canny", "abc123", selection, [256, 192], {"low_threshold": np.int64(50), "high_threshold": 150}),
    ]  # fmt: skip
    assert all(k == key for k in same)
    different = [
        condition_cache_key("canny", "abc124", selection, (256, 192), {"low_threshold": 50, "high_threshold": 150}),
        condition_cache_key("canny", "abc123", FrameSelection(start=1.0, stride=3, max_frames=8, size=256), (256, 192),
                            {"low_threshold": 50, "high_threshold": 150}),
        condition_cache_key("canny", "abc123", selection, (192, 256), {"low_threshold": 50, "high_threshold": 150}),
        condition_cache_key("canny", "abc123", selection, (256, 192), {"low_threshold": 51, "high_threshold": 150}),
        condition_cache_key("pose", "abc123", selection, (256, 192), {}),
    ]  # fmt: skip
    assert len({key, *different}) == 1 + len(different)
    # Defaults are filled in, the device does not matter, and the annotator source matters only where weights are used.
    assert condition_cache_key("pose", "h", selection, (8, 8), {"annotator_source": "a/b"}) == condition_cache_key(
        "pose", "h", selection, (8, 8), {"min_visibility": 0.3}
    )
    assert condition_cache_key("canny", "h", selection, (8, 8), {}) == condition_cache_key(
        "canny", "h", selection, (8, 8), {"low_threshold": 100, "high_threshold": 200}
    )
    hub = condition_cache_key("softedge", "h", selection, (8, 8), {"device": "cuda"})
    explicit = {"annotator_source": "lllyasviel/Annotators", "detector": "hed"}
    assert hub == condition_cache_key("softedge", "h", selection, (8, 8), explicit)
    assert hub != condition_cache_key("softedge", "h", selection, (8, 8), {"annotator_source": str(tmp_path)})
    assert hub != condition_cache_key("softedge", "h", selection, (8, 8), {"detector": "pidinet"})
