"""The shapes world: captioned images and clips of coloured shapes with exact masks and true motion.

Pure numpy. Every object is a shape (circle, square, triangle, star, hexagon) of a named colour, size
and position, filled plain (the training world) or with a texture (stripes or a gradient toward a darker
shade, fixed to the object so it moves, turns and scales with it); backgrounds are plain, striped or
gradient in a pale or full named colour. Clips may pan the camera (the whole scene moves) and objects may
pass behind others; each clip carries its true flow and which pixels are hidden in the next frame. Masks are
exact (a pixel belongs to an object when its centre lies inside the shape; no anti-aliasing), so the
generator's own renders are the ground truth for judging a model's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 180),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
BACKGROUNDS = ("plain", "striped", "gradient")
SIZES = {"small": 0.14, "large": 0.22}  # circumradius as a share of the image side
# Colour+shape pairs never shown in training: the held-out captions test composition.
HELD_OUT_PAIRS = frozenset(
    {("red", "star"), ("blue", "triangle"), ("green", "hexagon"), ("yellow", "square"), ("purple", "circle")}
)
PALE = 0.55  # share of white mixed into a background colour's pale tone
STRIPE_PERIOD = 12  # pixels per stripe pair at 64 px (scaled with the image)
TEXTURES = ("plain", "striped", "gradient")  # object fills; only plain ones are in the training world
DARK = 0.3  # share of black in a textured object's dark shade (its gradient's far end, its narrow stripes)
OBJECT_STRIPE_PERIOD = 0.8  # object stripe pairs per circumradius; the dark stripe is a third of each pair


def article(word: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape, colour name, size name, centre (x, y) in pixels, circumradius, angle (radians)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    angle: float = 0.0
    texture: str = "plain"

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {self.shape}")
        if self.colour not in PALETTE:
            raise ValueError(f"colour must be one of {', '.join(PALETTE)}; got {self.colour}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}; got {self.size}")
        if self.radius <= 0:
            raise ValueError(f"radius must be positive; got {self.radius}")
        if self.texture not in TEXTURES:
            raise ValueError(f"texture must be one of {', '.join(TEXTURES)}; got {self.texture}")

    def phrase(self, with_size: bool = False) -> str:
        """'a red circle' (or 'a small red circle')."""
        words = [self.size] if with_size else []
        words = [*words, self.colour, self.shape]
        return f"{article(words[0])} {' '.join(words)}"


@dataclass(frozen=True)
class Background:
    """A background: kind (plain, striped, gradient), colour name, and the axis it varies along (0 = rows)."""

    kind: str
    colour: str
    axis: int = 0

    def __post_init__(self):
        if self.kind not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}; got {self.kind}")
        if self.colour not in PALETTE:
            raise ValueError(f"background colour must be one of {', '.join(PALETTE)}; got {self.colour}")
        if self.axis not in (0, 1):
            raise ValueError(f"background axis must be 0 (rows) or 1 (columns); got {self.axis}")


@dataclass(frozen=True)
class Scene:
    """Objects (drawn in order, later ones on top) on a background, in a square image of `size` pixels."""

    objects: tuple[ShapeObject, ...]
    background: Background
    size: int = 64

    def __post_init__(self):
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"a scene holds 1 to 3 objects; got {len(self.objects)}")
        if self.size < 16:
            raise ValueError(f"image size must be at least 16 pixels; got {self.size}")
        if any(o.colour == self.background.colour for o in self.objects):
            raise ValueError("an object cannot have the background's colour")

    def caption(self, with_size: bool = False) -> str:
        """'a red circle and a blue square on a striped green background'."""
        phrases = [o.phrase(with_size) for o in self.objects]
        things = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        words = ([] if self.background.kind == "plain" else [self.background.kind]) + [self.background.colour]
        return f"{things} on {article(words[0])} {' '.join(words)} background"


# ---------------------------------------------------------------- geometry


def polygon_vertices(shape: str) -> np.ndarray:
    """Unit-circumradius vertices (k, 2) of a polygonal shape, pointing up at angle 0."""
    if shape == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    corners = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
    start = -math.pi / 2 if shape == "triangle" else -math.pi / 4 if shape == "square" else 0.0
    angles = start + np.arange(corners) * 2 * math.pi / corners
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def inside_polygon(px: np.ndarray, py: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (px, py) lie inside the polygon."""
    inside = np.zeros(px.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        crosses = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < x_cross)
    return inside


