"""Live streaming (editing.stream): speed from the `live` CLI, sd15-random seconds per frame, and quality of a
streamed shapes clip against the file path and per-frame img2img at the same steps.

    PYTHONPATH=. .venv/bin/python -m benchmarks.live --clips 3 --out benchmarks/results/live.json

Rows of the quality table (all `--model shapes --preset fast`, the same few LCM steps and strength):
  live      frames pushed one at a time through StreamEditor (anchor + bank of the last 4 frames)
  file      `python -m editing edit` with the preset's defaults (the whole clip at once: cross-frame attention
            to frame 0 and the feature bank across chunks)
  img2img   each frame on its own (`--attention none --feature-bank 0`)
Metrics from shapes_world.benchmark.measure (ground-truth motion): warp error (8-bit levels, lower is steadier),
colour flicker of the edited object (std over frames), edit accuracy. Prints ratios live/file and live/img2img.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEED_FRAMES = 24


def cli_speed(clip_path: Path, prompt: str, out_dir: Path) -> dict:
    """FPS and mean latency printed by `python -m editing live --json` (shapes, fast preset, 64 px)."""
    out = out_dir / "live-speed.mp4"
    command = [
        sys.executable,
        "-m",
        "editing",
        "live",
        str(clip_path),
        "--out",
        str(out),
        "--model",
        "shapes",
        "--preset",
        "fast",
    ]
    command += ["--prompt", prompt, "--device", "cpu", "--json"]
    load_before = os.getloadavg()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "command": " ".join(["python", *command[1:]]),
        "fps": result["fps"],
        "latency_ms": result["latency_ms"],
        "cpu_ms": result["cpu_ms"],
        "frames": result["frames"],
    } | {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }


def sd15_seconds_per_frame(frames: int = 3) -> dict:
    """Seconds per frame of the streaming engine on sd15-random at 256 px (fast preset, random LoRA, tiny autoencoder)."""
    from editing.requests import edit_request
    from editing.stream import StreamEditor

    request = edit_request(
        {
            "video": "live",
            "out": "live.mp4",
            "model": "sd15-random",
            "preset": "fast",
            "prompt": "a watercolor painting",
            "device": "cpu",
        }
    )
    begin = time.perf_counter()
    editor = StreamEditor.from_request(request)
    loaded = time.perf_counter() - begin
    image = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    seconds = []
    with editor:
        for _ in range(frames):
            start = time.perf_counter()
            editor.push(image)
            seconds.append(time.perf_counter() - start)
    measured = {"model": "sd15-random", "size": 256, "load_seconds": round(loaded, 1)}
    measured |= {
        "seconds_per_frame": [round(s, 2) for s in seconds],
        "steps": request.edit.steps,
        "strength": request.edit.strength,
    }
    return measured | {"load_average": [round(x, 2) for x in os.getloadavg()]}


def quality(clips: int, out_dir: Path) -> dict:
    """Warp error, flicker and accuracy of live / file / img2img on the first `clips` benchmark clips (first edit each)."""
    from editing.pipeline import edit_video
    from editing.requests import edit_request
    from editing.stream import StreamEditor, stream_frames
    from shapes_world.benchmark import benchmark_clip, derive_edits, measure, write_lossless

    rows = []
    backbone = None
    for index in range(clips):
        clip = benchmark_clip(index)
        edit = derive_edits(clip)[0]
        video = write_lossless(out_dir / f"clip{index}.mp4", clip.frames)
        base = {
            "video": str(video),
            "model": "shapes",
            "preset": "fast",
            "prompt": edit.prompt,
            "device": "cpu",
            "cache_dir": str(out_dir / "cache"),
        }
        outputs = {}
        for name, extra in (("file", {}), ("img2img", {"attention": "none", "feature_bank": 0})):
            request = edit_request(base | extra | {"out": str(out_dir / f"{name}{index}.mp4"), "given_options": set(extra)})
            start = time.perf_counter()
            outputs[name] = (edit_video(request).images, time.perf_counter() - start)
        editor = StreamEditor.from_request(edit_request(base | {"out": str(out_dir / f"live{index}.mp4")}), backbone)
        backbone = editor.backbone  # loaded once; a fresh engine (and bank) per clip
        start = time.perf_counter()
        with editor:
            outputs["live"] = (stream_frames(editor, clip.frames), time.perf_counter() - start)
        for name, (frames, seconds) in outputs.items():
            metrics = measure(clip, frames, edit)
            rows.append(
                {"clip": index, "edit": edit.kind, "setting": name, "seconds_per_frame": round(seconds / len(frames), 3)}
                | {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k != "warp_errors"}
            )
    summary = {}
    for name in ("live", "file", "img2img"):
        mine = [r for r in rows if r["setting"] == name]
        summary[name] = {
            k: round(float(np.nanmean([r[k] for r in mine])), 4)
            for k in ("warp_error", "flicker", "edit_accuracy", "seconds_per_frame")
        }
    ratios = {
        f"live/{other}": {
            k: round(summary["live"][k] / summary[other][k], 3) if summary[other][k] else None for k in ("warp_error", "flicker")
        }
        for other in ("file", "img2img")
    }
    return {"rows": rows, "mean": summary, "ratios": ratios}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/live.json")
    parser.add_argument("--skip", action="append", default=[], choices=("speed", "sd15", "quality"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results: dict = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": 1}}
    out_path = ROOT / args.out
    if out_path.exists():
        results |= json.loads(out_path.read_text())  # resumable: parts measured before are kept unless rerun
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if "speed" not in args.skip:
            from shapes_world.benchmark import benchmark_clip, derive_edits, write_lossless

            clip = benchmark_clip(0, frames=SPEED_FRAMES)
            video = write_lossless(work / "speed.mp4", clip.frames)
            results["cli_speed"] = cli_speed(video, derive_edits(clip)[0].prompt, work)
            print("cli speed", results["cli_speed"], flush=True)
            out_path.write_text(json.dumps(results, indent=1))
        if "quality" not in args.skip:
            results["quality"] = quality(args.clips, work)
            print("quality", json.dumps(results["quality"]["mean"]), json.dumps(results["quality"]["ratios"]), flush=True)
            out_path.write_text(json.dumps(results, indent=1))
        if "sd15" not in args.skip:
            results["sd15"] = sd15_seconds_per_frame()
            print("sd15", results["sd15"], flush=True)
            out_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
