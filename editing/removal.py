"""Object removal: fill the hole from the frames that see behind it, diffuse only what none of them shows.

1. **Complete the flow.** Inside the hole the source's flow is the removed object's motion, not the
   background's; each flow field is completed inside the hole from its values around it (OpenCV's
   Telea inpainting of each flow component), so the hole follows the background's motion (a pan, a
   still scene), as flow-guided video inpainting does (FGVC, ProPainter's flow completion).
2. **Fill from frames.** Each hole pixel is followed along the completed flows, one frame at a time,
   forward and backward, until it lands on a pixel that the other frame shows outside its own hole
   and whose own flow moves like the background (only across the edge where it lies on one: along
   stripes the flow is not observed); it takes that frame's colour there (the nearest such frame in
   time; both directions averaged on a tie). A motion fitted to the flow is kept only where it explains
   the colours around the hole better than standing still.
3. **Diffuse the rest.** Pixels no frame shows are made by an inpainting model (`--inpaint-model`,
   diffusers' 9-channel SD inpainting UNet through `StableDiffusionInpaintPipeline`) or, by default,
   by blended latent diffusion with the backbone prompted with the background's description (the
   prompt): every latent outside them held to the filled clip, noised to each step's timestep.

Every pixel outside the hole is the source's own, exactly. `Filled.counts` says how many hole pixels
came from other frames and how many were diffused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from PIL import Image

from . import sampling
from .core import EditedFrames, decoded_indices
from .errors import ConfigError
from .flows import motion_at, nearest_in, sample_points
from .held import HeldRegion, hold_callback, noised_states
from .keyframes import clip_flows

if TYPE_CHECKING:
    from .context import EditParts, ProgressFn, StageTimer
    from .flows import ClipFlows
    from .models import Backbone

log = logging.getLogger(__name__)

INPAINT_RADIUS = 3  # Telea's neighbourhood (pixels) for the rough fill diffusion starts from
FLOW_MARGIN = 1 / 16  # share of the short side around a hole skipped: DIS smooths the object's motion past its edge
FLOW_RING = 1 / 8  # share of the short side beyond the margin whose flow the background's motion is fitted to
MIN_RING = 12  # pixels the fit needs; fewer and all pixels away from the hole are used
BACKGROUND_TOLERANCE = 1.0  # pixels a landing point's own flow may differ from the background's motion
EDGE_COHERENCE = 0.8  # (l1 - l2) / (l1 + l2) of the structure tensor above which a pixel lies on an edge or stripe
EDGE_SIGMA = 1.5  # pixels: the structure tensor's Gaussian window
STILL_LEVELS = 2.0  # mean RGB error (8-bit) by which a fitted motion must explain the ring's colours better than none


@dataclass(frozen=True, eq=False)
class Ring:
    """Where the background's motion around a hole is fitted: `near` is the hole grown by the margin (its flow
    is the object's, smoothed), `far` the ring of pixels beyond it (the whole frame when the hole is empty)."""

    near: np.ndarray  # (H, W) bool
    far: np.ndarray  # (H, W) bool


