"""The shapes benchmark's region edit kinds: `local` (change one object's colour inside its mask) and
`remove` (remove one object), on two-object clips of every kind, with masks from each source (given,
tracked by flow from frame 0, from words), plus flow-tracked mask IoU per clip kind. Ground truth: the
generator's exact masks, its true motion, and its render of the clip without the object.

    python -m shapes_world.regions --out benchmarks/results/regions.json [--clips-per-kind 2] [--kinds pan] [--steps 20] [--sources given,flow]

Rows are kept in the output's `.rows.json` beside it as they are made, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np

from shapes_world import judge as judging
from shapes_world.benchmark import (
    BASE_SEED,
    GUIDANCE,
    _matched_region,
    benchmark_clip,
    clip_kind,
    derive_edits,
    edit_accuracy,
    ideal_frames,
    mask_iou,
    true_warp_errors,
    write_lossless,
)
from shapes_world.world import CLIP_KINDS, Clip, without_object

GROW, FEATHER = 1, 2  # pixels a local edit's mask is grown and feathered by
SOURCES = ("given", "flow", "words")


def two_object_clips(per_kind: int, kinds: tuple[str, ...] = CLIP_KINDS) -> list[int]:
    """Indices of the fixed set's first `per_kind` two-object clips of each of `kinds` (every clip kind by default)."""
    unknown = sorted(set(kinds) - set(CLIP_KINDS))
    if unknown:
        raise ValueError(f"unknown clip kind {unknown[0]!r}; choose from {', '.join(CLIP_KINDS)}")
    chosen: dict[str, list[int]] = {kind: [] for kind in kinds}
    index = 0
    while any(len(found) < per_kind for found in chosen.values()) and index < 400:
        kind = clip_kind(index)
        if kind in chosen and len(chosen[kind]) < per_kind and len(benchmark_clip(index).scene.objects) == 2:
            chosen[kind].append(index)
        index += 1
    return [i for kind in kinds for i in chosen[kind]]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from editing.metrics import psnr as measure

    return measure(a, b) if a.size else math.nan


def mask_options(source: str, masks: np.ndarray, work: Path, name: str, words: str) -> dict:
    """The mask options of one source: the true masks as a video, frame 0's true mask tracked by flow, or words."""
    if source == "given":
        return {"mask": str(write_lossless(work / f"{name}-mask.mp4", np.repeat(masks[..., None].astype(np.uint8) * 255, 3, -1)))}
    if source == "flow":
        from PIL import Image

        path = work / f"{name}-mask0.png"
        Image.fromarray(masks[0].astype(np.uint8) * 255).save(path)
        return {"mask": f"{path}@0"}
    return {"mask_words": words}


def run_edit(clip: Clip, values: dict, backbone):
    """Edit the clip's frames with a request built from option values through the one schema."""
    from editing.core import EditParts
    from editing.region import masked_edit
    from editing.requests import defaults, edit_request

    request = edit_request(
        defaults("edit")
        | {
            "video": "clip.mp4",
            "out": "out.mp4",
            "model": "shapes",
            "size": 64,
            "frames": 0,
            "steps": values.pop("steps"),
            "guidance": GUIDANCE,
            "strength": 1.0,
        }
        | values
    )
    return masked_edit(clip.frames, EditParts.of(request), backbone)


def subject_iou(frames: np.ndarray, masks: np.ndarray) -> float:
    """Mean over frames of the IoU between the subject's true mask and the object the accuracy judge matched
    to it (0 where none): how much of an accepted edit is in the subject's place."""
    ious = []
    for image, mask in zip(frames, masks):
        region = _matched_region(image, mask)
        ious.append(0.0 if region is None else mask_iou(region, mask))
    return float(np.mean(ious))


def found_share(frames: np.ndarray, obj) -> float:
    """Share of frames where the judge finds an object of the removed one's colour and shape."""
    return float(
        np.mean([any(v.colour == obj.colour and v.shape == obj.shape for v in judging.judge(f).objects) for f in frames])
    )


def background_words(clip: Clip) -> str:
    background = clip.scene.background
    words = ([] if background.kind == "plain" else [background.kind]) + [background.colour]
    return f"a {' '.join(words)} background"


