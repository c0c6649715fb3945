"""The shapes world: captioned images and clips of coloured shapes with exact masks and true motion.

Pure numpy. Every object is a shape (circle, square, triangle, star, hexagon) of a named colour, size
and position; backgrounds are plain, striped or gradient in a pale or full named colour. Masks are
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
HELD_OUT_PAIRS = frozenset({("red", "star"), ("blue", "triangle"), ("green", "hexagon"), ("yellow", "square"), ("purple", "circle")})
PALE = 0.55  # share of white mixed into a background colour's pale tone
STRIPE_PERIOD = 12  # pixels per stripe pair at 64 px (scaled with the image)


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

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {self.shape}")
        if self.colour not in PALETTE:
            raise ValueError(f"colour must be one of {', '.join(PALETTE)}; got {self.colour}")
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}; got {self.size}")
        if self.radius <= 0:
            raise ValueError(f"radius must be positive; got {self.radius}")

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
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    u, v = (cos * dx + sin * dy) / obj.radius, (-sin * dx + cos * dy) / obj.radius  # undo the rotation
    return inside_polygon(u, v, polygon_vertices(obj.shape))


def object_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Exact (size, size) bool mask of an unoccluded object: pixel centres inside the shape."""
    return inside_object(obj, *pixel_centres(size))


def pale(colour: str) -> np.ndarray:
    """The pale tone of a palette colour (mixed with white)."""
    return np.asarray(PALETTE[colour], dtype=np.float64) * (1 - PALE) + 255 * PALE


def render_background(background: Background, size: int) -> np.ndarray:
    """(size, size, 3) uint8 background: varies along rows (axis 0) or columns (axis 1) only."""
    full, light = np.asarray(PALETTE[background.colour], dtype=np.float64), pale(background.colour)
    position = np.arange(size) + 0.5
    if background.kind == "plain":
        weight = np.ones(size)
    elif background.kind == "striped":
        period = max(4, round(STRIPE_PERIOD * size / 64))
        weight = ((position // (period / 2)) % 2 == 0).astype(np.float64)
    else:
        weight = 1 - position / size
    profile = weight[:, None] * full + (1 - weight[:, None]) * light
    image = np.broadcast_to(profile[:, None, :], (size, size, 3)) if background.axis == 0 else np.broadcast_to(profile[None], (size, size, 3))
    return np.round(image).astype(np.uint8)


def visible_masks(scene: Scene) -> np.ndarray:
    """(objects, size, size) bool masks of what is visible of each object (later objects on top)."""
    masks = np.stack([object_mask(o, scene.size) for o in scene.objects])
    for i in range(len(masks) - 1):
        masks[i] &= ~masks[i + 1 :].any(axis=0)
    return masks


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """The scene's (size, size, 3) uint8 image and its (objects, size, size) visible masks."""
    image = render_background(scene.background, scene.size).copy()
    masks = visible_masks(scene)
    for obj, mask in zip(scene.objects, masks):
        image[mask] = PALETTE[obj.colour]
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
        return replace(obj, x=obj.x + self.dx * frame, y=obj.y + self.dy * frame, radius=obj.radius * self.scale**frame, angle=obj.angle + self.turn * frame)


@dataclass(frozen=True)
class Clip:
    """A moving scene: frames (T, H, W, 3), visible masks (T, objects, H, W), flow (T-1, H, W, 2) as (dx, dy)."""

    scene: Scene
    motions: tuple[Motion, ...]
    frames: np.ndarray
    masks: np.ndarray
    flow: np.ndarray
    caption: str = field(default="")


def scene_at(scene: Scene, motions: tuple[Motion, ...], frame: int) -> Scene:
    """The scene at a frame: every object moved by its motion."""
    return replace(scene, objects=tuple(m.at(o, frame) for o, m in zip(scene.objects, motions)))


def true_flow(scene: Scene, motions: tuple[Motion, ...], frame: int, masks: np.ndarray) -> np.ndarray:
    """(H, W, 2) forward flow from `frame` to the next: each visible object pixel follows its object's
    similarity transform (about the object's centre); the static background does not move."""
    x, y = pixel_centres(scene.size)
    flow = np.zeros((scene.size, scene.size, 2))
    for obj, motion, mask in zip(scene_at(scene, motions, frame).objects, motions, masks):
        cos, sin = math.cos(motion.turn), math.sin(motion.turn)
        dx, dy = x - obj.x, y - obj.y
        new_x = obj.x + motion.dx + motion.scale * (cos * dx - sin * dy)
        new_y = obj.y + motion.dy + motion.scale * (sin * dx + cos * dy)
        flow[mask, 0] = (new_x - x)[mask]
        flow[mask, 1] = (new_y - y)[mask]
    return flow


def random_motion(rng: np.random.Generator, obj: ShapeObject, frames: int, size: int, kinds: tuple[str, ...]) -> tuple[Motion, ShapeObject]:
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


def make_clip(scene: Scene, motions: tuple[Motion, ...], frames: int) -> Clip:
    """Render a scene moving for `frames` frames, with per-frame visible masks and the true flow."""
    if not 2 <= frames <= 64:
        raise ValueError(f"a clip has 2 to 64 frames; got {frames}")
    if len(motions) != len(scene.objects):
        raise ValueError(f"one motion per object: {len(scene.objects)} objects, {len(motions)} motions")
    images, masks = zip(*(render(scene_at(scene, motions, t)) for t in range(frames)))
    flow = np.stack([true_flow(scene, motions, t, masks[t]) for t in range(frames - 1)])
    return Clip(scene, tuple(motions), np.stack(images), np.stack(masks), flow, scene.caption())


def random_clip(seed: int, frames: int = 8, size: int = 64, kinds: tuple[str, ...] = ("move", "turn", "scale"), split: str = "all") -> Clip:
    """A seeded random clip whose objects move, turn and scale without leaving the frame."""
    if set(kinds) - {"move", "turn", "scale"}:
        raise ValueError(f"motion kinds must be among move, turn, scale; got {kinds}")
    rng = np.random.default_rng(seed)
    scene = SceneSampler(size=size, split=split, max_objects=2).scene(rng)
    moved = [random_motion(rng, obj, frames, size, kinds) for obj in scene.objects]
    scene = replace(scene, objects=tuple(obj for _, obj in moved))
    return make_clip(scene, tuple(m for m, _ in moved), frames)
