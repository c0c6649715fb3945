"""Judge an image of the shapes world: which objects (colour, shape) on which background (kind, colour).

With the generator's masks the judge reads each object's colour and shape from its mask; without masks
(a model's output) it finds the background colour (every background pixel lies between a palette colour
and its pale tone) and takes the connected regions off that colour segment as objects. Colour is the palette colour nearest the region's
median; shape comes from the contour: solidity (area / convex hull area) tells the star apart, then the
share of the minimum enclosing circle the shape fills orders circle > hexagon > square > triangle.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np

from .world import BACKGROUNDS, PALETTE, SHAPES, pale

# Fill of the minimum enclosing circle by exact renders: circle 1, hexagon 0.83, square 0.64, triangle 0.41
# (continuous values; pixel contours lower them a little). Cuts halfway between neighbours' measured values.
# Measured on 300 renders: triangle 0.37-0.47, square 0.56-0.69, hexagon 0.75-0.86, circle 0.89-0.95.
CIRCLE_FILL = 0.875
HEXAGON_FILL = 0.72
SQUARE_FILL = 0.515
STAR_SOLIDITY = 0.72  # measured: stars 0.50-0.61 of their hull, convex shapes 0.84-1.0
# Every background colour lies on the segment from a palette colour to its pale tone; the nearest other
# palette colour is 64 RGB units off any segment, so pixels 50 off are objects and pixels within 32 are background.
FOREGROUND_DISTANCE = 50.0
BACKGROUND_TOLERANCE = 32.0
MIN_OBJECT_AREA = 12  # pixels, at 64 px
PLAIN_SPREAD = 0.1  # std of the tone profile (0 = pale, 1 = full) below which a background is plain
STRIPE_JUMPS = 3  # a striped profile has at least this many steps larger than STEP
STEP = 0.4


@dataclass(frozen=True)
class ObjectVerdict:
    """What the judge sees of one object."""

    colour: str
    shape: str
    area: int
    solidity: float
    fill: float


@dataclass(frozen=True)
class BackgroundVerdict:
    """The background's kind, colour, and the axis it varies along (0 = rows)."""

    kind: str
    colour: str
    axis: int


@dataclass(frozen=True)
class Verdict:
    """Objects (largest first) and background of an image."""

    objects: tuple[ObjectVerdict, ...]
    background: BackgroundVerdict

    def pairs(self) -> Counter:
        """How many objects of each (colour, shape) the image shows."""
        return Counter((o.colour, o.shape) for o in self.objects)


def nearest_colour(rgb) -> str:
    """The palette colour nearest an RGB value (Euclidean in RGB)."""
    names = list(PALETTE)
    distances = np.linalg.norm(np.asarray(list(PALETTE.values()), dtype=np.float64) - np.asarray(rgb, dtype=np.float64), axis=1)
    return names[int(np.argmin(distances))]


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """(solidity, fill) of a mask's largest outer contour; (0, 0) for a degenerate region."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0.0, 0.0
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    hull = cv2.contourArea(cv2.convexHull(contour))
    _, radius = cv2.minEnclosingCircle(contour)
    if hull <= 0 or radius <= 0:
        return 0.0, 0.0
    return area / hull, area / (np.pi * radius**2)


def classify_shape(solidity: float, fill: float) -> str:
    """The shape whose solidity and circle fill these are."""
    if solidity < STAR_SOLIDITY:
        return "star"
    if fill >= CIRCLE_FILL:
        return "circle"
    if fill >= HEXAGON_FILL:
        return "hexagon"
    return "square" if fill >= SQUARE_FILL else "triangle"


def judge_object(image: np.ndarray, mask: np.ndarray) -> ObjectVerdict:
    """Colour and shape of the object under `mask` in an (H, W, 3) uint8 image."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("the object mask is empty")
    solidity, fill = shape_features(mask)
    colour = nearest_colour(np.median(image[mask].reshape(-1, 3), axis=0))
    return ObjectVerdict(colour, classify_shape(solidity, fill), int(mask.sum()), round(solidity, 4), round(fill, 4))


def segment_distance(pixels: np.ndarray, colour: str) -> tuple[np.ndarray, np.ndarray]:
    """Distance of (..., 3) pixels to a colour's background segment (full tone to pale tone), and the
    position along it (1 = full tone, 0 = pale)."""
    full, light = np.asarray(PALETTE[colour], dtype=np.float64), pale(colour)
    direction = full - light
    t = np.clip(((pixels - light) @ direction) / (direction @ direction), 0.0, 1.0)
    return np.linalg.norm(pixels - (light + t[..., None] * direction), axis=-1), t


