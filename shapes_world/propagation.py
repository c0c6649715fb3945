"""Benchmark clips where propagation along the source's flow fails in flat regions, and their measures.

Two clip kinds, drawn only when asked for (`--clip-kinds wake,recolour`; clip indices from
PROPAGATION_BASE on, so the fixed 16-clip set is unchanged):
  wake      one large plain object crossing a plain background diagonally; its edit adds stripes to the
            background (the add-a-word edit): texture the edit puts on a flat region a moving object borders;
  recolour  one object moving and turning on a plain background; its edit recolours the object.
Where the source is flat its optical flow is unknown; propagation that carries the object's motion into
the background bends the added stripes in a wake around the object, and swells a recoloured object and
leaves a ghost of it over the background it uncovers. The measures (pure functions):
  scene warp error  like the benchmark's warp error (8-bit levels along the true motion) but over every
                    pixel whose true destination shows the same layer, the background included; and
                    the share of it on the background within 3 px of an object (where the rim lies);
  area drift        the largest change over frames of the edited object's area (pixels of its asked
                    colour), relative to frame 0 and to the true mask's own change (0.05 = 5%);
  trail             pixels of the object's asked colour in the background it uncovered (outside its true
                    mask grown by one pixel), summed over the frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from .world import PALETTE, SHAPES, SIZES, Background, Clip, Scene, ShapeObject, make_clip, random_motion, render_background

PROPAGATION_KINDS = ("wake", "recolour")
PROPAGATION_BASE = 100  # clip indices from here on are the propagation kinds, in turn
KIND_EDITS = {"wake": ("add",), "recolour": ("colour",)}  # the one edit each kind is about
MIN_SPEED = 2.0  # pixels per frame an object crosses at least


def _moving(rng: np.random.Generator, obj: ShapeObject, frames: int, size: int, kinds: tuple[str, ...]):
    """A random motion of `obj` of at least MIN_SPEED pixels a frame (drawn again until it is)."""
    while True:
        motion, start = random_motion(rng, obj, frames, size, kinds)
        if np.hypot(motion.dx, motion.dy) >= MIN_SPEED:
            return motion, start


def _plain_scene(rng: np.random.Generator, size: int, object_size: str) -> tuple[Background, ShapeObject]:
    colour = str(rng.choice(list(PALETTE)))
    background = Background("plain", colour, int(rng.integers(2)))
    shape = str(rng.choice(SHAPES))
    obj_colour = str(rng.choice([c for c in PALETTE if c != colour]))
    radius = SIZES[object_size] * size
    angle = 0.0 if shape == "circle" else float(rng.uniform(-0.3, 0.3))
    return background, ShapeObject(shape, obj_colour, object_size, size / 2, size / 2, radius, angle)


def wake_clip(seed: int, frames: int = 8, size: int = 64) -> Clip:
    """One large plain object crossing a plain background at MIN_SPEED px a frame or more (no turn)."""
    rng = np.random.default_rng(seed)
    background, obj = _plain_scene(rng, size, "large")
    motion, obj = _moving(rng, obj, frames, size, ("move",))
    return make_clip(Scene((obj,), background, size), (motion,), frames)


def recolour_clip(seed: int, frames: int = 8, size: int = 64) -> Clip:
    """One plain object moving (MIN_SPEED px a frame or more) and turning on a plain background."""
    rng = np.random.default_rng(seed)
    background, obj = _plain_scene(rng, size, str(rng.choice(list(SIZES))))
    motion, obj = _moving(rng, obj, frames, size, ("move", "turn"))
    return make_clip(Scene((obj,), background, size), (motion,), frames)


def propagation_clip(kind: str, seed: int, frames: int = 8, size: int = 64) -> Clip:
    """A clip of a propagation kind: wake or recolour."""
    makers = {"wake": wake_clip, "recolour": recolour_clip}
    if kind not in makers:
        raise ValueError(f"propagation clip kind must be one of {', '.join(makers)}; got {kind}")
    return makers[kind](seed, frames, size)


# ---------------------------------------------------------------- measures (pure functions)


def _labels(masks: np.ndarray) -> np.ndarray:
    return np.where(masks.any(axis=0), np.argmax(masks, axis=0), -1)


NEAR_OBJECT = 3  # pixels from an object within which the background counts as beside it (`near_object_share`)


def _scene_pair_errors(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray):
    """Per pair t -> t+1: the (H, W) error |frame_{t+1}(x + flow_t(x)) - frame_t(x)| (8-bit, bilinear) and
    where it counts: pixels of frame t whose true destination lies inside the image on the same layer."""
    height, width = frames.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    for t in range(len(frames) - 1):
        map_x, map_y = grid_x + flow[t, ..., 0].astype(np.float32), grid_y + flow[t, ..., 1].astype(np.float32)
        moved = cv2.remap(frames[t + 1].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        rows, cols = np.clip(np.round(map_y), 0, height - 1).astype(int), np.clip(np.round(map_x), 0, width - 1).astype(int)
        labels = _labels(masks[t])
        valid = inside & (_labels(masks[t + 1])[rows, cols] == labels)
        yield np.abs(moved - frames[t].astype(np.float32)).mean(axis=-1), valid


def scene_warp_errors(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per pair t -> t+1: mean |frame_{t+1}(x + flow_t(x)) - frame_t(x)| (8-bit, bilinear) over every pixel
    of frame t whose true destination lies inside the image on the same layer (object or background)."""
    return np.array(
        [float(error[valid].mean()) if valid.any() else float("nan") for error, valid in _scene_pair_errors(frames, flow, masks)]
    )


