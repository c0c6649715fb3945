"""Keyframes, then propagation (after Rerender-A-Video, FRESCO and TokenFlow).

1. Choose keyframes: every N-th frame, or `auto` where the last keyframe stops seeing the frame; a cut
   starts one either way.
2. Edit the keyframes jointly with the core (`editing.core.edit_keyframes`).
3. Propagate: warp the two nearest edited keyframes along the source's chained optical flow, blended by
   distance and validity, in pixel space.
4. Refine what no keyframe sees with a few low-noise steps, in crops around it, the seen pixels held;
   regions no wider than a latent pixel are inpainted from their seen neighbours instead. Carry what was
   made forward along the flow so a revealed region is made once. How and why: docs/consistency.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from . import sampling
from .context import frames_key
from .flows import MATCH_LEVELS, ClipFlows, colour_match, consistent, landing_points, source_flows
from .memo import current_memo
from .region_flows import within_region
from .stepcache import parse_step_caches
from .still import bleed, extend_moving, fill_still, hold_still, mend_edges, still_masks, textured

if TYPE_CHECKING:
    from collections.abc import Callable

    from diffusers import SchedulerMixin

    from .context import EditParts, ProgressFn, StageTimer
    from .models import Backbone
    from .sampling import Guidance

AUTO_UNSEEN = 0.15  # auto keyframes: a new one where this share of a frame is unseen from the last
AUTO_MAX_GAP = 16  # auto keyframes: at most this many frames apart
CUT_UNSEEN = 0.8  # a frame this much of which its previous frame cannot see is a cut: it starts a keyframe (every N too)
REFINE_DILATE = 1  # latent pixels added around each disoccluded latent pixel
REFINE_CONTEXT = 2  # latent pixels of context kept around them in a refinement's crop
REFINE_MIN_NOISE = 0.1  # a refinement starting from less noise (std) than this runs no UNet step (Refiner.run)


def clip_flows(frames: np.ndarray) -> ClipFlows:
    """The source clip's flows (`_clip_flows`). Inside an edit's or a session's memo (editing.memo) they are
    computed once per clip content: a region edit's mask, its keyframes and a removal's fill share them, and
    a session's later prompts reuse them."""
    memo = current_memo()
    if memo is None:
        return _clip_flows(frames)
    return memo.kept(("flows", frames_key(frames).content), lambda: _clip_flows(frames))


def _clip_flows(frames: np.ndarray) -> ClipFlows:
    """DIS flow of the source clip's consecutive pairs with validity both ways. A pixel is valid where the
    forward-backward check passes or, failing it, where the source's colour there and the one its flow
    points at agree within MATCH_LEVELS: in a flat region (snow, sky, a plain background) the flow is
    ambiguous and fails the check, but warping along it moves like colour onto like. A disoccluded pixel
    fails both, as the colour its flow points at is the occluder's. On a still background (flat regions
    reaching the image's edge while the camera stands: `editing.still`) the flow is held at zero, not
    the moving neighbour's that DIS fills in; what an object uncovers there then fails both checks."""
    flows = source_flows(frames, colour_candidates=True)
    still, rims = still_masks(frames, flows.backward, flows.forward)
    backward, forward = hold_still(flows.backward, flows.forward, still)
    pairs = range(len(frames) - 1)

    def validity() -> tuple[np.ndarray, np.ndarray]:
        # On a still background the flow is zero by assumption, so only the colours can vouch for a hop;
        # a moving pixel's way back is read off its own kind (`extend_moving`), not the background's zero.
        return np.stack(
            [
                (consistent(backward[t], extend_moving(forward[t], still[t])) & ~still[t + 1])
                | colour_match(frames[t], frames[t + 1], backward[t], MATCH_LEVELS)
                for t in pairs
            ]
        ), np.stack(
            [
                (consistent(forward[t], extend_moving(backward[t], still[t + 1])) & ~still[t])
                | colour_match(frames[t + 1], frames[t], forward[t], MATCH_LEVELS)
                for t in pairs
            ]
        )

    backward_valid, forward_valid = validity()
    if still.any():  # a moving object's edge beside a still background: its own motion, not the short vector DIS gave it
        backward = np.stack(
            [mend_edges(backward[t], frames[t + 1], frames[t], still[t + 1], ~backward_valid[t], MATCH_LEVELS) for t in pairs]
        )
        forward = np.stack(
            [mend_edges(forward[t], frames[t], frames[t + 1], still[t], ~forward_valid[t], MATCH_LEVELS) for t in pairs]
        )
        backward_valid, forward_valid = validity()
    return ClipFlows(backward, forward, backward_valid, forward_valid, still, rims)


