"""Edit quality with ground truth: the product's edits of generated shapes clips, judged against the renders.

    python -m editing eval --shapes --out DIR [--settings a,b] [--clips N] [--clip-kinds k,..] [--steps N] [--model shapes]

A fixed, seeded set of clips (8 frames at 64 px) is written to lossless mp4 and edited through
`edit_video(EditRequest)` (requests built by the CLI's own mapping) under every pipeline setting. Clips
0-3 are the original set (one or two moving shapes on a plain background); from clip 4 on the kinds
cycle through textured (striped or gradient objects on striped or gradient backgrounds), pan (the
camera moves: the whole scene shifts), occlusion (an object passing behind another) and plain, so the
first four clips alone reproduce the earlier tables. Each cell of the table is the mean over clips with a
seeded bootstrap interval over clips; settings are ranked only where the intervals separate. Four edits derive from each scene's caption:
  colour      the first object's colour swapped ("a red circle" -> "a blue circle"), a local edit;
  shape       the first object's shape swapped ("a red circle" -> "a red square"), a local edit;
  background  the background's colour swapped, the objects kept;
  add         the word "striped" added before the background ("on a green background" ->
              "on a striped green background"): a refine edit whose asked attribute is the pattern
              (a background that is striped already is asked to become a gradient).
Metrics (pure functions below): edit accuracy (share of frames where the judge sees the asked attribute:
the first object's colour or shape in the found region overlapping its source mask, or the background's
colour or pattern), structure IoU (found objects vs the source's object masks), background PSNR outside
the objects (dilated by one pixel; local edits), warp error along the TRUE motion, object colour
flicker, and seconds per frame. The CI slice's stated values live in stated.json beside this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from editing.errors import ConfigError, EditingError
from editing.metrics import psnr

from . import judge as judging
from .propagation import KIND_EDITS, PROPAGATION_BASE, PROPAGATION_KINDS, propagation_clip, propagation_measures
from .world import CLIP_KINDS, PALETTE, SHAPES, Clip, Scene, SceneSampler, kind_clip, make_clip, random_motion

log = logging.getLogger(__name__)

EDIT_KINDS = ("colour", "shape", "background", "add")
LOCAL_KINDS = ("colour", "shape")
ADDED_WORD = "striped"  # the add-a-word edit: "on a green background" -> "on a striped green background"
BASE_SEED = 1000  # clip i is drawn from seed BASE_SEED + i
FRAMES, SIZE, FPS = 8, 64, 8
GUIDANCE = 5.0  # the shapes model's text-to-image guidance (shapes_world.quality)
SDEDIT_STRENGTH = 0.7  # settings without inversion noise the source to this share of the steps
TUNE_STEPS, TUNE_LR = 40, 1e-4
STATED_PATH = Path(__file__).with_name("stated.json")
REFERENCE = "source"  # the row measuring the unedited source frames as if they were an output
IDEAL = "ideal"  # the row measuring perfect edits (the target scenes rendered with the clip's motion): the judge's ceiling
ORIGINAL_CLIPS = 4  # clips 0-3: the original plain set (the earlier tables' clips)
DEFAULT_CLIPS = 16
BOOTSTRAP_RESAMPLES, BOOTSTRAP_LEVEL, BOOTSTRAP_SEED = 2000, 0.95, 0
ALL_CLIP_KINDS = (*CLIP_KINDS, *PROPAGATION_KINDS)  # the propagation kinds (clips PROPAGATION_BASE on) only when asked for


# ---------------------------------------------------------------- clips and edits


def clip_kind(index: int) -> str:
    """The kind of clip `index`: plain for the original four, then textured, pan, occlusion, plain in turn;
    from PROPAGATION_BASE on, the propagation kinds (shapes_world.propagation) in turn."""
    if index < 0:
        raise ValueError(f"clip index must be >= 0; got {index}")
    if index >= PROPAGATION_BASE:
        return PROPAGATION_KINDS[(index - PROPAGATION_BASE) % len(PROPAGATION_KINDS)]
    cycle = (*CLIP_KINDS[1:], "plain")
    return "plain" if index < ORIGINAL_CLIPS else cycle[(index - ORIGINAL_CLIPS) % len(cycle)]


def clip_indices(count: int, kinds: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """The first `count` clips of the fixed set, or the first `count` of the given kinds."""
    if kinds is None:
        return tuple(range(count))
    unknown = sorted(set(kinds) - set(ALL_CLIP_KINDS))
    if unknown:
        raise ConfigError(f"unknown clip kind {unknown[0]!r}; choose from {', '.join(ALL_CLIP_KINDS)}")
    chosen, index = [], 0 if set(kinds) - set(PROPAGATION_KINDS) else PROPAGATION_BASE
    while len(chosen) < count:
        if clip_kind(index) in kinds:
            chosen.append(index)
        index += 1
    return tuple(chosen)


def benchmark_clip(index: int, frames: int = FRAMES, size: int = SIZE) -> Clip:
    """Clip `index` of the fixed set, of kind `clip_kind(index)`; a plain clip is one or two shapes moving
    and turning on a plain background (the original set's recipe)."""
    kind = clip_kind(index)
    if kind in PROPAGATION_KINDS:
        return propagation_clip(kind, BASE_SEED + index, frames, size)
    if kind != "plain":
        return kind_clip(kind, BASE_SEED + index, frames, size)
    rng = np.random.default_rng(BASE_SEED + index)
    scene = SceneSampler(size=size, split="all", max_objects=2, backgrounds=("plain",)).scene(rng)
    moved = [random_motion(rng, obj, frames, size, ("move", "turn")) for obj in scene.objects]
    scene = dataclasses.replace(scene, objects=tuple(obj for _, obj in moved))
    return make_clip(scene, tuple(m for m, _ in moved), frames)


@dataclass(frozen=True)
class ShapeEdit:
    """One edit of a clip: the source caption, the scene it asks for, and the words marking the edited region."""

    kind: str
    source_prompt: str
    target: Scene  # the source scene with the asked change: its caption is the prompt, its render the ideal output
    blend_words: tuple[str, ...] = ()
    prompt_edit: str = "swap"
    subject: int = 0  # the object the local edits change (and whose colour flicker is measured)

    def __post_init__(self):
        if self.kind not in EDIT_KINDS:
            raise ValueError(f"edit kind must be one of {', '.join(EDIT_KINDS)}; got {self.kind}")

    @property
    def prompt(self) -> str:
        return self.target.caption()

    @property
    def local(self) -> bool:
        """Whether the edit should leave the background as it was."""
        return self.kind in LOCAL_KINDS


def _next(options, current: str, avoid: set[str]) -> str:
    """The first option after `current` (cyclically) not in `avoid`."""
    options = list(options)
    start = options.index(current)
    return next(o for o in options[start + 1 :] + options[:start] if o not in avoid and o != current)


def derive_edits(clip: Clip) -> tuple[ShapeEdit, ...]:
    """The four edits of a clip's scene (colour, shape, background, add a word), deterministic in the
    scene; the local ones change the clip's subject (the first object, or the front one of an occlusion clip)."""
    scene, subject = clip.scene, clip.subject
    first, background = scene.objects[subject], scene.background
    used = {o.colour for o in scene.objects} | {background.colour}
    shape = _next(SHAPES, first.shape, set())

    def with_first(**change) -> Scene:
        objects = list(scene.objects)
        objects[subject] = dataclasses.replace(first, **change)
        return dataclasses.replace(scene, objects=tuple(objects))

    def with_background(**change) -> Scene:
        return dataclasses.replace(scene, background=dataclasses.replace(background, **change))

    source = scene.caption()
    pattern = ADDED_WORD if background.kind != ADDED_WORD else "gradient"  # a striped background gets a gradient instead
    return (
        ShapeEdit("colour", source, with_first(colour=_next(PALETTE, first.colour, used)), (first.shape,), subject=subject),
        ShapeEdit(
            "shape",
            source,
            with_first(shape=shape, angle=0.0 if shape == "circle" else first.angle),
            (first.shape, shape),
            subject=subject,
        ),
        ShapeEdit(
            "background",
            source,
            with_background(colour=_next(PALETTE, background.colour, used)),
            ("background",),
            subject=subject,
        ),
        ShapeEdit("add", source, with_background(kind=pattern), ("background",), "refine", subject),
    )


def write_lossless(path: str | Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Write frames to an mp4 the product reads back bit-exactly (H.264 RGB, crf 0)."""
    import av

    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264rgb", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        stream.options = {"crf": "0", "preset": "veryfast"}
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return Path(path)


# ---------------------------------------------------------------- metrics (pure functions)


def _matched_region(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The object the judge finds in `image` that overlaps `mask` most (None when none overlaps)."""
    regions = judging.find_objects(image)
    overlaps = [int((region & mask).sum()) for region in regions]
    return regions[int(np.argmax(overlaps))] if overlaps and max(overlaps) > 0 else None


def frame_correct(image: np.ndarray, target_mask: np.ndarray, edit: ShapeEdit) -> bool:
    """Whether one output frame shows the attribute the edit asks for."""
    asked, background = edit.target.objects[edit.subject], edit.target.background
    if edit.kind in ("background", "add"):
        verdict = judging.judge_background(image)
        return verdict.colour == background.colour if edit.kind == "background" else verdict.kind == background.kind
    region = _matched_region(image, target_mask)
    if region is None:
        return False
    seen = judging.judge_object(image, region)
    return seen.colour == asked.colour if edit.kind == "colour" else seen.shape == asked.shape


def edit_accuracy(frames: np.ndarray, masks: np.ndarray, edit: ShapeEdit) -> float:
    """Share of frames showing the asked attribute; masks are the source's (T, objects, H, W), the edit's subject edited."""
    return float(np.mean([frame_correct(image, mask[edit.subject], edit) for image, mask in zip(frames, masks)]))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def structure_iou(frames: np.ndarray, masks: np.ndarray) -> float:
    """Mean over frames of the IoU between the objects the judge finds and the source's object masks."""
    ious = []
    for image, mask in zip(frames, masks):
        found = judging.find_objects(image)
        ious.append(mask_iou(np.any(found, axis=0) if found else np.zeros(mask.shape[1:], bool), mask.any(axis=0)))
    return float(np.mean(ious))


def background_psnr(source: np.ndarray, output: np.ndarray, masks: np.ndarray, grow: int = 1) -> float:
    """PSNR (8-bit) over every frame's pixels outside the source's objects grown by `grow` pixels."""
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    outside = np.stack([cv2.dilate(m.any(axis=0).astype(np.uint8), kernel) == 0 for m in masks])
    return psnr(source[outside], output[outside]) if outside.any() else math.nan


def label_map(masks: np.ndarray) -> np.ndarray:
    """(H, W) int map: the index of the object visible at each pixel, -1 for the background."""
    return np.where(masks.any(axis=0), np.argmax(masks, axis=0), -1)


def true_warp_errors(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per pair t -> t+1: mean |frame_{t+1}(x + flow_t(x)) - frame_t(x)| (8-bit, bilinear) over pixels of frame t
    on a moving object whose true destination lies inside the image and on the same object (no occlusions)."""
    height, width = frames.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    errors = []
    for t in range(len(frames) - 1):
        map_x, map_y = grid_x + flow[t, ..., 0].astype(np.float32), grid_y + flow[t, ..., 1].astype(np.float32)
        moved = cv2.remap(frames[t + 1].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
        rows, cols = np.clip(np.round(map_y), 0, height - 1).astype(int), np.clip(np.round(map_x), 0, width - 1).astype(int)
        labels = label_map(masks[t])
        valid = inside & (labels >= 0) & (label_map(masks[t + 1])[rows, cols] == labels)
        error = np.abs(moved - frames[t].astype(np.float32)).mean(axis=-1)
        errors.append(float(error[valid].mean()) if valid.any() else math.nan)
    return np.array(errors)


def colour_flicker(frames: np.ndarray, masks: np.ndarray, shrink: int = 1, subject: int = 0) -> float:
    """Std over frames of one object's mean colour (inside its source mask shrunk by `shrink` px), mean of R, G, B."""
    kernel = np.ones((2 * shrink + 1, 2 * shrink + 1), np.uint8)
    means = []
    for image, mask in zip(frames, masks):
        core = cv2.erode(mask[subject].astype(np.uint8), kernel).astype(bool)
        core = core if core.any() else mask[subject]
        means.append(image[core].reshape(-1, 3).astype(np.float64).mean(axis=0) if core.any() else np.full(3, np.nan))
    return float(np.nanstd(np.stack(means), axis=0).mean())


def measure(source: Clip, output: np.ndarray, edit: ShapeEdit) -> dict:
    """Every ground-truth metric of one edited clip (the warp error also per frame pair, for the docs' plots)."""
    pairs = true_warp_errors(output, source.flow, source.masks)
    return {
        "edit_accuracy": edit_accuracy(output, source.masks, edit),
        "structure_iou": structure_iou(output, source.masks),
        "background_psnr": background_psnr(source.frames, output, source.masks) if edit.local else None,
        "warp_error": float(np.nanmean(pairs)),
        "warp_errors": [None if math.isnan(v) else round(float(v), 4) for v in pairs],
        "flicker": colour_flicker(output, source.masks, subject=edit.subject),
    }


# ---------------------------------------------------------------- pipeline settings

# Each setting is the edit command's options (as the CLI parses them) over the benchmark's defaults:
# DDIM inversion with the source caption at strength 1, guidance GUIDANCE, 64 px, every frame.
SETTINGS: dict[str, dict] = {
    "img2img": {"attention": "none", "inversion": "none", "strength": SDEDIT_STRENGTH},  # per-frame baseline
    "first": {"attention": "first"},
    "sparse-causal": {"attention": "sparse-causal"},
    "full": {"attention": "full"},
    "window": {"attention": "window"},
    "sparse-causal-noinv": {"attention": "sparse-causal", "inversion": "none", "strength": SDEDIT_STRENGTH},
    "blend": {"attention": "sparse-causal", "attention_edit": True},
    "controlnet": {"attention": "sparse-causal", "control": ["canny"]},
    "tuned": {"attention": "sparse-causal", "tune": True},
    "flow": {"attention": "flow"},  # FLATTEN-style trajectory attention along the source's optical flow
    "full-merge": {"attention": "full", "token_merge": 0.5},  # VidToMe-style token merging across frames
    "first-bank": {"attention": "first", "chunk": 4, "feature_bank": 4},  # two chunks, the second attends to the first's frames
    "first-dpm": {"attention": "first", "sampler": "dpm-solver++"},  # the default mode with DPM-Solver++
    "tokenflow": {
        "attention": "tokenflow",
        "window": 4,
    },  # TokenFlow: 2 keyframes per step, the other frames propagated from them
    "first-keyframes-4": {"attention": "first", "keyframes": "4"},  # frames 0 and 4 edited, the rest propagated along the flow
    "first-keyframes-8": {
        "attention": "first",
        "keyframes": "8",
    },  # frame 0 edited, the rest propagated from it: the CLI's default edit
    "first-keyframes-auto": {
        "attention": "first",
        "keyframes": "auto",
    },  # a keyframe where the scene changes (15% unseen) or after 16 frames
    "first-latent-fusion": {"attention": "first", "smooth": "flow"},  # early-step latent fusion along the source's flow
    "first-pixel-fusion": {"attention": "first", "smooth": "pixel"},  # late-step occlusion-aware pixel fusion (Rerender)
    "first-strength-0.9": {"attention": "first", "strength": 0.9},  # every frame, inverted to 0.9 of the schedule
    "first-keyframes-8-strength-0.9": {
        "attention": "first",
        "keyframes": "8",
        "strength": 0.9,
    },  # the default before the colour candidates
    "first-deepcache-3": {
        "attention": "first",
        "step_cache": "deepcache:3",
    },  # DeepCache: the whole UNet every 3rd step (editing.stepcache)
    "first-tome-0.5": {
        "attention": "first",
        "step_cache": "tome:0.5",
    },  # ToMe for SD: half of each frame's tokens merged in self-attention
    "first-keyframes-8-deepcache-3": {
        "attention": "first",
        "keyframes": "8",
        "step_cache": "deepcache:3",
    },  # the default with DeepCache
    "fast": {"preset": "fast"},  # the fast preset (the shapes model's LCM-LoRA, 4 LCM steps, SDEdit 0.5), every frame
    "fast-keyframes-8": {"preset": "fast", "keyframes": "8"},  # the fast preset's keyframes, propagated
}
DEFAULT_SETTING = "first-keyframes-8"  # what `edit` does with nothing chosen (a test holds them equal)


def parse_settings(text: str | None) -> tuple[str, ...]:
    """Setting names from 'a,b' (None or empty: all of them), checked against SETTINGS."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip()) or tuple(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    return names


def _prompt_edit(edit: ShapeEdit) -> str:
    """swap when both prompts have as many tokens (P2P's word swap), else refine (token alignment)."""
    from editing.models import clip_tokenizer

    tokenizer = clip_tokenizer()
    same = len(tokenizer(edit.source_prompt).input_ids) == len(tokenizer(edit.prompt).input_ids)
    return edit.prompt_edit if same else "refine"


def edit_request(
    setting: str, edit: ShapeEdit, video: Path, output: Path, steps: int, model: str, cache_dir: Path, tuned: Path | None = None
):
    """The EditRequest the `edit` command would build for this setting and edit."""
    from editing.requests import defaults
    from editing.requests import edit_request as schema_request

    options = dict(SETTINGS[setting])
    values = defaults("edit") | {
        "prompt": edit.prompt,
        "model": model,
        "frames": 0,
        "size": SIZE,
        "steps": steps,
        "guidance": GUIDANCE,
    }
    values |= {"inversion_prompt": edit.source_prompt, "cache_dir": str(cache_dir), "device": "auto", "dtype": "auto"}
    if options.pop("attention_edit", False):
        values |= {
            "source_prompt": edit.source_prompt,
            "prompt_edit": _prompt_edit(edit),
            "blend_words": ",".join(edit.blend_words),
        }
    if options.pop("tune", False):
        values["tuned"] = None if tuned is None else str(tuned)
    values["keyframes"] = "off"  # a setting edits every frame unless it names its keyframes (the CLI's default would propagate)
    values["strength"] = (
        1.0  # and inverts to the end of the schedule unless it names its strength (the CLI's default is DEFAULT_STRENGTH)
    )
    values |= options
    if options.get(
        "preset"
    ):  # a preset sets its own steps, guidance, strength, sampler...: leave those at the command's defaults
        from editing.presets import get_preset

        base = defaults("edit")
        values |= {
            k: base[k] for k in get_preset(options["preset"]).values(random_weights=False) if k in base and k not in options
        }
    return schema_request(values | {"video": str(video), "out": str(output)})


def tune_clip(video: Path, clip: Clip, model: str, cache_dir: Path, steps: int = TUNE_STEPS) -> tuple[Path, float]:
    """One-shot tuned weights for a benchmark clip (cached), and the seconds tuning took."""
    from editing.config import FrameSelection
    from editing.tuning import TuneConfig, TuneRequest, tune_video

    config = TuneConfig(
        prompt=clip.caption, selection=FrameSelection(max_frames=len(clip.frames), size=SIZE), steps=steps, learning_rate=TUNE_LR
    )
    begin = time.perf_counter()
    result = tune_video(TuneRequest(str(video), config, None, model, "auto", "auto", str(cache_dir)))
    return Path(result.path), time.perf_counter() - begin


# ---------------------------------------------------------------- running and tabulating


@dataclass
class BenchmarkResult:
    """Per-edit rows (setting, clip, kind, metrics, seconds per frame) and the per-setting summary."""

    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sheets: dict[str, list] = field(default_factory=dict)  # setting -> [(label, frames)] of clip 0: source, then each edit

    def summary(self) -> dict[str, dict]:
        """Per setting: accuracy per edit kind and the mean of every metric over its edits; for the
        INTERVAL_KEYS, the bootstrap interval over clips (`KEY_interval`) of the mean of per-clip means."""
        table: dict[str, dict] = {}
        for name in dict.fromkeys(row["setting"] for row in self.rows):
            rows = [row for row in self.rows if row["setting"] == name and not row.get("error")]
            if not rows:
                table[name] = {"error": next(row["error"] for row in self.rows if row["setting"] == name)}
                continue
            entry = {f"accuracy_{kind}": _mean([r["edit_accuracy"] for r in rows if r["kind"] == kind]) for kind in EDIT_KINDS}
            for key in ("edit_accuracy", "structure_iou", "background_psnr", "warp_error", "flicker", "seconds_per_frame"):
                entry[key] = _mean([r[key] for r in rows if r.get(key) is not None])
            for key in INTERVAL_KEYS:  # one clip has no spread to resample: no interval, no rank
                means = per_clip_means(rows, key)
                entry[f"{key}_interval"] = bootstrap_interval(means) if len(means) >= 2 else None
            for key in PROPAGATION_KEYS:  # only on the propagation kinds' clips
                if any(r.get(key) is not None for r in rows):
                    entry[key] = _mean([r[key] for r in rows if r.get(key) is not None])
            entry["edits"] = len(rows)
            entry["clips"] = len({r["clip"] for r in rows})
            table[name] = entry
        return table

    def by_clip_kind(self, key: str) -> dict[str, dict[str, float | None]]:
        """Per setting, the mean of one metric over the edits of each clip kind."""
        kinds = [k for k in ALL_CLIP_KINDS if any(r.get("clip_kind") == k for r in self.rows)]
        table = {}
        for name in dict.fromkeys(row["setting"] for row in self.rows):
            rows = [r for r in self.rows if r["setting"] == name and not r.get("error") and r.get(key) is not None]
            table[name] = {kind: _mean([r[key] for r in rows if r.get("clip_kind") == kind]) for kind in kinds}
        return table


INTERVAL_KEYS = ("edit_accuracy", "structure_iou", "warp_error", "flicker")
PROPAGATION_KEYS = ("scene_warp_error", "scene_warp_near_object", "area_drift", "trail")  # shapes_world.propagation's measures
RANKED = (("warp_error", "warp rank"), ("flicker", "flicker rank"), ("edit_accuracy", "acc rank"))
LOWER_IS_BETTER = {"warp_error": True, "flicker": True, "edit_accuracy": False, "structure_iou": False}


def per_clip_means(rows: list[dict], key: str) -> list[float]:
    """The mean of one metric over each clip's edits, in clip order (clips without a value are left out)."""
    values: dict[int, list[float]] = {}
    for row in rows:
        if row.get(key) is not None and not math.isnan(row[key]):
            values.setdefault(row["clip"], []).append(row[key])
    return [float(np.mean(v)) for _, v in sorted(values.items())]


def bootstrap_interval(
    values, level: float = BOOTSTRAP_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one per clip): resample the clips with
    replacement `resamples` times from a seeded generator (the same draws for every setting with as many
    clips) and take the central `level` share of the resampled means. None when there are no values."""
    values = np.asarray(values, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if values.size == 0:
        return None
    if not np.isfinite(values).all():  # PSNR of identical frames is inf: no spread to speak of
        mean = float(values.mean())
        return (mean, mean)
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def rank_with_ties(intervals: dict[str, tuple[float, float] | None], lower_is_better: bool) -> dict[str, str]:
    """Ranks that count only separated intervals: a setting's rank is 1 + the number of settings whose
    whole interval is better than its whole interval; '=' marks a setting whose interval overlaps another's."""
    known = {name: iv for name, iv in intervals.items() if iv is not None}
    ranks = {}
    for name, (low, high) in known.items():
        better = overlaps = 0
        for other, (o_low, o_high) in known.items():
            if other == name:
                continue
            if (o_high < low) if lower_is_better else (o_low > high):
                better += 1
            elif not ((o_low > high) if lower_is_better else (o_high < low)):
                overlaps += 1
        ranks[name] = f"{better + 1}{'=' if overlaps else ''}"
    return ranks


def _mean(values: list[float]) -> float | None:
    """Mean of the values (None when there are none; inf when any is inf, as PSNR of identical images is)."""
    return float(np.mean(values)) if values else None


def measure_kind(clip: Clip, kind: str, output: np.ndarray, edit: ShapeEdit) -> dict:
    """`measure`, and on a propagation kind's clip its scene warp error, area drift and trail too."""
    extra = propagation_measures(clip, output, edit.target, edit.subject) if kind in PROPAGATION_KINDS else {}
    return measure(clip, output, edit) | extra


def ideal_frames(clip: Clip, edit: ShapeEdit) -> np.ndarray:
    """A perfect edit: the edit's target scene rendered with the clip's motion and pan."""
    return make_clip(edit.target, clip.motions, len(clip.frames), clip.pan).frames


def run_benchmark(settings: tuple[str, ...], clips, steps: int, model: str, work: Path, progress=None) -> BenchmarkResult:
    """Edit every benchmark clip (a count: the first N; or clip indices) with every edit under every
    setting, through edit_video, and measure each."""
    progress = progress or (lambda stage, done, total: None)
    result = BenchmarkResult()
    for index in range(clips) if isinstance(clips, int) else clips:
        clip = benchmark_clip(index)
        video = write_lossless(work / f"clip-{index}.mp4", clip.frames)
        kind = clip_kind(index)
        edits = tuple(e for e in derive_edits(clip) if e.kind in KIND_EDITS.get(kind, EDIT_KINDS))
        result.rows += [
            {
                "setting": REFERENCE,
                "clip": index,
                "clip_kind": kind,
                "kind": e.kind,
                "prompt": e.prompt,
                **measure_kind(clip, kind, clip.frames, e),
                "seconds_per_frame": 0.0,
            }
            for e in edits
        ]
        result.rows += [
            {
                "setting": IDEAL,
                "clip": index,
                "clip_kind": kind,
                "kind": e.kind,
                "prompt": e.prompt,
                **measure_kind(clip, kind, ideal_frames(clip, e), e),
                "seconds_per_frame": 0.0,
            }
            for e in edits
        ]
        for setting in settings:
            try:
                tuned = _tuned_for(setting, video, clip, model, work / "cache", result.notes)
            except EditingError as exc:
                result.rows += [
                    {"setting": setting, "clip": index, "clip_kind": kind, "kind": e.kind, "error": str(exc)} for e in edits
                ]
                continue
            for edit in edits:
                row, output = edit_and_measure(setting, index, clip, edit, video, steps, model, work, tuned, progress)
                result.rows.append(row)
                if index == 0 and output is not None:
                    result.sheets.setdefault(setting, [("source", clip.frames)]).append((edit.kind, output))
    return result


def _tuned_for(setting: str, video: Path, clip: Clip, model: str, cache: Path, notes: list[str]) -> Path | None:
    """The tuned weights a setting edits with (tuned now, noted with its time), or None."""
    if not SETTINGS[setting].get("tune"):
        return None
    tuned, seconds = tune_clip(video, clip, model, cache)
    notes.append(f"tuned: {clip.caption!r} tuned in {seconds:.1f} s ({TUNE_STEPS} steps), not counted in seconds per frame")
    return tuned


def edit_and_measure(
    setting, index, clip, edit, video, steps, model, work: Path, tuned, progress
) -> tuple[dict, np.ndarray | None]:
    """One edit through edit_video (with its own cache, so it pays its own inversion), its row and its frames."""
    from editing.pipeline import edit_video

    row = {"setting": setting, "clip": index, "clip_kind": clip_kind(index), "kind": edit.kind, "prompt": edit.prompt}
    name = f"{setting}-{index}-{edit.kind}"
    try:
        request = edit_request(setting, edit, video, work / f"out-{name}.zip", steps, model, work / f"cache-{name}", tuned)
        edited = edit_video(request, progress)
    except EditingError as exc:
        return row | {"error": str(exc)}, None
    output = edited.images  # the edited frames, as written (the zip is not read back)
    seconds = sum(v for stage, v in edited.seconds.items() if stage != "load_model")
    row |= measure_kind(clip, clip_kind(index), output, edit) | {"seconds_per_frame": seconds / edited.frames}
    log.info("shapes benchmark %s", row)
    return row, output


COLUMNS = (
    ("accuracy_colour", "colour acc"),
    ("accuracy_shape", "shape acc"),
    ("accuracy_background", "background acc"),
    ("accuracy_add", "add-word acc"),
    ("edit_accuracy", "edit acc"),
    ("structure_iou", "structure IoU"),
    ("background_psnr", "background PSNR (dB)"),
    ("warp_error", "true-motion warp error"),
    ("flicker", "colour flicker"),
    ("seconds_per_frame", "s / frame"),
)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _interval_cell(entry: dict, key: str) -> str:
    """'mean [low, high]' (the bootstrap interval over clips) or the plain mean when there is no interval."""
    interval = entry.get(f"{key}_interval")
    if entry.get(key) is None or interval is None:
        return _cell(entry.get(key))
    return f"{_cell(entry[key])} [{interval[0]:.3g}, {interval[1]:.3g}]"


def setting_ranks(summary: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per ranked metric, each setting's rank among the edited settings (not the source or ideal rows)."""
    edited = {name: entry for name, entry in summary.items() if name not in (REFERENCE, IDEAL) and "error" not in entry}
    return {
        key: rank_with_ties({n: e.get(f"{key}_interval") for n, e in edited.items()}, LOWER_IS_BETTER[key]) for key, _ in RANKED
    }


def markdown(
    summary: dict[str, dict], header: str, notes: list[str], stated: dict | None = None, by_kind: dict[str, dict] | None = None
) -> str:
    """The table (one row per setting; interval columns show the bootstrap interval over clips, rank
    columns count only separated intervals), the per-clip-kind table, the notes and the CI slice's values."""
    ranks = setting_ranks(summary)
    labels = [label for _, label in COLUMNS] + [label for _, label in RANKED]
    lines = [header, "", "| setting | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, entry in summary.items():
        if "error" in entry:
            cells = [entry["error"][:60]] + [""] * (len(labels) - 1)
        else:
            cells = [_interval_cell(entry, key) if key in INTERVAL_KEYS else _cell(entry.get(key)) for key, _ in COLUMNS]
            cells += [ranks[key].get(name, "") for key, _ in RANKED]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if by_kind:
        kinds = list(next(iter(by_kind.values())))
        lines += [
            "",
            "By clip kind (true-motion warp error / colour flicker, means over each kind's edits):",
            "",
            "| setting | " + " | ".join(kinds) + " |",
            "|---" * (len(kinds) + 1) + "|",
        ]
        for name, cells in by_kind.items():
            lines.append(f"| {name} | " + " | ".join(cells[k] for k in kinds) + " |")
    propagated = {name: e for name, e in summary.items() if e.get("scene_warp_error") is not None}
    if propagated:
        lines += [
            "",
            "Propagation clips (shapes_world.propagation; means over their edits): warp error on the objects, scene warp error "
            "(background included) and its share on the background within 3 px of an object, area drift (the edited object's area change, "
            "0.05 = 5%), trail (object-coloured pixels it left behind):",
            "",
            "| setting | warp error | scene warp error | of it beside objects | area drift | trail |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in propagated.items():
            lines.append(
                f"| {name} | {_cell(e.get('warp_error'))} | {_cell(e['scene_warp_error'])} | {_cell(e.get('scene_warp_near_object'))} "
                f"| {_cell(e.get('area_drift'))} | {_cell(e.get('trail'))} |"
            )
    lines += [""] + [f"- {note}" for note in dict.fromkeys(notes)]
    if stated is not None:
        lines.append(f"- CI slice ({stated_description(stated)}): {stated_values_text(stated)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the CI slice's stated values


def load_stated(path: Path = STATED_PATH) -> dict:
    """The CI slice (clips, settings, steps), the margin, and the values stated for each setting (None = not yet)."""
    return json.loads(path.read_text(encoding="utf-8"))


def stated_description(stated: dict) -> str:
    slice_ = stated["slice"]
    return f"{slice_['clips']} clip(s), settings {', '.join(slice_['settings'])}, {slice_['steps']} steps"


def stated_values_text(stated: dict) -> str:
    """'setting: edit acc >= x, IoU >= y' for every stated setting, with the margin."""
    parts = []
    for name, values in stated["values"].items():
        if values.get("edit_accuracy") is None:
            parts.append(f"{name}: not stated yet")
        else:
            parts.append(f"{name}: edit acc {values['edit_accuracy']:.3g}, structure IoU {values['structure_iou']:.3g}")
    return "; ".join(parts) + f" (CI fails below these minus {stated['margin']})"


def slice_shortfalls(summary: dict[str, dict], stated: dict) -> list[str]:
    """Every stated value the measured slice falls below by more than the margin (empty when it passes)."""
    failures = []
    for name, values in stated["values"].items():
        for key in ("edit_accuracy", "structure_iou"):
            floor, measured = values.get(key), summary.get(name, {}).get(key)
            if floor is not None and (measured is None or measured < floor - stated["margin"]):
                failures.append(f"{name} {key} {measured} < stated {floor} - margin {stated['margin']}")
    return failures


def state_values(summary: dict[str, dict], stated: dict, path: Path = STATED_PATH) -> dict:
    """Write the measured slice values as the stated ones (run with the committed weights)."""
    values = {
        name: {key: round(summary[name][key], 3) for key in ("edit_accuracy", "structure_iou")}
        for name in stated["slice"]["settings"]
    }
    updated = stated | {"values": values}
    path.write_text(json.dumps(updated, indent=1) + "\n", encoding="utf-8")
    return updated


# ---------------------------------------------------------------- command


def provenance() -> dict:
    """The command line, UTC date and git commit of this run (commit None outside a git checkout)."""
    import datetime
    import subprocess

    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    command = "python -m editing eval " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["eval"] else sys.argv[1:])
    return {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "commit": commit}


README_MARKERS = ("<!-- shapes-table -->", "<!-- /shapes-table -->")


def put_in_readme(path: Path, table: str) -> None:
    """Replace what lies between the README's shapes-table markers with the table."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = README_MARKERS
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ConfigError(f"{path.name} must hold the markers {begin} and {end} once each, in that order")
    head, rest = text.split(begin)
    path.write_text(f"{head}{begin}\n{table}{end}{rest.split(end, 1)[1]}", encoding="utf-8")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The eval command's options for the shapes benchmark."""
    group = parser.add_argument_group("shapes benchmark (ground-truth edit quality; shapes_world.benchmark)")
    group.add_argument("--shapes", action="store_true", help="run the shapes benchmark instead of a YAML spec")
    group.add_argument("--settings", default=None, help=f"comma-separated settings (default all): {', '.join(SETTINGS)}")
    group.add_argument(
        "--clips",
        type=int,
        default=DEFAULT_CLIPS,
        help=f"benchmark clips (8 frames, 64 px each; the first {ORIGINAL_CLIPS} are the original plain set)",
    )
    group.add_argument(
        "--clip-kinds",
        default=None,
        help=f"comma-separated clip kinds to take the clips from (default the fixed set's: {', '.join(CLIP_KINDS)}; also {', '.join(PROPAGATION_KINDS)})",
    )
    group.add_argument("--steps", type=int, default=20, help="denoising steps")
    group.add_argument(
        "--model",
        default="shapes",
        help="shapes model: 'shapes' (editing/assets/shapes-model) or a folder from shapes_world.train",
    )
    group.add_argument("--slice", action="store_true", help="run the CI slice (stated.json's clips, settings and steps)")
    group.add_argument("--state", action="store_true", help="with --slice: write the measured values into stated.json")
    group.add_argument(
        "--readme", default=None, help="also put the table into this Markdown file, between the shapes-table markers"
    )
    group.add_argument(
        "--shard",
        default=None,
        help="K/N: edit only every N-th of the chosen clips from the K-th (run N shards side by side, then --merge)",
    )
    group.add_argument(
        "--merge",
        default=None,
        help="comma-separated --out folders (or table.json files) of shards: write their table as one, without editing",
    )


def model_label(model: str) -> str:
    """The model's name and, for a shapes folder, the training steps of each stage (from its training.json)."""
    from editing.models import ModelSpec

    try:
        folder = ModelSpec.parse(model).folder or Path(model)
        stages = json.loads((folder / "training.json").read_text(encoding="utf-8"))["stages"]
        steps = ", ".join(f"{name} {entry['steps']}" for name, entry in stages.items())
    except (EditingError, OSError, ValueError, KeyError, TypeError):
        return model
    return f"{model} (training steps: {steps})"


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' (0 <= K < N): this run edits every N-th of the chosen clips, from the K-th; None: all of them."""
    if not text:
        return 0, 1
    try:
        part, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be K/N, e.g. 0/2; got {text!r}") from None
    if not 0 <= part < count:
        raise ConfigError(f"--shard K/N needs 0 <= K < N; got {text!r}")
    return part, count


def merge_tables(paths: list[Path]) -> tuple[dict, BenchmarkResult]:
    """The run documents (table.json) of parts of one benchmark, as one: shards of the clips, or runs of
    other settings on the same clips. Refused unless the parts share model and steps, no setting edited a
    clip in two parts, and every setting covers the same clips."""
    documents = []
    for path in paths:
        path = path / "table.json" if path.is_dir() else path
        try:
            documents.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--merge: cannot read {path.name}: {exc}") from None
    first = documents[0]
    for key in ("model", "steps"):
        if any(d.get(key) != first.get(key) for d in documents):
            raise ConfigError(f"--merge: the parts differ in {key}; merge only parts of one benchmark")
    covered: dict[str, set[int]] = {}
    for document in documents:
        for setting in document["settings"]:
            twice = covered.setdefault(setting, set()) & set(document["clips"])
            if twice:
                raise ConfigError(f"--merge: setting {setting} edited clip {min(twice)} in more than one part")
            covered[setting] |= set(document["clips"])
    clips = sorted(set().union(*covered.values()))
    short = [name for name, got in covered.items() if got != set(clips)]
    if short:
        raise ConfigError(f"--merge: setting {short[0]} lacks clips {sorted(set(clips) - covered[short[0]])}")
    references, rows = {}, []
    for row in (r for d in documents for r in d["rows"]):
        if row["setting"] in (REFERENCE, IDEAL):  # every part measured the source and ideal rows of its clips
            references.setdefault((row["setting"], row["clip"], row["kind"]), row)
        else:
            rows.append(row)
    settings = list(dict.fromkeys(s for d in documents for s in d["settings"]))
    position = {name: i for i, name in enumerate((REFERENCE, IDEAL, *settings))}
    result = BenchmarkResult(rows=sorted([*references.values(), *rows], key=lambda r: (r["clip"], position[r["setting"]])))
    result.notes = [n for d in documents for n in d.get("notes", []) if n.startswith("tuned:")]
    minutes = sum(d.get("minutes", 0.0) for d in documents)
    return {
        "model": first["model"],
        "steps": first["steps"],
        "settings": settings,
        "clips": clips,
        "minutes": minutes,
        "shards": len(documents),
    }, result


def run_command(args: argparse.Namespace, progress=None) -> int:
    """`eval --shapes`: run, print and write table.md, table.json and contact-<setting>.png (clip 0) in --out."""
    stated = load_stated()
    out = Path(args.out)
    if getattr(args, "merge", None):
        if args.slice or args.state:
            raise ConfigError("--merge rebuilds a table from shards' table.json; it does not run the slice")
        run, result = merge_tables([Path(p) for p in args.merge.split(",") if p])
        out.mkdir(parents=True, exist_ok=True)
        for path in args.merge.split(","):  # clip 0's contact sheets come from the shard that edited it
            for sheet in Path(path).glob("contact-*.png") if Path(path).is_dir() else ():
                if Path(path).resolve() != out.resolve():
                    shutil.copyfile(sheet, out / sheet.name)
        settings, indices, steps, model = tuple(run["settings"]), tuple(run["clips"]), run["steps"], run["model"]
        timing = f"this run: {run['minutes']:.1f} min of edits for {len(settings)} setting(s) x {len(indices)} clip(s) on this machine, in {run['shards']} parts (summed; parts may have run side by side)"
        return _report(args, stated, result, settings, indices, steps, model, run["minutes"], timing)
    if args.slice:
        settings, clips, steps = tuple(stated["slice"]["settings"]), stated["slice"]["clips"], stated["slice"]["steps"]
    else:
        settings, clips, steps = parse_settings(args.settings), args.clips, args.steps
    if clips < 1 or steps < 1:
        raise ConfigError(f"--clips and --steps must be at least 1, got {clips} and {steps}")
    kinds_text = None if args.slice else getattr(args, "clip_kinds", None)
    kinds = tuple(k.strip() for k in kinds_text.split(",") if k.strip()) if kinds_text else None
    part, count = parse_shard(None if args.slice else getattr(args, "shard", None))
    indices = clip_indices(clips, kinds)[part::count]
    if not indices:
        raise ConfigError(f"--shard {part}/{count} has no clips of the {clips} chosen")
    if args.state and (not args.slice or args.model != "shapes"):
        raise ConfigError(
            "--state writes the CI slice's values for the committed weights; use it with --slice and --model shapes"
        )
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shapes-", dir=out) as work:
        result = run_benchmark(settings, indices, steps, args.model, Path(work), progress)
    minutes = (time.perf_counter() - began) / 60
    from editing.evaluate import contact_sheet

    for setting, rows in result.sheets.items():
        contact_sheet(rows).save(out / f"contact-{setting}.png")
    timing = f"this run: {minutes:.1f} min for {len(settings)} setting(s) x {len(indices)} clip(s) on this machine"
    return _report(args, stated, result, settings, indices, steps, args.model, minutes, timing)


def _report(
    args, stated: dict, result: BenchmarkResult, settings, indices, steps: int, model: str, minutes: float, timing: str
) -> int:
    """Write table.md and table.json (and the README block), print the table; 2 when edits failed or the slice fell short."""
    out = Path(args.out)
    summary = result.summary()
    counts = ", ".join(
        f"{sum(clip_kind(i) == k for i in indices)} {k}" for k in ALL_CLIP_KINDS if any(clip_kind(i) == k for i in indices)
    )
    header = f"Shapes benchmark: model {model_label(model)}, {len(indices)} clip(s) ({counts}) x {len(EDIT_KINDS)} edits, {FRAMES} frames at {SIZE} px, {steps} steps, guidance {GUIDANCE}."
    notes = result.notes + [
        f"'{REFERENCE}' measures the unedited source frames: the ceiling of IoU, PSNR, warp error and flicker (its accuracy is 0: nothing was edited)",
        f"img2img and sparse-causal-noinv noise the source to strength {SDEDIT_STRENGTH} (no inversion); the others DDIM-invert with the source caption",
        "warp error: 8-bit levels along the true motion on the moving objects; flicker: std over frames of the edited object's mean colour (8-bit)",
        f"'{IDEAL}' measures perfect edits (the target scenes rendered with the clip's motion): the judge's ceiling on these clips",
        f"[low, high]: {BOOTSTRAP_LEVEL:.0%} bootstrap interval over clips ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}) of the mean of per-clip means; "
        "ranks (among edited settings) count only settings whose whole interval is better, '=' marks an interval that overlaps another's",
        timing,
    ]
    failures = [row for row in result.rows if row.get("error")]
    if args.state and not failures:  # never state thresholds from a run with failed edits
        stated = state_values(summary, stated)
    warp, flicker = result.by_clip_kind("warp_error"), result.by_clip_kind("flicker")
    by_kind = {name: {k: f"{_cell(warp[name][k])} / {_cell(flicker[name][k])}" for k in warp[name]} for name in warp}
    text = markdown(summary, header, notes, stated, by_kind if len(next(iter(warp.values()), {})) > 1 else None)
    (out / "table.md").write_text(text, encoding="utf-8")
    document = {
        "model": model,
        "clips": list(indices),
        "steps": steps,
        "settings": list(settings),
        "minutes": minutes,
        "summary": summary,
        "rows": result.rows,
        "notes": notes,
    }
    document |= provenance()  # the docs' benchmark pages print the command, date and commit of each run
    (out / "table.json").write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    if args.readme:
        put_in_readme(Path(args.readme), text)
    print(text, end="")
    if failures:
        print(f"error: {len(failures)} edits failed; see table.json (first: {failures[0]['error']})", file=sys.stderr)
        return 2
    shortfalls = slice_shortfalls(summary, stated) if args.slice else []
    for line in shortfalls:
        print(f"error: below the stated value: {line}", file=sys.stderr)
    return 2 if shortfalls else 0
