"""Peak memory of each consistency mode next to `first`, and its growth with clip length, with the full
SD-1.5 architecture (`sd15-random`: memory does not depend on weight values).

Each (setting, frame count) edits the same clip in a fresh process, from an empty cache, and reports that
process's peak resident memory (ru_maxrss: model weights included). Clips longer than the source are
played forth and back. Prints a table with the peak in MB, the ratio to `first` at the same length, and the
ratio to the same setting at the shortest length.

    python benchmarks/mode_memory.py                                   # 32 frames, 128 px, 2 steps, every mode
    python benchmarks/mode_memory.py --settings first --frames 16,128 --size 256 --steps 1   # growth with length
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "assets" / "man-skiing.mp4"

# setting -> the edit command's options over the defaults (DDIM inversion, guidance 7.5, chunks of 8); the
# settings without keyframes edit every frame (child: keyframes "off" unless named)
SETTINGS: dict[str, dict] = {
    "first": {"attention": "first", "keyframes": "off"},
    "sparse-causal": {"attention": "sparse-causal"},
    "full": {"attention": "full"},
    "flow": {"attention": "flow"},
    "full-merge": {"attention": "full", "token_merge": 0.5},
    "first-bank": {"attention": "first", "feature_bank": 4},
    "tokenflow": {"attention": "tokenflow"},
    "first-keyframes-4": {"attention": "first", "keyframes": "4"},
    "first-keyframes-8": {"attention": "first", "keyframes": "8"},  # the edit command's default
    "first-keyframes-auto": {"attention": "first", "keyframes": "auto"},
    "first-latent-fusion": {"attention": "first", "smooth": "flow"},
    "first-pixel-fusion": {"attention": "first", "smooth": "pixel"},
}

CHILD = """
import json, resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from editing.config import FrameSelection
from editing.context import EditParts
from editing.models import load_backbone
from editing.requests import build_request
from editing.staging import edit_clip
from editing.video_io import read_clip

values = json.loads(sys.argv[2])
count = values.pop("count")
source = read_clip(values["video"], FrameSelection(max_frames=1000, size=values["size"])).frames
order = np.concatenate([np.arange(len(source)), np.arange(len(source) - 2, 0, -1)])  # forth and back
frames = source[np.resize(order, count)]
request = build_request("edit", values)
backbone = load_backbone(request.model, "cpu", "fp32", options=request.model_options)
edit_clip(frames, EditParts.of(request), backbone)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_mb(setting: str, frames: int, args, cache: Path) -> float:
    """Peak RSS (MB) of one edit of `frames` frames under `setting`, in a fresh process."""
    values = {
        "video": str(CLIP),
        "out": "unused.mp4",
        "prompt": "a watercolor painting",
        "model": "sd15-random",
        "device": "cpu",
        "dtype": "fp32",
    }
    values |= {
        "frames": frames,
        "size": args.size,
        "steps": args.steps,
        "chunk": args.chunk,
        "cache_dir": str(cache / f"{setting}-{frames}"),
        "count": frames,
    }
    values |= {"keyframes": "off"} | SETTINGS[setting]
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), json.dumps(values)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(
            f"error: {setting} at {frames} frames failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="32", help="comma-separated clip lengths")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="memory does not grow with steps")
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown setting {unknown[0]!r}; choose from {', '.join(SETTINGS)}")
    lengths = sorted({int(n) for n in args.frames.split(",") if n.strip()})
    peaks: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as work:
        for frames in lengths:
            for name in names:
                peaks[name, frames] = peak_mb(name, frames, args, Path(work))
                print(f"  {name}, {frames} frames: {peaks[name, frames]:.0f} MB", file=sys.stderr, flush=True)
    print(
        f"\nsd15-random, fp32 on CPU, {args.size} px, {args.steps} step(s), chunks of {args.chunk}; peak RSS of the whole process (weights included)\n"
    )
    print("| setting | frames | peak RSS (MB) | / first, same length | / same setting at " + f"{lengths[0]} frames |")
    print("|---|---|---|---|---|")
    for (name, frames), peak in peaks.items():
        first = peaks.get(("first", frames))
        print(
            f"| {name} | {frames} | {peak:.0f} | {'' if first is None else f'{peak / first:.2f}'} | {peak / peaks[name, lengths[0]]:.2f} |"
        )


if __name__ == "__main__":
    main()
