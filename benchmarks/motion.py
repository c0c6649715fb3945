"""Motion modules and context windows on the shapes benchmark, measured in one run per part, saved as JSON.

    python benchmarks/motion.py quality --clips 0,4,5,6 --steps 20   # the motion module alone and combined, next to the default
    python benchmarks/motion.py seams --clips 0,1 --frames 48 --steps 20   # warp error across window boundaries vs inside
    python benchmarks/motion.py memory --frames 16,128 --steps 2      # peak memory of a 16- and a 128-frame edit with windows

quality  edits the benchmark clips (shapes_world.benchmark: its edits, metrics and bootstrap intervals) under
         today's default, `first` on every frame, and the `shapes` motion module alone, with `first`, with flow
         attention and with keyframes then propagation.
seams    edits longer clips (one colour edit each) with windows of 16 frames, overlapping by 4 and blended
         (static and uniform schedules) or not overlapping (overlap 0: no blending), with and without the motion
         module, and chunks of 16 sharing frame 0 (today's long-clip path); for each it reports the true-motion
         warp error of the frame pairs that cross a window boundary (step 0's windows: a pair (t, t+1) where a
         window starts at t+1 or ends at t) against the pairs inside windows.
memory   runs each frame count in a fresh process and reports its peak resident memory and largest UNet batch.

Each part writes benchmarks/results/motion-PART.json (ratios computed in the same run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
MOTION = "shapes"

QUALITY_SETTINGS: dict[str, dict] = {
    "motion": {"attention": "none", "motion_adapter": MOTION},
    "motion-first": {"attention": "first", "motion_adapter": MOTION},
    "motion-flow": {"attention": "flow", "motion_adapter": MOTION},
    "motion-first-keyframes-2": {
        "attention": "first",
        "keyframes": "2",
        "motion_adapter": MOTION,
    },  # 4 of 8 frames edited jointly, the rest propagated
}
SEAM_SETTINGS: dict[str, dict] = {
    "motion-16:4:static": {"attention": "none", "motion_adapter": MOTION, "context": "16:4:static"},
    "motion-16:4:uniform": {"attention": "none", "motion_adapter": MOTION, "context": "16:4:uniform"},
    "motion-16:0:static": {"attention": "none", "motion_adapter": MOTION, "context": "16:0:static"},
    "first-16:4:static": {"attention": "first", "context": "16:4:static"},
    "first-16:0:static": {"attention": "first", "context": "16:0:static"},
    "first-chunks-16": {"attention": "first", "chunk": 16},
}


def _log_setup() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")


def quality(args) -> dict:
    """The shapes benchmark table for the motion settings and the baselines."""
    from shapes_world import benchmark

    benchmark.SETTINGS.update(QUALITY_SETTINGS)
    settings = (benchmark.DEFAULT_SETTING, "first", *QUALITY_SETTINGS)
    clips = tuple(int(c) for c in args.clips.split(","))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = benchmark.run_benchmark(settings, clips, args.steps, "shapes", Path(work))
    summary = result.summary()
    keep = (
        "edit_accuracy",
        "structure_iou",
        "warp_error",
        "flicker",
        "seconds_per_frame",
        "edit_accuracy_interval",
        "structure_iou_interval",
        "warp_error_interval",
        "flicker_interval",
        "edits",
        "clips",
    )
    table = {name: {k: entry.get(k) for k in keep} for name, entry in summary.items()}
    base = table[benchmark.DEFAULT_SETTING]
    for name, entry in table.items():
        if name in (benchmark.REFERENCE, benchmark.IDEAL) or entry.get("warp_error") is None:
            continue
        entry["warp_vs_default"] = entry["warp_error"] / base["warp_error"]
        entry["flicker_vs_default"] = entry["flicker"] / base["flicker"]
        entry["seconds_vs_default"] = (
            entry["seconds_per_frame"] / base["seconds_per_frame"] if base["seconds_per_frame"] else None
        )
    errors = sorted({row["error"] for row in result.rows if row.get("error")})
    return {
        "clips": list(clips),
        "clip_kinds": [benchmark.clip_kind(c) for c in clips],
        "steps": args.steps,
        "frames": benchmark.FRAMES,
        "settings": table,
        "errors": errors,
        "wall_seconds": time.perf_counter() - began,
    }


def boundary_pairs(num_frames: int, setting: dict) -> set[int]:
    """Indices t of the pairs (t, t+1) that cross a window (or chunk) boundary at step 0."""
    from editing.windows import ContextWindows, window_starts

    if "context" in setting:
        windows = ContextWindows.parse(setting["context"])
        starts = window_starts(num_frames, windows, 0)
        edges = {s for s in starts if s > 0} | {s + windows.length for s in starts if s + windows.length < num_frames}
    else:
        edges = set(range(setting["chunk"], num_frames, setting["chunk"]))
    return {e - 1 for e in edges}


def seams(args) -> dict:
    """Warp error across window boundaries against inside windows, per setting, over the clips' colour edits."""
    from editing.pipeline import edit_video
    from shapes_world import benchmark

    benchmark.SETTINGS.update(SEAM_SETTINGS)
    clips = tuple(int(c) for c in args.clips.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for index in clips:
            clip = benchmark.benchmark_clip(index, frames=args.frames)
            video = benchmark.write_lossless(work / f"clip-{index}.mp4", clip.frames)
            edit = next(e for e in benchmark.derive_edits(clip) if e.kind == "colour")
            for name, setting in SEAM_SETTINGS.items():
                request = benchmark.edit_request(
                    name, edit, video, work / f"{name}-{index}.zip", args.steps, "shapes", work / f"cache-{name}-{index}"
                )
                began = time.perf_counter()
                output = edit_video(request).images
                pairs = benchmark.true_warp_errors(output, clip.flow, clip.masks)
                edges = boundary_pairs(args.frames, setting)
                across = [v for t, v in enumerate(pairs) if t in edges and not math.isnan(v)]
                inside = [v for t, v in enumerate(pairs) if t not in edges and not math.isnan(v)]
                row = {"setting": name, "clip": index, "across": float(np.mean(across)), "inside": float(np.mean(inside))}
                row |= {"boundary_pairs": sorted(edges), "edit_accuracy": benchmark.edit_accuracy(output, clip.masks, edit)}
                row["seconds"] = time.perf_counter() - began
                row["ratio"] = row["across"] / row["inside"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    table = {}
    for name in SEAM_SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        across, inside = float(np.mean([r["across"] for r in mine])), float(np.mean([r["inside"] for r in mine]))
        table[name] = {
            "across": across,
            "inside": inside,
            "ratio": across / inside,
            "edit_accuracy": float(np.mean([r["edit_accuracy"] for r in mine])),
            "target_met": across / inside <= 1.2,
        }
    return {"clips": list(clips), "frames": args.frames, "steps": args.steps, "settings": table, "rows": rows}


def memory(args) -> dict:
    """Peak resident memory of an edit of each frame count with the motion module and default windows, each in a fresh process."""
    counts = [int(c) for c in args.frames.split(",")]
    runs = {}
    for count in counts:
        out = subprocess.run(
            [sys.executable, __file__, "memory-one", "--frames", str(count), "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs[count] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(runs[count]), flush=True)
    first, last = runs[counts[0]], runs[counts[-1]]
    return {
        "steps": args.steps,
        "runs": runs,
        "peak_ratio": last["peak_rss_mb"] / first["peak_rss_mb"],
        "target_met": last["peak_rss_mb"] / first["peak_rss_mb"] <= 1.1,
    }


def memory_one(args) -> None:
    """One edit of a looped benchmark clip; prints its peak RSS and largest UNet batch as JSON."""
    import torch

    from editing.lora import ModelOptions
    from editing.models import load_backbone
    from editing.pipeline import edit_video
    from shapes_world import benchmark

    torch.set_num_threads(1)
    count = int(args.frames)
    clip = benchmark.benchmark_clip(0, frames=min(64, count))
    frames = np.concatenate([clip.frames, clip.frames[::-1]] * math.ceil(count / (2 * len(clip.frames))))[:count]
    seen = []
    backbone = load_backbone("shapes", device="cpu", options=ModelOptions(motion_adapter=MOTION))
    handle = backbone.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(int(a[0].shape[0] * a[0].shape[2])), with_kwargs=True
    )
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        video = benchmark.write_lossless(work / "clip.mp4", frames)
        edit = next(e for e in benchmark.derive_edits(clip) if e.kind == "colour")
        benchmark.SETTINGS["memory"] = {"attention": "first", "motion_adapter": MOTION}
        request = benchmark.edit_request("memory", edit, video, work / "out.zip", args.steps, "shapes", work / "cache")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        edit_video(request)
    handle.remove()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "frames": count,
                "peak_rss_mb": peak / 1024,
                "rss_before_edit_mb": before / 1024,
                "largest_unet_batch": max(seen),
                "unet_calls": len(seen),
            }
        )
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("quality", "seams", "memory", "memory-one"))
    parser.add_argument("--clips", default="0,4,5,6")
    parser.add_argument("--frames", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    _log_setup()
    import torch

    torch.set_num_threads(args.threads)
    if args.part == "memory-one":
        memory_one(args)
        return 0
    if args.frames is None:
        args.frames = {"seams": "48", "memory": "16,128"}.get(args.part)
    if args.part == "seams":
        args.frames = int(args.frames)
    result = {"quality": quality, "seams": seams, "memory": memory}[args.part](args)
    result["command"] = "python benchmarks/motion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["machine"] = f"CPU, torch threads {args.threads}, fp32, shared 2-core machine (other jobs running), nice 19"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"motion-{args.part}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
