"""Keyframes, then propagation (after Rerender-A-Video, FRESCO and TokenFlow).

1. Choose keyframes: every N-th frame, or `auto` where the last keyframe stops seeing the frame; a cut
   starts one either way.
2. Edit the keyframes jointly with the core (`editing.core.edit_keyframes`).
3. Propagate: warp the two nearest edited keyframes along the source's chained optical flow, blended by
   distance and validity, in pixel space.
4. Refine what no keyframe sees with a few low-noise steps, the seen pixels held; carry what was made
   forward along the flow so a revealed region is made once. How and why: docs/consistency.md.
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

if TYPE_CHECKING:
    from .context import EditParts, ProgressFn, StageTimer
    from .models import Backbone

AUTO_UNSEEN = 0.15  # auto keyframes: a new one where this share of a frame is unseen from the last
AUTO_MAX_GAP = 16  # auto keyframes: at most this many frames apart
CUT_UNSEEN = 0.8  # a frame this much of which its previous frame cannot see is a cut: it starts a keyframe (every N too)
MATCH_LEVELS = 8.0  # a pixel failing the forward-backward check is still valid where its source colour and the one its flow points at differ by at most this (mean of RGB, 8-bit)
REFINE_DILATE = 1  # latent pixels added around each disoccluded latent pixel


@dataclass(frozen=True)
class ClipFlows:
    """Optical flow of each consecutive pair, both ways, each with its own validity mask."""

    backward: np.ndarray  # (N-1, H, W, 2): frame i+1 at x came from frame i at x + backward[i](x)
    forward: np.ndarray  # (N-1, H, W, 2): frame i at x moves to frame i+1 at x + forward[i](x)
    backward_valid: np.ndarray  # (N-1, H, W) bool, pixels of frame i+1
    forward_valid: np.ndarray  # (N-1, H, W) bool, pixels of frame i
    still: np.ndarray | None = None  # (N, H, W) bool: each frame's still background (editing.still), its flow held at zero


def clip_flows(frames: np.ndarray) -> ClipFlows:
    """DIS flow of the source clip's consecutive pairs with validity both ways. A pixel is valid where the
    forward-backward check passes or, failing it, where the source's colour there and the one its flow
    points at agree within MATCH_LEVELS: in a flat region (snow, sky, a plain background) the flow is
    ambiguous and fails the check, but warping along it moves like colour onto like. A disoccluded pixel
    fails both, as the colour its flow points at is the occluder's. On a still background (flat regions
    reaching the image's edge while the camera stands: `editing.still`) the flow is held at zero, not
    the moving neighbour's that DIS fills in; what an object uncovers there then fails both checks."""
    from .flows import colour_match, consistent, source_flows
    from .still import extend_moving, hold_still, mend_edges, still_masks

    flows = source_flows(frames, colour_candidates=True)
    still = still_masks(frames, flows.backward, flows.forward)
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
    return ClipFlows(backward, forward, backward_valid, forward_valid, still)


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
            from .still import extend_moving

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
            new = cut or frame - keys[-1] >= AUTO_MAX_GAP or 1 - chain(flows, frame, keys[-1]).valid.mean() > AUTO_UNSEEN
        if new:
            keys.append(frame)
    return tuple(keys)


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


def fuse_frame(frame: int, keyframes: Keyframes, flows: ClipFlows) -> Fused:
    """Warp the nearest edited keyframes on each side onto `frame` and blend them: weight of each is its
    temporal closeness (1 - distance / gap) times the validity of the path to it."""
    keys = keyframes.indices
    left, right = neighbours(frame, keys)
    sides = [k for k in (left, right) if k is not None]
    warped, weights = [], []
    for key in sides:
        path = chain(flows, frame, key)
        image = keyframes.frames[keys.index(key)].astype(np.float32)
        warped.append(remap(image, path.x, path.y))
        closeness = 1.0 if len(sides) == 1 else 1.0 - abs(frame - key) / (right - left)
        weights.append((closeness, path.valid & ~_left_behind(flows, frame, key, path)))
    seen_weight = sum(c * v.astype(np.float32) for c, v in weights)
    guess_weight = sum(c for c, _ in weights)  # where no path is trusted: the distance blend, refined later
    seen = seen_weight > 0
    numerator = sum(np.where(v, c, 0.0)[..., None] * w for (c, v), w in zip(weights, warped))
    guess = sum(c * w for (c, _), w in zip(weights, warped)) / guess_weight
    fused = np.where(seen[..., None], numerator / np.maximum(seen_weight, 1e-6)[..., None], guess)
    fused = np.clip(fused.round(), 0, 255).astype(np.uint8)
    if flows.still is not None:  # what an object uncovered on a still background: from that background, not the object
        from .still import fill_still

        fused = fill_still(fused, ~seen & flows.still[frame], seen & flows.still[frame])
    nearest = min(sides, key=lambda k: (abs(frame - k), k))
    return Fused(fused, ~seen, nearest)


def _left_behind(flows: ClipFlows, frame: int, key: int, path: Chain) -> np.ndarray:
    """(H, W) bool: pixels of `frame`'s still background whose path ends off the keyframe's: on the object
    or on the rim beside it that moves with it (`editing.still.rim`, where the edited object bleeds into
    the background). The object has moved on, so what the keyframe shows there is not this background."""
    if flows.still is None:
        return np.zeros(path.valid.shape, bool)
    lands = remap(flows.still[key].astype(np.uint8), path.x, path.y, nearest=True).astype(bool)
    return flows.still[frame] & ~lands


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
        fused = {}
        for done, frame in enumerate(others):
            fused[frame] = fuse_frame(frame, keyframes, flows)
            out[frame] = fused[frame].frame
            progress("propagate", done + 1, len(others))
    holes = [f for f in others if fused[f].unseen.any()]
    rediffused = {f: made for f, made in ((f, _to_refine(fused[f], flows, f)) for f in holes) if made.unseen.any()}
    if rediffused and parts.engine.keyframe_refine > 0:
        with stage("refine"):
            refine(out, keyframes, rediffused, parts, backbone, progress)
    if holes:
        with stage("propagate"):
            carry_forward(out, {f: fused[f].unseen for f in holes}, flows)
    return out