def local_rows(index: int, clip: Clip, sources, steps: int, backbone, work: Path) -> list[dict]:
    """The colour edit of the clip's subject: globally, then inside its mask from each source."""
    from editing.masks import feathered, grown

    edit = derive_edits(clip)[0]
    subject = clip.masks[:, edit.subject]
    base = {"prompt": edit.prompt, "inversion_prompt": edit.source_prompt}
    ideal_warp = float(np.nanmean(true_warp_errors(ideal_frames(clip, edit), clip.flow, clip.masks)))
    true_outside = feathered(grown(subject, GROW), FEATHER) == 0
    rows = []
    for source in ("global", *sources):
        values = dict(base, steps=steps)
        if source != "global":
            values |= mask_options(
                source, subject, work, f"clip{index}-local-{source}", clip.scene.objects[edit.subject].phrase().split(" ", 1)[1]
            ) | {"region": True, "mask_grow": GROW, "mask_feather": FEATHER}
        begin = time.perf_counter()
        out = run_edit(clip, values, backbone).frames
        warp = float(np.nanmean(true_warp_errors(out, clip.flow, clip.masks)))
        rows.append({
            "kind": "local", "clip": index, "clip_kind": clip_kind(index), "source": source,
            "seconds": round(time.perf_counter() - begin, 2),
            "edit_accuracy": edit_accuracy(out, clip.masks, edit), "subject_iou": subject_iou(out, subject),
            "psnr_outside_true_grown_mask": psnr(clip.frames[true_outside], out[true_outside]),
            "warp_error": warp, "ideal_warp_error": ideal_warp, "warp_ratio": warp / ideal_warp if ideal_warp else math.nan,
        })  # fmt: skip
    return rows


def remove_rows(index: int, clip: Clip, sources, steps: int, backbone, work: Path) -> list[dict]:
    """Removing the clip's first object, its mask from each source."""
    removed = 0
    holes = clip.masks[:, removed]
    truth = without_object(clip, removed)
    rows = []
    for source in sources:
        values = mask_options(
            source, holes, work, f"clip{index}-remove-{source}", clip.scene.objects[removed].phrase().split(" ", 1)[1]
        )
        values |= {
            "remove": True,
            "prompt": background_words(clip),
            "steps": steps,
            "mask_grow": 0 if source == "given" else GROW,
        }
        begin = time.perf_counter()
        result = run_edit(clip, values, backbone)
        out, counts = result.frames, result.removal
        rows.append({
            "kind": "remove", "clip": index, "clip_kind": clip_kind(index), "background": clip.scene.background.kind,
            "source": source,
            "seconds": round(time.perf_counter() - begin, 2),
            "psnr_in_hole": psnr(truth[holes], out[holes]), "psnr_outside_hole": psnr(clip.frames[~holes], out[~holes]),
            "found_share": found_share(out, clip.scene.objects[removed]),
            "hole_pixels": counts["hole_pixels"], "from_frames": counts["from_frames"], "diffused": counts["diffused"],
            "diffused_frames": counts["diffused_frames"],
        })  # fmt: skip
    return rows


def tracking_rows(count: int) -> list[dict]:
    """IoU of each object's frame-0 mask tracked by flow against its true masks, on the first `count` clips."""
    from editing.keyframes import clip_flows
    from editing.masks.flow_track import track_by_flow

    rows = []
    for index in range(count):
        clip = benchmark_clip(index)
        flows = clip_flows(clip.frames)
        for obj in range(clip.masks.shape[1]):
            tracked = track_by_flow(clip.frames, clip.masks[0, obj], 0, flows)
            ious = [mask_iou(a, b) for a, b in zip(tracked, clip.masks[:, obj])]
            rows.append(
                {
                    "kind": "track",
                    "clip": index,
                    "clip_kind": clip_kind(index),
                    "object": obj,
                    "iou": float(np.mean(ious)),
                    "min_iou": float(np.min(ious)),
                }
            )
    return rows


def _mean(values) -> float | None:
    values = [math.inf if v == "inf" else v for v in values]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _worst(values) -> float | None:
    """The lowest value (inf counts as the highest), None when there are none."""
    values = [math.inf if v == "inf" else v for v in values if v is not None]
    return float(min(values)) if values else None