def near_object_share(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray) -> float:
    """The share of the scene warp error (summed over pixels and pairs) on background pixels within
    NEAR_OBJECT pixels of an object in either frame of the pair: where propagation's rim lies (nan when
    there is no error at all)."""
    near_sum = total = 0.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * NEAR_OBJECT + 1, 2 * NEAR_OBJECT + 1))
    for t, (error, valid) in enumerate(_scene_pair_errors(frames, flow, masks)):
        objects = masks[t].any(0) | masks[t + 1].any(0)
        near = (cv2.dilate(objects.astype(np.uint8), kernel) > 0) & ~masks[t].any(0)
        near_sum += float(error[valid & near].sum())
        total += float(error[valid].sum())
    return near_sum / total if total > 0 else float("nan")


def object_coloured(frames: np.ndarray, colour: tuple[int, int, int], background: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: pixels nearer (mean absolute RGB) to the object's `colour` than to every colour of
    the `background` render (H, W, 3; both tones of a striped one)."""
    frames = frames.astype(np.float32)
    to_object = np.abs(frames - np.asarray(colour, np.float32)).mean(-1)
    tones = np.unique(background.reshape(-1, 3), axis=0).astype(np.float32)
    to_background = np.min([np.abs(frames - tone).mean(-1) for tone in tones], axis=0)
    return to_object < to_background


def area_drift(coloured: np.ndarray, masks: np.ndarray) -> float:
    """The largest |A_t / A_0 * M_0 / M_t - 1| over frames: A the object-coloured area, M the true mask's."""
    found = coloured.reshape(len(coloured), -1).sum(1).astype(np.float64)
    true = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    if found[0] == 0:
        return float("inf")
    return float(np.max(np.abs(found / found[0] * true[0] / np.maximum(true, 1) - 1)))


def trail_pixels(coloured: np.ndarray, masks: np.ndarray, grow: int = 1) -> int:
    """Object-coloured pixels, summed over frames, in what the object uncovered (inside an earlier frame's
    true mask) outside its true mask grown by `grow` pixels."""
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    covered = np.zeros(masks.shape[1:], bool)
    total = 0
    for found, mask in zip(coloured, masks):
        near = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        total += int((found & covered & ~near).sum())
        covered |= mask
    return total


def propagation_measures(clip: Clip, output: np.ndarray, target: Scene, subject: int = 0) -> dict:
    """The scene warp error, area drift and trail of one edited clip (the edit's `target` scene gives the
    object's asked colour and the background it should stand on)."""
    obj = target.objects[subject]
    background = render_background(target.background, target.size)
    coloured = object_coloured(output, PALETTE[obj.colour], background)
    masks = clip.masks[:, subject]
    return {
        "scene_warp_error": float(np.nanmean(scene_warp_errors(output, clip.flow, clip.masks))),
        "scene_warp_near_object": near_object_share(output, clip.flow, clip.masks),
        "area_drift": area_drift(coloured, masks),
        "trail": trail_pixels(coloured, masks),
    }