def _to_refine(made: Fused, flows: ClipFlows, frame: int) -> Fused:
    """What of a fused frame is re-diffused: its unseen pixels, less those on a still background, which
    keep their fill from that background (`editing.still.fill_still`). Re-diffused, they would take the
    colour of the object that uncovered them: a latent pixel is 8 x 8 image pixels, and the object's own
    pixels sit in the same ones."""
    if flows.still is None:
        return made
    return dataclasses.replace(made, unseen=made.unseen & ~flows.still[frame])


def carry_forward(out: np.ndarray, unseen: dict[int, np.ndarray], flows: ClipFlows) -> None:
    """What no keyframe sees is made once, where it first appears, then carried: in frame order, each
    unseen pixel that the previous frame sees (its one-hop flow passes the forward-backward check) takes
    the previous output frame's pixel along that flow, so a disoccluded region is the same content moving
    with the scene instead of a new re-diffusion in every frame (in place)."""
    height, width = out.shape[1:3]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for frame in sorted(unseen):
        if frame == 0:
            continue
        hop, valid = flows.backward[frame - 1], flows.backward_valid[frame - 1]
        sx, sy = x + hop[..., 0], y + hop[..., 1]
        take = unseen[frame] & valid & (sx >= -0.5) & (sx <= width - 0.5) & (sy >= -0.5) & (sy <= height - 0.5)
        if take.any():
            carried = remap(out[frame - 1].astype(np.float32), sx, sy)
            out[frame][take] = np.clip(carried[take].round(), 0, 255).astype(np.uint8)


def refine(
    out: np.ndarray, keyframes: Keyframes, fused: dict[int, Fused], parts: EditParts, backbone: Backbone, progress: ProgressFn
) -> None:
    """Re-diffuse the unseen regions of the fused frames in `out` (in place), grouped by nearest keyframe:
    each group is one clip [keyframe, frames...] where every frame attends to the keyframe (anchor), the
    keyframe and every seen latent held to their fused values at every step."""
    from . import sampling
    from .stepcache import parse_step_caches

    config, engine = parts.edit, parts.engine
    scale = backbone.vae_scale_factor
    scheduler = backbone.scheduler(config.sampler)
    steps = max(1, math.ceil(config.steps * engine.keyframe_refine))
    timesteps = sampling.sampling_timesteps(scheduler, config.steps, steps / config.steps)
    text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
    guidance = sampling.Guidance(text, config.guidance)
    groups: dict[int, list[int]] = {}
    for frame, made in sorted(fused.items()):
        groups.setdefault(made.nearest, []).append(frame)
    total = len(groups) * len(timesteps)
    progress("refine", 0, total)
    for number, (key, members) in enumerate(groups.items()):
        clip = np.stack([out[key], *(out[f] for f in members)])
        clean = sampling.encode_frames(backbone, clip, engine.chunk)
        masks = [np.zeros(clean.shape[-2:], bool)] + [latent_mask(fused[f].unseen, scale) for f in members]
        keep = torch.from_numpy(~np.stack(masks))[:, None].to(clean.device)  # (n, 1, h, w): held latents
        noise = sampling.shared_noise(tuple(clean.shape), config.seed, clean.device, clean.dtype)
        noising = backbone.scheduler()
        following = [*(int(t) for t in timesteps[1:]), None]

        # the loop's step callback, called only within this iteration (so the loop variables it reads are this member's)
        def hold(index: int, timestep: int, latents: torch.Tensor, done=number * len(timesteps)) -> torch.Tensor:  # noqa: B008
            progress("refine", done + index + 1, total)
            nxt = following[index]  # noqa: B023
            target = clean if nxt is None else sampling.noise_to_timestep(noising, clean, noise, nxt)  # noqa: B023
            return torch.where(keep, target.to(latents.dtype), latents)  # noqa: B023

        start = sampling.noise_to_timestep(noising, clean, noise, timesteps[0])
        plan = sampling.plan_frames(len(clip), engine.chunk, "first").with_calls(step_cache=parse_step_caches(engine.step_cache))
        latents = sampling.denoise(
            backbone,
            sampling.Schedule(scheduler, timesteps),
            start,
            guidance,
            plan,
            sampling.LoopHooks(callback=hold, seed=config.seed),
        )
        decoded = sampling.decode_latents(backbone, latents, engine.chunk, tuple(range(1, len(clip))))
        for row, frame in enumerate(members):
            soft = composite_mask(fused[frame].unseen)
            blended = soft[..., None] * decoded[row].astype(np.float32) + (1 - soft[..., None]) * out[frame].astype(np.float32)
            out[frame] = np.clip(blended.round(), 0, 255).astype(np.uint8)


def composite_mask(unseen: np.ndarray) -> np.ndarray:
    """(H, W) float weight of the refined pixels: the unseen pixels only, so every seen pixel stays the
    warped keyframes' own exactly (the re-diffused latents around a hole reach far past it: one latent
    pixel is 8 x 8 image pixels); an unseen pixel next to a seen one takes half of each, so no seam shows."""
    pixels = unseen.astype(np.float32)
    if not unseen.any():
        return pixels
    inner = cv2.erode(pixels, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    return pixels * (0.5 + 0.5 * inner)