def summary(rows: list[dict]) -> dict:
    """Means per kind, source and clip kind."""
    out: dict = {"local": {}, "remove": {}, "track": {}}
    for row in rows:
        if row["kind"] == "track":
            out["track"].setdefault(row["clip_kind"], []).append(row["iou"])
    out["track"] = {kind: {"iou": _mean(v), "objects": len(v)} for kind, v in out["track"].items()} | {
        "all": {"iou": _mean([r["iou"] for r in rows if r["kind"] == "track"])}
    }
    for kind, keys in (
        (
            "local",
            ("edit_accuracy", "subject_iou", "psnr_outside_true_grown_mask", "warp_error", "ideal_warp_error", "warp_ratio"),
        ),
        ("remove", ("psnr_in_hole", "psnr_outside_hole", "found_share")),
    ):
        chosen = [r for r in rows if r["kind"] == kind]
        for source in dict.fromkeys(r["source"] for r in chosen):
            for group in ("all", *CLIP_KINDS):
                members = [r for r in chosen if r["source"] == source and group in ("all", r["clip_kind"])]
                if not members:
                    continue
                entry = {key: _mean([r[key] for r in members]) for key in keys} | {"clips": len(members)}
                if kind == "remove":
                    hole = sum(r["hole_pixels"] for r in members)
                    entry |= {
                        "from_frames_share": sum(r["from_frames"] for r in members) / hole,
                        "diffused_share": sum(r["diffused"] for r in members) / hole,
                    }
                    for bg in ("plain", "textured"):  # the worst clip: a mean of PSNRs with an inf in it says nothing
                        values = [r["psnr_in_hole"] for r in members if (r["background"] == "plain") == (bg == "plain")]
                        entry[f"psnr_in_hole_{bg}_background"] = _worst(values)
                outside = "psnr_outside_true_grown_mask" if kind == "local" else "psnr_outside_hole"
                entry["worst_psnr_outside"] = _worst([r[outside] for r in members])
                out[kind].setdefault(source, {})[group] = entry
    return out


def _finite(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == "inf" or (isinstance(value, float) and math.isinf(value)):
        return "inf"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    """The docs' tables of a result file: local edits, removal and flow-tracked IoU, per mask source (PSNRs: the worst clip)."""
    summary = result["summary"]
    lines = [
        "| local edit: mask source | clips | edit accuracy | subject IoU | PSNR outside true grown mask (dB) | warp error"
        " | ideal's | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, groups in summary["local"].items():
        e = groups["all"]
        cells = [
            e["edit_accuracy"],
            e.get("subject_iou"),
            e["worst_psnr_outside"],
            e["warp_error"],
            e["ideal_warp_error"],
            e["warp_ratio"],
        ]
        lines.append(f"| {source} | {e['clips']} | " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "| removal: mask source | clips | PSNR in hole, plain bg (dB) | textured bg (dB) | PSNR outside hole (dB) | object found"
        " | from frames | diffused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, groups in summary["remove"].items():
        e = groups["all"]
        cells = [
            e["psnr_in_hole_plain_background"],
            e["psnr_in_hole_textured_background"],
            e["worst_psnr_outside"],
            e["found_share"],
        ]
        shares = f"{e['from_frames_share']:.0%} | {e['diffused_share']:.0%}"
        lines.append(f"| {source} | {e['clips']} | " + " | ".join(_cell(c) for c in cells) + f" | {shares} |")
    lines += ["", "| flow-tracked mask IoU | " + " | ".join(summary["track"]) + " |", "|---|" + "---|" * len(summary["track"])]
    lines.append("| mean over objects | " + " | ".join(_cell(v["iou"]) for v in summary["track"].values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapes_world.regions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/regions.json")
    parser.add_argument("--clips-per-kind", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(CLIP_KINDS), help="clip kinds of the edited clips, comma-separated")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sources", default="given,flow")
    parser.add_argument("--track-clips", type=int, default=16)
    parser.add_argument("--markdown", action="store_true", help="print the docs' tables of the result file --out and stop")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    import torch

    from editing.models import load_backbone

    torch.set_num_threads(1)
    out = Path(args.out)
    work = out.with_suffix(".work")
    work.mkdir(parents=True, exist_ok=True)
    saved = out.with_suffix(".rows.json")
    rows = json.loads(saved.read_text()) if saved.exists() else []
    done = {(r["kind"], r["clip"]) for r in rows}
    sources = tuple(s for s in args.sources.split(",") if s)
    begin = time.perf_counter()
    if ("track", 0) not in done:
        rows += tracking_rows(args.track_clips)
        saved.write_text(json.dumps(_finite(rows)))
    backbone = load_backbone("shapes", device="cpu", dtype="fp32")
    for index in two_object_clips(args.clips_per_kind, tuple(k for k in args.kinds.split(",") if k)):
        clip = benchmark_clip(index)
        for kind, make in (("local", local_rows), ("remove", remove_rows)):
            if (kind, index) in done:
                continue
            rows += make(index, clip, sources, args.steps, backbone, work)
            saved.write_text(json.dumps(_finite(rows)))
            print(f"clip {index} ({clip_kind(index)}) {kind}: done, {time.perf_counter() - begin:.0f} s", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python -m shapes_world.regions " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": args.steps, "base_seed": BASE_SEED,
        "grow": GROW, "feather": FEATHER, "summary": summary(json.loads(saved.read_text())),
        "rows": json.loads(saved.read_text()),
    }  # fmt: skip
    out.write_text(json.dumps(_finite(result), indent=1))
    print(json.dumps(_finite(result["summary"]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