def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of every pixel centre of a size x size image."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(coords, coords)


def inside_object(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Which points (x, y), in pixel coordinates, lie inside the object's shape."""
    dx, dy = x - obj.x, y - obj.y
    if obj.shape == "circle":
        return dx * dx + dy * dy <= obj.radius**2
    u, v = object_coordinates(obj, x, y)
    return inside_polygon(u, v, polygon_vertices(obj.shape))


def object_coordinates(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y) in the object's own frame: centred, rotation undone, in circumradii."""
    dx, dy = x - obj.x, y - obj.y
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    return (cos * dx + sin * dy) / obj.radius, (-sin * dx + cos * dy) / obj.radius


def object_colours(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(..., 3) float colours of the object's fill at points (x, y): its palette colour, or its texture,
    which lives in the object's frame (so the object's similarity motion carries it exactly)."""
    full = np.asarray(PALETTE[obj.colour], dtype=np.float64)
    if obj.texture == "plain":
        return np.broadcast_to(full, (*np.shape(x), 3))
    u, _ = object_coordinates(obj, x, y)
    if obj.texture == "striped":  # two thirds full colour, one third dark: the fill's median is the colour
        dark = (np.mod(u + 1.0, OBJECT_STRIPE_PERIOD) >= OBJECT_STRIPE_PERIOD * 2 / 3).astype(np.float64)
    else:
        dark = np.clip((u + 1.0) / 2.0, 0.0, 1.0)
    return full * (1 - DARK * dark[..., None])


def object_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Exact (size, size) bool mask of an unoccluded object: pixel centres inside the shape."""
    return inside_object(obj, *pixel_centres(size))


def pale(colour: str) -> np.ndarray:
    """The pale tone of a palette colour (mixed with white)."""
    return np.asarray(PALETTE[colour], dtype=np.float64) * (1 - PALE) + 255 * PALE


def render_background(background: Background, size: int, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(size, size, 3) uint8 background: varies along rows (axis 0) or columns (axis 1) only. With an
    `offset` (dx, dy) the camera has panned: pixel x shows the background's point x - offset (a gradient
    stays at its end colours beyond the first frame's view)."""
    full, light = np.asarray(PALETTE[background.colour], dtype=np.float64), pale(background.colour)
    position = np.arange(size) + 0.5
    shift = offset[1] if background.axis == 0 else offset[0]
    if shift:
        position = position - shift
    if background.kind == "plain":
        weight = np.ones(size)
    elif background.kind == "striped":
        period = max(4, round(STRIPE_PERIOD * size / 64))
        weight = ((position // (period / 2)) % 2 == 0).astype(np.float64)
    else:
        weight = 1 - position / size
        weight = np.clip(weight, 0.0, 1.0) if shift else weight
    profile = weight[:, None] * full + (1 - weight[:, None]) * light
    image = (
        np.broadcast_to(profile[:, None, :], (size, size, 3))
        if background.axis == 0
        else np.broadcast_to(profile[None], (size, size, 3))
    )
    return np.round(image).astype(np.uint8)


def visible_masks(scene: Scene) -> np.ndarray:
    """(objects, size, size) bool masks of what is visible of each object (later objects on top)."""
    masks = np.stack([object_mask(o, scene.size) for o in scene.objects])
    for i in range(len(masks) - 1):
        masks[i] &= ~masks[i + 1 :].any(axis=0)
    return masks


def render(scene: Scene, offset: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The scene's (size, size, 3) uint8 image and its (objects, size, size) visible masks; `offset` pans
    the background (objects carry their own positions)."""
    image = render_background(scene.background, scene.size, offset).copy()
    masks = visible_masks(scene)
    for obj, mask in zip(scene.objects, masks):
        if obj.texture == "plain":
            image[mask] = PALETTE[obj.colour]
        else:
            x, y = pixel_centres(scene.size)
            image[mask] = np.round(object_colours(obj, x[mask], y[mask])).astype(np.uint8)
    return image, masks


# ---------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Sample:
    """A rendered scene: image, visible masks, caption."""

    scene: Scene
    image: np.ndarray
    masks: np.ndarray
    caption: str


def is_held_out(scene: Scene) -> bool:
    """Whether any object is a held-out colour+shape pair."""
    return any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)


def held_out_captions(size: int = 64) -> list[str]:
    """The single-object captions of every held-out pair on each plain background colour (never trained on)."""
    captions = []
    for colour, shape in sorted(HELD_OUT_PAIRS):
        for background in PALETTE:
            if background != colour:
                captions.append(f"{article(colour)} {colour} {shape} on {article(background)} {background} background")
    return captions


@dataclass(frozen=True)
class SceneSampler:
    """Seeded random scenes; split 'train' never shows a held-out pair, 'held_out' always shows one."""

    size: int = 64
    split: str = "train"
    max_objects: int = 3
    backgrounds: tuple[str, ...] = BACKGROUNDS
    margin: float = 1.0  # extra gap between objects, as a share of their radii

    def __post_init__(self):
        if self.split not in ("train", "held_out", "all"):
            raise ValueError(f"split must be train, held_out or all; got {self.split}")
        if not 1 <= self.max_objects <= 3:
            raise ValueError(f"max_objects must be 1 to 3; got {self.max_objects}")
        if not self.backgrounds or set(self.backgrounds) - set(BACKGROUNDS):
            raise ValueError(f"backgrounds must be among {', '.join(BACKGROUNDS)}; got {self.backgrounds}")

    def scene(self, rng: np.random.Generator) -> Scene:
        """One scene drawn from `rng` (retries until the split's rule and the layout fit)."""
        while True:
            scene = self._draw(rng)
            if scene is not None and self._in_split(scene):
                return scene

    def sample(self, rng: np.random.Generator) -> Sample:
        """One rendered scene with its caption."""
        scene = self.scene(rng)
        image, masks = render(scene)
        return Sample(scene, image, masks, scene.caption())

    def batch(self, seed: int, count: int) -> list[Sample]:
        """`count` rendered samples from a seed."""
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(count)]

    def _in_split(self, scene: Scene) -> bool:
        return self.split == "all" or is_held_out(scene) == (self.split == "held_out")

    def _draw(self, rng: np.random.Generator) -> Scene | None:
        count = int(rng.integers(1, self.max_objects + 1))
        colours = list(PALETTE)
        background = Background(str(rng.choice(self.backgrounds)), str(rng.choice(colours)), int(rng.integers(2)))
        objects: list[ShapeObject] = []
        for _ in range(count):
            obj = self._place(rng, background.colour, objects)
            if obj is None:
                return None
            objects.append(obj)
        return Scene(tuple(objects), background, self.size)

    def _place(self, rng: np.random.Generator, background_colour: str, others: list[ShapeObject]) -> ShapeObject | None:
        colour = str(rng.choice([c for c in PALETTE if c != background_colour]))
        shape, size = str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))
        radius = SIZES[size] * self.size
        for _ in range(20):
            x, y = rng.uniform(radius + 1, self.size - radius - 1, size=2)
            if all(math.hypot(x - o.x, y - o.y) > (radius + o.radius) * (1 + self.margin * 0.1) for o in others):
                angle = 0.0 if shape == "circle" else float(rng.uniform(-0.3, 0.3))
                return ShapeObject(shape, colour, size, float(x), float(y), float(radius), angle)
        return None


# ---------------------------------------------------------------- clips


@dataclass(frozen=True)
class Motion:
    """An object's motion per frame: translation (dx, dy) pixels, rotation (radians), scale factor."""

    dx: float = 0.0
    dy: float = 0.0
    turn: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale per frame must be positive; got {self.scale}")

    def at(self, obj: ShapeObject, frame: int) -> ShapeObject:
        """The object after `frame` frames of this motion."""
        return replace(
            obj,
            x=obj.x + self.dx * frame,
            y=obj.y + self.dy * frame,
            radius=obj.radius * self.scale**frame,
            angle=obj.angle + self.turn * frame,
        )


@dataclass(frozen=True)
class Clip:
    """A moving scene: frames (T, H, W, 3), visible masks (T, objects, H, W), flow (T-1, H, W, 2) as (dx, dy);
    `pan` is the camera's per-frame content shift (dx, dy) and `occluded` (T-1, H, W) marks the pixels of
    frame t whose content is not visible in frame t+1 (hidden behind an object drawn above it, or out of view)."""

    scene: Scene
    motions: tuple[Motion, ...]
    frames: np.ndarray
    masks: np.ndarray
    flow: np.ndarray
    caption: str = field(default="")
    pan: tuple[float, float] = (0.0, 0.0)
    occluded: np.ndarray | None = None
    subject: int = 0  # the object an edit of the clip is about (the front one of an occlusion clip)


def scene_at(scene: Scene, motions: tuple[Motion, ...], frame: int) -> Scene:
    """The scene at a frame: every object moved by its motion."""
    return replace(scene, objects=tuple(m.at(o, frame) for o, m in zip(scene.objects, motions)))


def true_flow(
    scene: Scene, motions: tuple[Motion, ...], frame: int, masks: np.ndarray, pan: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """(H, W, 2) forward flow from `frame` to the next: each visible object pixel follows its object's
    similarity transform (about the object's centre); the background moves by the camera's `pan`."""
    x, y = pixel_centres(scene.size)
    flow = np.zeros((scene.size, scene.size, 2))
    if pan != (0.0, 0.0):
        flow[...] = pan
    for obj, motion, mask in zip(scene_at(scene, motions, frame).objects, motions, masks):
        cos, sin = math.cos(motion.turn), math.sin(motion.turn)
        dx, dy = x - obj.x, y - obj.y
        new_x = obj.x + motion.dx + motion.scale * (cos * dx - sin * dy)
        new_y = obj.y + motion.dy + motion.scale * (sin * dx + cos * dy)
        flow[mask, 0] = (new_x - x)[mask]
        flow[mask, 1] = (new_y - y)[mask]
    return flow


def random_motion(
    rng: np.random.Generator, obj: ShapeObject, frames: int, size: int, kinds: tuple[str, ...]
) -> tuple[Motion, ShapeObject]:
    """A motion of the given kinds (move, turn, scale) keeping the object inside the image, and its start."""
    scale = float(np.exp(rng.uniform(-0.25, 0.25) / max(1, frames - 1))) if "scale" in kinds else 1.0
    final_radius = obj.radius * scale ** (frames - 1)
    reach = max(obj.radius, final_radius) + 1
    dx = dy = 0.0
    if "move" in kinds:
        end = rng.uniform(reach, size - reach, size=2)
        start = np.clip([obj.x, obj.y], reach, size - reach)
        dx, dy = ((end - start) / max(1, frames - 1)).tolist()
        obj = replace(obj, x=float(start[0]), y=float(start[1]))
    turn = float(rng.uniform(-0.6, 0.6) / max(1, frames - 1)) if "turn" in kinds and obj.shape != "circle" else 0.0
    return Motion(dx, dy, turn, scale), obj


def make_clip(scene: Scene, motions: tuple[Motion, ...], frames: int, pan: tuple[float, float] = (0.0, 0.0)) -> Clip:
    """Render a scene moving for `frames` frames, with per-frame visible masks, the true flow and the
    occlusions; a camera `pan` (dx, dy per frame) moves the background and adds to every object's motion."""
    if not 2 <= frames <= 64:
        raise ValueError(f"a clip has 2 to 64 frames; got {frames}")
    if len(motions) != len(scene.objects):
        raise ValueError(f"one motion per object: {len(scene.objects)} objects, {len(motions)} motions")
    pan = (float(pan[0]), float(pan[1]))
    seen = tuple(replace(m, dx=m.dx + pan[0], dy=m.dy + pan[1]) for m in motions) if pan != (0.0, 0.0) else tuple(motions)
    images, masks = zip(*(render(scene_at(scene, seen, t), (pan[0] * t, pan[1] * t)) for t in range(frames)))
    flow = np.stack([true_flow(scene, seen, t, masks[t], pan) for t in range(frames - 1)])
    occluded = np.stack([hidden_next(scene_at(scene, seen, t + 1), masks[t], flow[t]) for t in range(frames - 1)])
    return Clip(scene, tuple(motions), np.stack(images), np.stack(masks), flow, scene.caption(), pan, occluded)


def hidden_next(following: Scene, masks: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of a frame (its visible `masks`, forward `flow`) whose true destination in the
    `following` scene is out of view or covered by an object drawn above the pixel's own layer (objects
    are drawn in order; the background is below all). Exact: destinations are points, not pixels."""
    size = following.size
    x, y = pixel_centres(size)
    to_x, to_y = x + flow[..., 0], y + flow[..., 1]
    hidden = (to_x < 0) | (to_x > size) | (to_y < 0) | (to_y > size)
    layer = np.where(masks.any(axis=0), np.argmax(masks, axis=0), -1)
    for index, obj in enumerate(following.objects):
        hidden |= (layer < index) & inside_object(obj, to_x, to_y)
    return hidden


def random_clip(
    seed: int, frames: int = 8, size: int = 64, kinds: tuple[str, ...] = ("move", "turn", "scale"), split: str = "all"
) -> Clip:
    """A seeded random clip whose objects move, turn and scale without leaving the frame."""
    if set(kinds) - {"move", "turn", "scale"}:
        raise ValueError(f"motion kinds must be among move, turn, scale; got {kinds}")
    rng = np.random.default_rng(seed)
    scene = SceneSampler(size=size, split=split, max_objects=2).scene(rng)
    moved = [random_motion(rng, obj, frames, size, kinds) for obj in scene.objects]
    scene = replace(scene, objects=tuple(obj for _, obj in moved))
    return make_clip(scene, tuple(m for m, _ in moved), frames)


# ---------------------------------------------------------------- clips per-frame editing fails on

CLIP_KINDS = ("plain", "textured", "pan", "occlusion")


def textured_clip(seed: int, frames: int = 8, size: int = 64) -> Clip:
    """One or two striped or gradient objects moving and turning on a striped or gradient background."""
    rng = np.random.default_rng(seed)
    scene = SceneSampler(size=size, split="all", max_objects=2, backgrounds=("striped", "gradient")).scene(rng)
    objects = [replace(o, texture=str(rng.choice(TEXTURES[1:]))) for o in scene.objects]
    moved = [random_motion(rng, obj, frames, size, ("move", "turn")) for obj in objects]
    scene = replace(scene, objects=tuple(obj for _, obj in moved))
    return make_clip(scene, tuple(m for m, _ in moved), frames)


def pan_clip(seed: int, frames: int = 8, size: int = 64, speed: int = 2) -> Clip:
    """A camera pan: a striped or gradient background and objects still in the world, all moving by a
    whole number of pixels per frame along the background's axis (plus one pixel across it, or none)."""
    rng = np.random.default_rng(seed)
    scene = SceneSampler(size=size, split="all", max_objects=2, backgrounds=("striped", "gradient")).scene(rng)
    along, across = speed * float(rng.choice((-1, 1))), float(rng.integers(-1, 2))
    pan = (across, along) if scene.background.axis == 0 else (along, across)
    travel = np.abs(pan) * (frames - 1)
    objects = []
    for obj in scene.objects:  # keep every object in view for the whole pan: start it away from the side it moves to
        low = obj.radius + 1 + np.where(np.array(pan) < 0, travel, 0)
        high = size - obj.radius - 1 - np.where(np.array(pan) > 0, travel, 0)
        x, y = np.clip([obj.x, obj.y], low, np.maximum(low, high))
        objects.append(replace(obj, x=float(x), y=float(y)))
    scene = replace(scene, objects=tuple(objects))
    return make_clip(scene, tuple(Motion() for _ in objects), frames, pan)


def occlusion_clip(seed: int, frames: int = 8, size: int = 64) -> Clip:
    """A small object (the first, drawn below) crossing the image behind a large still one (drawn above),
    off its centre so that part of it stays in view; the front object is the clip's subject."""
    rng = np.random.default_rng(seed)
    background = Background(str(rng.choice(("plain", "striped"))), str(rng.choice(list(PALETTE))), int(rng.integers(2)))
    colours = [c for c in PALETTE if c != background.colour]
    back_colour, front_colour = (str(c) for c in rng.choice(colours, size=2, replace=False))
    back_shape, front_shape = (str(rng.choice(SHAPES)) for _ in range(2))
    small, large = SIZES["small"] * size, SIZES["large"] * size
    front = ShapeObject(
        front_shape,
        front_colour,
        "large",
        size / 2 + rng.uniform(-2, 2),
        size / 2 + rng.uniform(-2, 2),
        large,
        0.0 if front_shape == "circle" else float(rng.uniform(-0.3, 0.3)),
    )
    reach = small + 1
    side = float(rng.choice((-1, 1)))  # pass above or below the front object's centre, so part of it stays in view
    y_start, y_end = front.y + side * 0.75 * large + rng.uniform(-1, 1, size=2)
    x_start, x_end = (reach, size - reach) if rng.integers(2) else (size - reach, reach)
    back = ShapeObject(back_shape, back_colour, "small", float(x_start), float(y_start), small, 0.0)
    step = 1 / max(1, frames - 1)
    motion = Motion((x_end - x_start) * step, (y_end - y_start) * step)
    return replace(make_clip(Scene((back, front), background, size), (motion, Motion()), frames), subject=1)


def kind_clip(kind: str, seed: int, frames: int = 8, size: int = 64) -> Clip:
    """A clip of a named kind: textured, pan or occlusion (plain clips are the benchmark's own)."""
    makers = {"textured": textured_clip, "pan": pan_clip, "occlusion": occlusion_clip}
    if kind not in makers:
        raise ValueError(f"clip kind must be one of {', '.join(makers)}; got {kind}")
    return makers[kind](seed, frames, size)


def without_object(clip: Clip, index: int) -> np.ndarray:
    """(T, H, W, 3) frames of `clip` rendered without object `index` (the ground truth of removing it):
    the other objects keep their motion, the camera its pan."""
    if not 0 <= index < len(clip.scene.objects):
        raise ValueError(f"object index must be 0 to {len(clip.scene.objects) - 1}; got {index}")
    pan = clip.pan
    seen = tuple(replace(m, dx=m.dx + pan[0], dy=m.dy + pan[1]) for m in clip.motions) if pan != (0.0, 0.0) else clip.motions
    frames = []
    for t in range(len(clip.frames)):
        scene = scene_at(clip.scene, seen, t)
        kept = tuple(o for i, o in enumerate(scene.objects) if i != index)
        offset = (pan[0] * t, pan[1] * t)
        frames.append(
            render(replace(scene, objects=kept), offset)[0] if kept else render_background(scene.background, scene.size, offset)
        )
    return np.stack(frames)