@dataclass(frozen=True)
class Chain:
    """Where each pixel of a frame is found in another frame, and whether the path there is trusted."""

    x: np.ndarray  # (H, W) float32 column in the other frame
    y: np.ndarray  # (H, W) float32 row in the other frame
    valid: np.ndarray  # (H, W) bool


def remap(field: np.ndarray, x: np.ndarray, y: np.ndarray, nearest: bool = False) -> np.ndarray:
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(field, x, y, mode, borderMode=cv2.BORDER_REPLICATE)


def chain(flows: ClipFlows, target: int, key: int) -> Chain:
    """Follow each pixel of frame `target` to frame `key` through the consecutive flows between them; a
    pixel stays valid only if every hop passes the forward-backward check and stays inside the frame."""
    height, width = flows.backward.shape[1:3]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    valid = np.ones((height, width), bool)
    step = -1 if key < target else 1
    for frame in range(target, key, step):
        if step < 0:  # frame -> frame - 1 along pair frame - 1
            hop, hop_valid = flows.backward[frame - 1], flows.backward_valid[frame - 1]
        else:  # frame -> frame + 1 along pair frame
            hop, hop_valid = flows.forward[frame], flows.forward_valid[frame]
        valid &= remap(hop_valid.astype(np.uint8), x, y, nearest=True).astype(bool)
        moved = remap(hop, x, y)
        if (
            flows.still is not None and flows.still[frame].any()
        ):  # a point on a still background stays; a moving one moves with its own kind
            on_still = remap(flows.still[frame].astype(np.uint8), x, y, nearest=True).astype(bool)
            moved = np.where(on_still[..., None], 0.0, remap(extend_moving(hop, flows.still[frame]), x, y))
        x, y = x + moved[..., 0], y + moved[..., 1]
        valid &= (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    return Chain(x, y, valid)


def choose_keyframes(count: int, every: int, flows: ClipFlows | None = None) -> tuple[int, ...]:
    """Keyframe indices: 0, every, 2 every, ...; or with every = -1 (auto), where the scene changes.

    With the clip's flows, a cut (more than CUT_UNSEEN of a frame unseen from the frame before it: a cut
    measures about 0.97, the shapes benchmark's clips and real camera motion at most about 0.5) is a
    keyframe whatever `every` says, and every-N counts on from it: nothing is propagated across a cut."""
    if every <= 0 and flows is None:
        raise ValueError("auto keyframes need the clip's flows")
    keys = [0]
    for frame in range(1, count):
        cut = flows is not None and 1 - flows.backward_valid[frame - 1].mean() > CUT_UNSEEN
        if every > 0:
            new = cut or frame - keys[-1] >= every
        else:
            new = cut or frame - keys[-1] >= AUTO_MAX_GAP or _unseen_share(flows, frame, keys[-1]) > AUTO_UNSEEN
        if new:
            keys.append(frame)
    return tuple(keys)


def _unseen_share(flows: ClipFlows, frame: int, key: int) -> float:
    """The share of `frame`'s pixels with no trusted path to keyframe `key`."""
    return 1.0 - float(chain(flows, frame, key).valid.mean())


@dataclass
class Keyframes:
    """Edited keyframes: the stage between 'Edit keyframes' and 'Propagate'."""

    indices: tuple[int, ...]
    frames: np.ndarray  # (K, H, W, 3) uint8, the edited keyframes in index order
    inversion_cached: bool = False
    warnings: tuple[str, ...] = ()
    flows: ClipFlows | None = field(default=None, repr=False)  # the source's flows, when stage 1 already computed them


@dataclass(frozen=True)
class Fused:
    """A non-keyframe made from its keyframes: the blended warps and what no keyframe sees."""

    frame: np.ndarray  # (H, W, 3) uint8
    unseen: np.ndarray  # (H, W) bool
    nearest: int  # the nearest keyframe (its index in the clip)


def neighbours(frame: int, keys: tuple[int, ...]) -> tuple[int | None, int | None]:
    """The nearest keyframe at or before `frame` and the nearest after it (None where there is none)."""
    before = [k for k in keys if k <= frame]
    after = [k for k in keys if k > frame]
    return (before[-1] if before else None), (after[0] if after else None)


def fuse_frame(frame: int, keyframes: Keyframes, flows: ClipFlows, bleeds: Bleeds | None = None) -> Fused:
    """Warp the nearest edited keyframes on each side onto `frame` and blend them: weight of each is its
    temporal closeness (1 - distance / gap) times the validity of the path to it. `bleeds`: the keyframes'
    `key_bleeds`, made once for a clip's frames (computed here when not given)."""
    keys = keyframes.indices
    bleeds = bleeds if bleeds is not None else key_bleeds(keyframes, flows)
    left, right = neighbours(frame, keys)
    sides = [k for k in (left, right) if k is not None]
    warped, weights = [], []
    for key in sides:
        path = chain(flows, frame, key)
        image = keyframes.frames[keys.index(key)].astype(np.float32)
        steady, held = _steady_rim(flows, frame, key, path, bleeds[key])
        warped.append(np.where(held[..., None], image, remap(image, path.x, path.y)))
        closeness = 1.0 if len(sides) == 1 else 1.0 - abs(frame - key) / (right - left)
        weights.append((closeness, (path.valid & ~_left_behind(flows, frame, key, path) & ~steady) | held))
    seen_weight = sum(c * v.astype(np.float32) for c, v in weights)
    guess_weight = sum(c for c, _ in weights)  # where no path is trusted: the distance blend, refined later
    seen = seen_weight > 0
    numerator = sum(np.where(v, c, 0.0)[..., None] * w for (c, v), w in zip(weights, warped))
    guess = sum(c * w for (c, _), w in zip(weights, warped)) / guess_weight
    fused = np.where(seen[..., None], numerator / np.maximum(seen_weight, 1e-6)[..., None], guess)
    fused = np.clip(fused.round(), 0, 255).astype(np.uint8)
    if flows.still is not None:  # what an object uncovered on a still background: from that background, not the object
        fused = fill_still(fused, ~seen & _background(flows, frame), seen & flows.still[frame])
    nearest = min(sides, key=lambda k: (abs(frame - k), k))
    return Fused(fused, ~seen, nearest)


def _background(flows: ClipFlows, frame: int) -> np.ndarray:
    """(H, W) bool: `frame`'s still background with its rim (none without `flows.still`)."""
    still = flows.still[frame] if flows.still is not None else np.zeros(flows.backward.shape[1:3], bool)
    return still | flows.rim[frame] if flows.rim is not None else still


def _left_behind(flows: ClipFlows, frame: int, key: int, path: Chain) -> np.ndarray:
    """(H, W) bool: pixels of `frame`'s still background whose path ends off the keyframe's: on the object
    or on the rim beside it that moves with it (`editing.still.rim`, where the edited object bleeds into
    the background). The object has moved on, so what the keyframe shows there is not this background."""
    if flows.still is None:
        return np.zeros(path.valid.shape, bool)
    lands = remap(flows.still[key].astype(np.uint8), path.x, path.y, nearest=True).astype(bool)
    return flows.still[frame] & ~lands


Bleeds = dict[int, "np.ndarray | None"]  # keyframe index -> its rim's bleed (`key_bleeds`)


def key_bleeds(keyframes: Keyframes, flows: ClipFlows) -> Bleeds:
    """Each edited keyframe's bleed into its rim (`editing.still.bleed`), or None where its rim moves with
    the object: no still background, or one the edit left plain (`editing.still.textured`)."""
    bleeds: Bleeds = {}
    for key, edited in zip(keyframes.indices, keyframes.frames):
        if flows.rim is None or flows.still is None or not textured(edited, flows.still[key]):
            bleeds[key] = None
        else:
            bleeds[key] = bleed(edited, flows.still[key], flows.rim[key])
    return bleeds


def _steady_rim(flows: ClipFlows, frame: int, key: int, path: Chain, bled: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Two (H, W) bool masks of `frame`'s rim (`editing.still.rim`): the pixels that do not move with the
    object, and of those the ones held still, taking the keyframe's pixel in place like the background
    beyond. A rim pixel is steady where the keyframe has a bleed mask `bled` (`key_bleeds`: the edit
    textured the background, and stripes it adds stay put) and its own flow does not lead to the edited object's bleed into the
    keyframe's rim (`editing.still.bleed`, which moves with the object); it is held where the keyframe
    shows background in place, and otherwise left unseen, to be filled from the background
    (`editing.still.fill_still`)."""
    none = np.zeros(path.valid.shape, bool)
    if bled is None or not flows.rim[frame].any():  # a bleed mask means the clip has a rim and a still background
        return none, none
    on_bleed = remap(bled.astype(np.uint8), path.x, path.y, nearest=True).astype(bool)
    steady = flows.rim[frame] & ~on_bleed
    return steady, steady & (flows.still[key] | flows.rim[key]) & ~bled


def latent_mask(unseen: np.ndarray, scale: int, dilate: int = REFINE_DILATE) -> np.ndarray:
    """(h, w) bool: latent pixels any of whose `scale` x `scale` image pixels is unseen, dilated."""
    height, width = unseen.shape
    blocks = unseen.reshape(height // scale, scale, width // scale, scale).any(axis=(1, 3))
    if dilate and blocks.any():
        blocks = cv2.dilate(blocks.astype(np.uint8), np.ones((2 * dilate + 1,) * 2, np.uint8)).astype(bool)
    return blocks


def propagate(
    frames: np.ndarray,
    keyframes: Keyframes,
    parts: EditParts,
    backbone: Backbone,
    progress: ProgressFn | None = None,
    timer: StageTimer | None = None,
) -> np.ndarray:
    """Stage 2: every other frame from its keyframes, its disoccluded regions re-diffused; returns all frames."""
    progress = progress or (lambda stage, done, total: None)
    stage = timer.stage if timer is not None else (lambda name: contextlib.nullcontext())
    out = np.empty_like(frames)
    for index, key in enumerate(keyframes.indices):
        out[key] = keyframes.frames[index]
    others = [f for f in range(len(frames)) if f not in keyframes.indices]
    with stage("propagate"):
        progress("propagate", 0, max(1, len(others)))
        flows = keyframes.flows if keyframes.flows is not None or not others else clip_flows(frames)
        if others and parts.held is not None and parts.held.inside is not None:
            flows = within_region(flows, parts.held.inside, frames)
        bleeds = key_bleeds(keyframes, flows) if others else {}
        fused = {}
        for done, frame in enumerate(others):
            fused[frame] = fuse_frame(frame, keyframes, flows, bleeds)
            out[frame] = fused[frame].frame
            progress("propagate", done + 1, len(others))
    holes = [f for f in others if fused[f].unseen.any()]
    rediffused, narrow = {}, {}
    if parts.engine.keyframe_refine > 0:
        with stage("propagate"):
            rediffused, narrow = _to_rediffuse(out, {f: fused[f] for f in holes}, flows, backbone.vae_scale_factor)
    if rediffused:
        with stage("refine"):
            refine(out, keyframes, rediffused, parts, backbone, progress)
    if holes:
        with stage("propagate"):
            carry_forward(out, {f: fused[f].unseen for f in holes}, flows, narrow)
    return out


def refine_schedule(parts: EditParts, backbone: Backbone) -> tuple[SchedulerMixin, torch.Tensor]:
    """The request's sampler, set to step along the last `keyframe_refine` share of its schedule, and those
    timesteps (at least one)."""
    config = parts.edit
    scheduler = backbone.scheduler(config.sampler)
    steps = max(1, math.ceil(config.steps * parts.engine.keyframe_refine))
    return scheduler, sampling.sampling_timesteps(scheduler, config.steps, steps / config.steps)


def _to_refine(made: Fused, flows: ClipFlows, frame: int) -> Fused:
    """What of a fused frame is re-diffused: its unseen pixels, less those `carry_forward` will take from
    the previous frame (re-diffused, they would be overwritten), and less those on a still background or
    its rim, which keep their fill from that background (`editing.still.fill_still`). Re-diffused, they
    would take the colour of the object that uncovered them: a latent pixel is 8 x 8 image pixels, and the
    object's own pixels sit in the same ones."""
    return dataclasses.replace(made, unseen=made.unseen & ~carried(flows, frame, made.unseen) & ~_background(flows, frame))


def _to_rediffuse(
    out: np.ndarray, fused: dict[int, Fused], flows: ClipFlows, scale: int
) -> tuple[dict[int, Fused], dict[int, np.ndarray]]:
    """The fused frames that have something to re-diffuse, with what (`_to_refine`), and each frame's
    regions no wider than a latent pixel (`narrow_regions`), which are inpainted instead: a latent pixel is
    `scale` x `scale` image pixels, so re-diffusing such a speck costs a crop's encode, denoise and decode
    for what its neighbours already show. They are inpainted here from the frame's seen pixels in `out` (in
    place), the context a refinement holds, and again by `carry_forward` once their neighbours are final."""
    chosen, narrows = {}, {}
    for frame, made in fused.items():
        refined = _to_refine(made, flows, frame)
        narrow = narrow_regions(refined.unseen, scale / 2)
        if narrow.any():
            out[frame] = fill_still(out[frame], narrow, ~made.unseen)  # from the seen pixels only
            refined = dataclasses.replace(refined, unseen=refined.unseen & ~narrow)
            narrows[frame] = narrow
        if refined.unseen.any():
            chosen[frame] = refined
    return chosen, narrows


def narrow_regions(unseen: np.ndarray, reach: float) -> np.ndarray:
    """(H, W) bool: the connected regions of `unseen` each of whose pixels lies within `reach` px of a seen
    pixel (regions at most about 2 * `reach` px wide, however long)."""
    if not unseen.any():
        return np.zeros(unseen.shape, bool)
    mask = unseen.astype(np.uint8)
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    deepest = np.zeros(count, np.float32)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    shallow = deepest <= reach
    shallow[0] = False  # the seen pixels
    return shallow[labels]


def carry_forward(
    out: np.ndarray, unseen: dict[int, np.ndarray], flows: ClipFlows, narrow: dict[int, np.ndarray] | None = None
) -> None:
    """What no keyframe sees is made once, where it first appears, then carried: in frame order, each
    unseen pixel that the previous frame sees (its one-hop flow passes the forward-backward check) takes
    the previous output frame's pixel along that flow, so a disoccluded region is the same content moving
    with the scene instead of a new re-diffusion in every frame (in place). An unseen pixel on the still
    background or its rim keeps its own fill from that background (`fuse_frame`): carried along the rim's
    own flow, it would take the moving object's pixels. A frame's `narrow` regions (`_to_rediffuse`) are
    then inpainted from all its other pixels, carried ones included, before the next frame takes from it."""
    narrow = narrow or {}
    for frame in sorted(unseen):
        take = carried(flows, frame, unseen[frame])
        if take.any():
            map_x, map_y, _ = landing_points(flows.backward[frame - 1])
            moved = remap(out[frame - 1].astype(np.float32), map_x, map_y)
            out[frame][take] = np.clip(moved[take].round(), 0, 255).astype(np.uint8)
        if frame in narrow:
            out[frame] = fill_still(out[frame], narrow[frame], ~narrow[frame])


def carried(flows: ClipFlows, frame: int, unseen: np.ndarray) -> np.ndarray:
    """(H, W) bool: the unseen pixels of `frame` that `carry_forward` takes from the previous frame: its
    one-hop flow passes the checks and lands inside the frame, and they are not on the still background."""
    if frame == 0:
        return np.zeros(unseen.shape, bool)
    inside = landing_points(flows.backward[frame - 1])[2]
    return unseen & flows.backward_valid[frame - 1] & inside & ~_background(flows, frame)


@dataclass(frozen=True)
class Box:
    """A crop of the frame in latent pixels: rows top:top+height, columns left:left+width."""

    top: int
    left: int
    height: int
    width: int

    def rows(self, scale: int = 1) -> slice:
        return slice(self.top * scale, (self.top + self.height) * scale)

    def columns(self, scale: int = 1) -> slice:
        return slice(self.left * scale, (self.left + self.width) * scale)

    @property
    def area(self) -> int:
        return self.height * self.width

    def overlaps(self, other: Box) -> bool:
        return (
            self.top < other.top + other.height
            and other.top < self.top + self.height
            and self.left < other.left + other.width
            and other.left < self.left + self.width
        )


@dataclass(frozen=True)
class RefineClip:
    """One re-diffusion: the crop `box` of keyframe `key` (the anchor) and of its `members`."""

    key: int
    members: tuple[int, ...]
    box: Box


def unet_multiple(backbone: Backbone) -> int:
    """Latent sizes the UNet takes as they are: multiples of 2 ** (down blocks - 1), one halving per block but the last."""
    return 2 ** (len(backbone.unet.config.down_block_types) - 1)


def aligned_box(span: tuple[int, int, int, int], multiple: int, shape: tuple[int, int]) -> Box:
    """The box around latent rows span[0]:span[1] and columns span[2]:span[3], each side grown to a multiple
    of `multiple` (or the frame's own size, if that is smaller), centred on the span and moved inside the frame."""
    corner = []
    for start, stop, size in ((span[0], span[1], shape[0]), (span[2], span[3], shape[1])):
        length = min(size, -(-(stop - start) // multiple) * multiple)
        begin = start - (length - (stop - start)) // 2
        corner.append((min(max(begin, 0), size - length), length))
    (top, height), (left, width) = corner
    return Box(top, left, height, width)


def _merged(first: Box, second: Box, multiple: int, shape: tuple[int, int]) -> Box:
    """The aligned box around two boxes."""
    span = (
        min(first.top, second.top),
        max(first.top + first.height, second.top + second.height),
        min(first.left, second.left),
        max(first.left + first.width, second.left + second.width),
    )
    return aligned_box(span, multiple, shape)


def refine_boxes(mask: np.ndarray, multiple: int, context: int = REFINE_CONTEXT) -> list[Box]:
    """Disjoint aligned boxes holding every masked latent pixel with `context` latent pixels around it: one per
    connected region of the grown mask, overlapping ones merged; the whole frame when they would cover as much."""
    shape = mask.shape
    whole = Box(0, 0, *shape)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * context + 1,) * 2, np.uint8)) if context else mask.astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    boxes = [aligned_box((y, y + h, x, x + w), multiple, shape) for x, y, w, h, _ in stats[1:count]]
    merging = True
    while merging:
        pairs = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
        merging = bool(pairs)
        if merging:
            i, j = pairs[0]
            boxes = [b for k, b in enumerate(boxes) if k not in (i, j)] + [_merged(boxes[i], boxes[j], multiple, shape)]
    if sum(box.area for box in boxes) >= whole.area:
        return [whole]
    return boxes


def refine_clips(fused: dict[int, Fused], scale: int, multiple: int) -> list[RefineClip]:
    """The re-diffusions of the fused frames: each frame cropped to the boxes around its own unseen latents
    (`refine_boxes`), the frames with the same nearest keyframe and the same box in one. A frame's boxes
    depend on it alone, so it is refined the same whichever other frames are edited with it (a clip split
    into segments over workers gives the whole edit's frames)."""
    boxes: dict[tuple[int, Box], list[int]] = {}
    for frame, made in sorted(fused.items()):
        for box in refine_boxes(latent_mask(made.unseen, scale), multiple):
            boxes.setdefault((made.nearest, box), []).append(frame)
    return [RefineClip(key, tuple(members), box) for (key, box), members in boxes.items()]


def refine(
    out: np.ndarray, keyframes: Keyframes, fused: dict[int, Fused], parts: EditParts, backbone: Backbone, progress: ProgressFn
) -> None:
    """Re-diffuse the unseen regions of the fused frames in `out` (in place), grouped by nearest keyframe and
    cropped to boxes around them with some context (`refine_clips`): each crop is one clip [keyframe,
    frames...] where every frame attends to the keyframe (anchor), the keyframe and every seen latent held
    to their fused values at every step; only the crop is encoded, denoised and decoded, and only its unseen
    pixels are pasted back."""
    refiner = Refiner.of(parts, backbone)
    clips = refine_clips(fused, backbone.vae_scale_factor, unet_multiple(backbone))
    steps = len(refiner.timesteps)
    progress("refine", 0, len(clips) * steps)
    for number, clip in enumerate(clips):
        done = number * steps

        def report(index: int, done: int = done) -> None:
            progress("refine", done + index + 1, len(clips) * steps)

        decoded = refiner.run(np.stack([out[clip.key], *(out[f] for f in clip.members)]), clip, fused, report)
        paste(out, clip, fused, decoded, backbone.vae_scale_factor)


@dataclass(frozen=True)
class Refiner:
    """What every re-diffusion of a request shares: the parts, the backbone, the sampler and its timesteps
    (the last `keyframe_refine` share of the schedule) and the guidance."""

    parts: EditParts
    backbone: Backbone
    scheduler: SchedulerMixin
    timesteps: torch.Tensor
    guidance: Guidance

    @classmethod
    def of(cls, parts: EditParts, backbone: Backbone) -> Refiner:
        config = parts.edit
        scheduler, timesteps = refine_schedule(parts, backbone)
        text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
        return cls(parts, backbone, scheduler, timesteps, sampling.Guidance(text, config.guidance))

    @property
    def draws(self) -> bool:
        """Whether the first step starts from at least REFINE_MIN_NOISE of noise. The last share of a short
        schedule can be its final step alone (10 steps, share 0.1: t = 1, noise std 0.04), whose DDIM step
        returns the latents it was given: the crop then goes through the autoencoder alone, without the
        keyframe's encode and the guided UNet call that would change nothing."""
        return (1 - sampling.alpha_bar(self.scheduler, self.timesteps[0])) ** 0.5 >= REFINE_MIN_NOISE

    def run(self, frames: np.ndarray, clip: RefineClip, fused: dict[int, Fused], report: Callable[[int], None]) -> np.ndarray:
        """The members' crops re-diffused: `frames` are the whole keyframe then members; returns the decoded crops."""
        backbone, engine, seed = self.backbone, self.parts.engine, self.parts.edit.seed
        scale, box = backbone.vae_scale_factor, clip.box
        if not self.draws:
            clean = sampling.encode_frames(backbone, frames[1:, box.rows(scale), box.columns(scale)], engine.chunk)
            for index in range(len(self.timesteps)):
                report(index)
            return sampling.decode_latents(backbone, clean, engine.chunk)
        clean = sampling.encode_frames(backbone, frames[:, box.rows(scale), box.columns(scale)], engine.chunk)
        masks = [np.zeros(clean.shape[-2:], bool)]
        masks += [latent_mask(fused[f].unseen, scale)[box.rows(), box.columns()] for f in clip.members]
        keep = torch.from_numpy(~np.stack(masks))[:, None].to(clean.device)  # (n, 1, h, w): held latents
        whole = (len(frames), clean.shape[1], frames.shape[1] // scale, frames.shape[2] // scale)
        noise = sampling.shared_noise(whole, seed, clean.device, clean.dtype)[..., box.rows(), box.columns()]
        noising = backbone.scheduler()
        following = [*(int(t) for t in self.timesteps[1:]), None]

        def hold(index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
            report(index)
            nxt = following[index]
            target = clean if nxt is None else sampling.noise_to_timestep(noising, clean, noise, nxt)
            return torch.where(keep, target.to(latents.dtype), latents)

        start = sampling.noise_to_timestep(noising, clean, noise, self.timesteps[0])
        plan = sampling.plan_frames(len(frames), engine.chunk, "first")
        plan = plan.with_calls(step_cache=parse_step_caches(engine.step_cache))
        latents = sampling.denoise(
            backbone,
            sampling.Schedule(self.scheduler, self.timesteps),
            start,
            self.guidance,
            plan,
            sampling.LoopHooks(callback=hold, seed=seed),
        )
        return sampling.decode_latents(backbone, latents, engine.chunk, tuple(range(1, len(frames))))


def paste(out: np.ndarray, clip: RefineClip, fused: dict[int, Fused], decoded: np.ndarray, scale: int) -> None:
    """Blend each member's decoded crop into `out` at its unseen pixels (`composite_mask`), in place."""
    rows, columns = clip.box.rows(scale), clip.box.columns(scale)
    for crop, frame in zip(decoded, clip.members):
        soft = composite_mask(fused[frame].unseen)[rows, columns, None]
        blended = soft * crop.astype(np.float32) + (1 - soft) * out[frame, rows, columns].astype(np.float32)
        out[frame, rows, columns] = np.clip(blended.round(), 0, 255).astype(np.uint8)


def composite_mask(unseen: np.ndarray) -> np.ndarray:
    """(H, W) float weight of the refined pixels: the unseen pixels only, so every seen pixel stays the
    warped keyframes' own exactly (the re-diffused latents around a hole reach far past it: one latent
    pixel is 8 x 8 image pixels); an unseen pixel next to a seen one takes half of each, so no seam shows."""
    pixels = unseen.astype(np.float32)
    if not unseen.any():
        return pixels
    inner = cv2.erode(pixels, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return pixels * (0.5 + 0.5 * inner)