def ring_around(hole: np.ndarray) -> Ring:
    """The margin and the fitting ring around `hole`, computed once per hole."""
    if not hole.any():
        return Ring(np.zeros(hole.shape, bool), np.ones(hole.shape, bool))
    side = min(hole.shape)
    margin, ring = max(1, round(side * FLOW_MARGIN)), max(2, round(side * FLOW_RING))
    near = cv2.dilate(hole.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    far = cv2.dilate(near.astype(np.uint8), np.ones((2 * ring + 1, 2 * ring + 1), np.uint8)) > 0
    return Ring(near, far & ~near)


def background_motion(flow: np.ndarray, around: Ring) -> np.ndarray:
    """(3, 2) affine coefficients of the background's motion around a hole (the whole frame when it is
    empty): flow(x, y) ~ [x, y, 1] @ coefficients, least squares on the flow in the ring `around` it,
    refitted on the better half so an object's motion smoothed into the ring (or
    another object in it) does not count: camera motion, zoom or stillness, continued through the hole."""
    ring = around.far
    if ring.sum() < MIN_RING:
        ring = ~around.near
    if ring.sum() < MIN_RING:
        return np.zeros((3, 2))
    ys, xs = np.nonzero(ring)
    design = np.stack([xs, ys, np.ones_like(xs)], -1).astype(np.float64)
    values = flow[ring].astype(np.float64)
    keep = np.ones(len(xs), bool)
    for _ in range(2):
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = np.abs(design @ coefficients - values).sum(-1)
        keep = residual <= np.median(residual)
    return coefficients


def checked_motion(
    coefficients: np.ndarray, frame: np.ndarray, other: np.ndarray, around: Ring, other_hole: np.ndarray
) -> np.ndarray:
    """`coefficients` (the background's motion from `frame` to `other`, fitted to the flow in `around`), or
    no motion where none explains the ring's colours as well (within STILL_LEVELS): along stripes or a
    straight edge the flow is not observed (the aperture problem), and a fit to it drifts where the
    background stands still."""
    if not coefficients.any():
        return coefficients
    ys, xs = np.nonzero(around.far)
    x, y = xs.astype(np.float64), ys.astype(np.float64)
    moved = motion_at(coefficients, x, y)
    mx, my = x + moved[:, 0], y + moved[:, 1]
    keep = _shown(other_hole, mx, my) & ~nearest_in(other_hole, x, y)
    if keep.sum() < MIN_RING:
        return coefficients
    colours = frame[ys[keep], xs[keep]].astype(np.float32)
    fitted = np.abs(sample_points(other, mx[keep], my[keep]) - colours).mean()
    still = np.abs(other[ys[keep], xs[keep]].astype(np.float32) - colours).mean()
    return coefficients if fitted + STILL_LEVELS < still else np.zeros_like(coefficients)


def complete_flow(flow: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow with its values inside `hole` and a margin around it replaced by the background's motion."""
    if not hole.any():
        return flow
    around = ring_around(hole)
    ny, nx = np.nonzero(around.near)
    out = flow.copy()
    out[around.near] = motion_at(background_motion(flow, around), nx.astype(np.float64), ny.astype(np.float64)).astype(np.float32)
    return out


def edge_normals(frame: np.ndarray) -> np.ndarray:
    """(H, W, 2) unit normal of the edge or stripe each pixel lies on, from the colour structure tensor
    (Gaussian window EDGE_SIGMA), zero where the pattern is not one-dimensional (a corner, a flat region):
    along an edge only the flow across it is observed."""
    image = frame.astype(np.float32)
    gx, gy = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    if image.ndim == 3:
        jxx, jxy, jyy = (gx * gx).sum(-1), (gx * gy).sum(-1), (gy * gy).sum(-1)
    else:
        jxx, jxy, jyy = gx * gx, gx * gy, gy * gy
    jxx, jxy, jyy = (cv2.GaussianBlur(j, (0, 0), EDGE_SIGMA) for j in (jxx, jxy, jyy))
    spread = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
    total = jxx + jyy
    coherent = spread > EDGE_COHERENCE * np.maximum(total, 1e-6)
    angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # the direction of the larger eigenvalue: across the edge
    return np.stack([np.cos(angle), np.sin(angle)], -1) * coherent[..., None]


@dataclass(frozen=True)
class Filled:
    """A clip with its holes filled from other frames where they show the background."""

    frames: np.ndarray  # (N, H, W, 3) uint8: the source outside the holes, filled colours inside
    unfilled: np.ndarray  # (N, H, W) bool: hole pixels no frame shows

    def counts(self, holes: np.ndarray) -> dict[str, int]:
        """Hole pixels filled from other frames and left to diffusion."""
        return {
            "hole_pixels": int(holes.sum()),
            "from_frames": int((holes & ~self.unfilled).sum()),
            "diffused": int(self.unfilled.sum()),
        }


def _shown(hole: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether positions (x, y) lie inside the frame with every pixel bilinear sampling reads outside `hole`."""
    height, width = hole.shape
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    x0 = np.clip(np.floor(x), 0, width - 1).astype(int)
    y0 = np.clip(np.floor(y), 0, height - 1).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    return inside & ~(hole[y0, x0] | hole[y0, x1] | hole[y1, x0] | hole[y1, x1])


def fill_from_frames(
    frames: np.ndarray, holes: np.ndarray, flows: ClipFlows | None = None, todo: np.ndarray | None = None
) -> Filled:
    """Fill each frame's hole with the background other frames show, followed along the background's motion
    around the holes. `flows` are the source's (editing.keyframes.clip_flows); `todo` (default: the holes)
    are the pixels still to fill, when part of the holes was filled already (then those parts can be read)."""
    frames = np.asarray(frames)
    count, height, width = holes.shape
    out = frames.copy()
    todo = holes if todo is None else todo
    unfilled = todo.copy()
    if count < 2 or not todo.any():
        return Filled(out, unfilled)
    flows = flows or clip_flows(frames)

    # the background's motion around each frame's hole: t -> t + 1 (forward[t]) and t -> t - 1 (backward[t - 1])
    rings = [ring_around(hole) for hole in holes]

    def motion(t: int, s: int, flow: np.ndarray) -> np.ndarray:
        return checked_motion(background_motion(flow, rings[t]), frames[t], frames[s], rings[t], holes[s])

    ahead = [motion(t, t + 1, flows.forward[t]) for t in range(count - 1)]
    behind = [None] + [motion(t, t - 1, flows.backward[t - 1]) for t in range(1, count)]

    normals: dict[int, np.ndarray] = {}

    def moves_like_background(s: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether the source's own flow at points of frame s agrees with the background's motion there:
        across the edge where the points lie on one, in both directions elsewhere."""
        flow, model = (flows.forward[s], ahead[s]) if s < count - 1 else (flows.backward[s - 1], behind[s])
        difference = sample_points(flow, x, y) - motion_at(model, x, y)
        if s not in normals:
            normals[s] = edge_normals(frames[s])
        normal = sample_points(normals[s], x, y)
        edge = np.hypot(normal[:, 0], normal[:, 1]) > 0.5
        across = np.abs((difference * normal).sum(-1)) / np.maximum(np.hypot(normal[:, 0], normal[:, 1]), 1e-6)
        return np.where(edge, across, np.abs(difference).max(-1)) <= BACKGROUND_TOLERANCE

    for t in range(count):
        rows, cols = np.nonzero(todo[t])
        if len(rows) == 0:
            continue
        found = {}
        for step in (1, -1):  # follow the pixels one frame at a time until each lands on background shown there
            x, y = cols.astype(np.float64), rows.astype(np.float64)
            alive = np.ones(len(rows), bool)
            colour = np.zeros((len(rows), 3), np.float32)
            distance = np.full(len(rows), np.inf)
            s = t
            while alive.any() and 0 <= s + step < count:
                moved = motion_at(ahead[s] if step > 0 else behind[s], x, y)
                x, y = x + moved[:, 0], y + moved[:, 1]
                s += step
                alive &= (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
                hit = alive & _shown(todo[s], x, y)
                if hit.any():  # a filled hole pixel is background by now; elsewhere the source must move like the background
                    hit[hit] = nearest_in(holes[s] & ~todo[s], x[hit], y[hit]) | moves_like_background(s, x[hit], y[hit])
                if hit.any():
                    colour[hit] = sample_points(frames[s], x[hit], y[hit])
                    distance[hit] = abs(s - t)
                    alive &= ~hit
            found[step] = (colour, distance)
        (ahead_colour, ahead_distance), (behind_colour, behind_distance) = found[1], found[-1]
        best = np.minimum(ahead_distance, behind_distance)
        seen = np.isfinite(best)
        use_ahead = (ahead_distance == best)[:, None].astype(np.float32)
        use_behind = (behind_distance == best)[:, None].astype(np.float32)
        mixed = (ahead_colour * use_ahead + behind_colour * use_behind) / np.maximum(use_ahead + use_behind, 1)
        out[t, rows[seen], cols[seen]] = np.rint(mixed[seen]).clip(0, 255).astype(np.uint8)
        unfilled[t, rows[seen], cols[seen]] = False
    return Filled(out, unfilled)


def rough_fill(frames: np.ndarray, unfilled: np.ndarray) -> np.ndarray:
    """Frames with the unfilled pixels painted from around them (Telea): the start diffusion refines."""
    out = frames.copy()
    for t in range(len(frames)):
        if unfilled[t].any() and not unfilled[t].all():
            out[t] = cv2.inpaint(frames[t], unfilled[t].astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
    return out


def diffuse_blended(
    frames: np.ndarray, unfilled: np.ndarray, parts: EditParts, backbone: Backbone, progress: ProgressFn
) -> np.ndarray:
    """The unfilled pixels made by the backbone, prompted with the background's description (the prompt):
    blended latent diffusion, every latent pixel away from them held to the filled frames noised to each step."""
    config, engine = parts.edit, parts.engine
    todo = [t for t in range(len(frames)) if unfilled[t].any()]
    start = rough_fill(frames, unfilled)
    clip = start[todo]
    scheduler = backbone.scheduler(config.sampler)
    timesteps = sampling.sampling_timesteps(scheduler, config.steps, config.strength)
    text = sampling.encode_text(backbone, config.prompt, config.negative_prompt, config.uses_guidance)
    clean = sampling.encode_frames(backbone, clip, engine.chunk)
    noise = sampling.shared_noise(tuple(clean.shape), config.seed, clean.device, clean.dtype)
    noising = backbone.scheduler()
    region = HeldRegion(unfilled[todo].astype(np.float32))

    def report(index: int, timestep: int, latents: torch.Tensor) -> None:
        progress("denoise", index + 1, len(timesteps))

    hold = hold_callback(region, backbone.vae_scale_factor, noised_states(noising, clean, noise, timesteps), report)
    plan = sampling.plan_frames(
        len(clip), engine.chunk, engine.attention if engine.attention != "tokenflow" else "first", engine.window
    )
    latents = sampling.denoise(
        backbone,
        sampling.Schedule(scheduler, timesteps),
        sampling.noise_to_timestep(noising, clean, noise, timesteps[0]),
        sampling.Guidance(text, config.guidance),
        plan,
        sampling.LoopHooks(callback=hold, seed=config.seed),
    )
    decoded = sampling.decode_latents(backbone, latents, engine.chunk)
    out = frames.copy()
    for row, t in enumerate(todo):
        out[t][unfilled[t]] = decoded[row][unfilled[t]]
    return out


def load_inpainting(spec: str, backbone: Backbone):
    """diffusers' SD inpainting pipeline (a 9-channel UNet: latents, mask, masked-image latents) from a Hub id or folder."""
    # here, not at the top: diffusers is heavy and only object removal needs it
    from diffusers import StableDiffusionInpaintPipeline

    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            spec, torch_dtype=backbone.dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"inpaint_model {spec} cannot be loaded (no inpainting checkpoint there, and the Hugging Face Hub is "
            f"not reachable to download it): leave --inpaint-model out to diffuse with the backbone"
        ) from exc
    if pipe.unet.config.in_channels != 9:
        raise ConfigError(
            f"inpaint_model {spec} has a UNet of {pipe.unet.config.in_channels} input channels, not an inpainting UNet's 9"
        )
    return pipe.to(backbone.device)


def diffuse_inpainting(
    frames: np.ndarray, unfilled: np.ndarray, parts: EditParts, backbone: Backbone, progress: ProgressFn
) -> np.ndarray:
    """The unfilled pixels made by the inpainting model, frame by frame, with the same seed."""
    pipe = load_inpainting(parts.masking.inpaint_model, backbone)
    config = parts.edit
    out = frames.copy()
    todo = [t for t in range(len(frames)) if unfilled[t].any()]
    height, width = frames.shape[1:3]
    for done, t in enumerate(todo):
        image = pipe(
            prompt=config.prompt, negative_prompt=config.negative_prompt or None, image=Image.fromarray(frames[t]),
            mask_image=Image.fromarray(unfilled[t].astype(np.uint8) * 255), height=height, width=width,
            num_inference_steps=config.steps, guidance_scale=config.guidance,
            generator=torch.Generator("cpu").manual_seed(config.seed),
        ).images[0]  # fmt: skip
        out[t][unfilled[t]] = np.asarray(image.convert("RGB"))[unfilled[t]]
        progress("denoise", done + 1, len(todo))
    return out


def remove_object(frames: np.ndarray, mask: Any, parts: EditParts, backbone: Backbone, progress: ProgressFn, timer: StageTimer):
    """The clip with what `mask` (editing.region.ClipMask) covers removed: each hole filled from the frames
    that show its background; then, while some pixels are shown by no frame, the frame with most of them is
    diffused and what it made is carried to the others the same way (one made background moving with the
    scene, not one per frame)."""
    holes = mask.grown
    with timer.stage("propagate"):
        progress("propagate", 0, 1)
        flows = clip_flows(frames) if len(frames) > 1 else None
        filled = fill_from_frames(frames, holes, flows)
        progress("propagate", 1, 1)
    counts = filled.counts(holes)
    out, todo, made = filled.frames, filled.unfilled, []
    diffuse = diffuse_inpainting if parts.masking.inpaint_model else diffuse_blended
    while todo.any():
        key = int(todo.reshape(len(todo), -1).sum(1).argmax())
        with timer.stage("denoise"):
            out[key] = diffuse(out[[key]], todo[[key]], parts, backbone, progress)[0]
        made.append(key)
        todo = todo.copy()
        todo[key] = False
        with timer.stage("propagate"):
            again = fill_from_frames(out, holes, flows, todo)
        out, todo = again.frames, again.unfilled
    counts["diffused_frames"] = sorted(made)
    log.info(
        "removal: %d hole pixels, %d filled from other frames, %d shown by no frame (made in frames %s)",
        counts["hole_pixels"],
        counts["from_frames"],
        counts["diffused"],
        made,
    )
    wanted = decoded_indices(parts.decode_frames, len(frames)) or tuple(range(len(frames)))
    return EditedFrames(out[list(wanted)], seconds=timer.seconds, removal=counts)