def background_colour(image: np.ndarray) -> str:
    """The palette colour whose background segment (full to pale tone) holds the most pixels."""
    pixels = image.astype(np.float64)
    near = {name: (segment_distance(pixels, name)[0] < BACKGROUND_TOLERANCE).mean() for name in PALETTE}
    return max(near, key=near.get)


def find_objects(image: np.ndarray, min_area: int | None = None) -> list[np.ndarray]:
    """Masks of the objects, largest first: connected regions off the background's colour segment, each
    grown or shrunk to the pixels nearer its own median colour than the background (the half-way
    boundary, which keeps a blurred shape's outline where a sharp one would be)."""
    pixels = image.astype(np.float64)
    distance, _ = segment_distance(pixels, background_colour(image))
    smallest = MIN_OBJECT_AREA * (image.shape[0] / 64) ** 2 if min_area is None else min_area
    masks = []
    for seed in _regions(distance > FOREGROUND_DISTANCE, smallest):
        colour = np.median(pixels[seed], axis=0)
        nearer = np.linalg.norm(pixels - colour, axis=-1) < distance
        grown = _regions(nearer, smallest)
        masks += [region for region in grown if (region & seed).any()][:1]
    return sorted(masks, key=lambda m: -int(m.sum()))


def _regions(mask: np.ndarray, smallest: float) -> list[np.ndarray]:
    """4-connected regions of a mask with at least `smallest` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    return [labels == i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= smallest]


def _profile(tone: np.ndarray, keep: np.ndarray, axis: int) -> np.ndarray:
    """Median tone of the kept pixels along each row (axis 0) or column (axis 1); rows with none are dropped."""
    lines = [t[k] for t, k in zip(tone if axis == 0 else tone.T, keep if axis == 0 else keep.T)]
    return np.array([np.median(line) for line in lines if line.size])


def judge_background(image: np.ndarray) -> BackgroundVerdict:
    """Kind (plain, striped, gradient), colour, and the axis the background varies along."""
    colour = background_colour(image)
    distance, tone = segment_distance(image.astype(np.float64), colour)
    keep = distance <= BACKGROUND_TOLERANCE
    profiles = [_profile(tone, keep, axis) for axis in (0, 1)]
    axis = int(np.argmax([p.std() if p.size > 1 else 0.0 for p in profiles]))
    profile = profiles[axis]
    if profile.size < 2 or profile.std() < PLAIN_SPREAD:
        return BackgroundVerdict("plain", colour, axis)
    jumps = int((np.abs(np.diff(profile)) > STEP).sum())
    return BackgroundVerdict("striped" if jumps >= STRIPE_JUMPS else "gradient", colour, axis)


def judge(image: np.ndarray, masks: np.ndarray | None = None) -> Verdict:
    """Everything the judge sees in an image: from the given object masks, or found from the background model."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the judge reads (H, W, 3) uint8 images; got {image.shape} {image.dtype}")
    regions = find_objects(image) if masks is None else [m for m in masks if np.asarray(m).any()]
    objects = sorted((judge_object(image, m) for m in regions), key=lambda o: -o.area)
    return Verdict(tuple(objects), judge_background(image))


_OBJECT = re.compile(rf"\ban? (?:(?:small|large) )?({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})\b")
_BACKGROUND = re.compile(rf"\bon an? (?:({'|'.join(BACKGROUNDS)}) )?({'|'.join(PALETTE)}) background\b")


def parse_caption(caption: str) -> tuple[Counter, BackgroundVerdict | None]:
    """The (colour, shape) pairs a caption asks for, and its background (None when it names none)."""
    text = caption.lower()
    wanted = Counter(_OBJECT.findall(text))
    match = _BACKGROUND.search(text)
    background = BackgroundVerdict(match.group(1) or "plain", match.group(2), -1) if match else None
    return wanted, background


def shows(verdict: Verdict, caption: str) -> bool:
    """Whether an image shows every object the caption asks for (its colour and shape), extra objects allowed."""
    wanted, _ = parse_caption(caption)
    if not wanted:
        raise ValueError(f"the caption names no object of the shapes world: {caption!r}")
    seen = verdict.pairs()
    return all(seen[pair] >= count for pair, count in wanted.items())
