"""What one-shot tuning costs, measured in one run on this machine with the full SD-1.5 architecture (random weights).

Each configuration (plain, gradient checkpointing) runs in a fresh process, which prints: seconds per
tuning step (median of the steps after the first), the same batch's inference forward pass for
comparison, peak RSS before and during tuning, the tuned parameter count and the file size. Speed and
memory do not depend on weight values, so `sd15-random` measures the real cost.

    python benchmarks/tune_cost.py                  # 256 px, 8 frames, 4 steps per configuration
    python benchmarks/tune_cost.py --max-gb 12      # refuse (and report) a run that would need more memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "assets" / "man-skiing.mp4"


def measure(size: int, frames: int, steps: int, checkpointing: bool, model: str = "sd15-random") -> dict:
    """In this process: tune the model on the clip and return the figures as a dict."""
    import resource
    import statistics
    import tempfile
    import time

    import torch

    from editing import sampling
    from editing.attention.cross_frame import layer_kwargs, layout_for
    from editing.attention.tuned import TunedControl
    from editing.config import FrameSelection
    from editing.models import load_backbone
    from editing.tuning import TuneConfig, inflate, save_tuned, tune_weights
    from editing.video_io import read_clip

    backbone = load_backbone(model, device="cpu")
    clip = read_clip(CLIP, FrameSelection(max_frames=frames, size=size))
    latents = sampling.encode_frames(backbone, clip.frames, frames)
    text = sampling.encode_prompts(backbone, ["a man skiing"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    layout = layout_for("sparse-causal", list(range(frames)))
    with TunedControl(inflate(backbone, 0)).processors(backbone.unet), torch.no_grad():
        begin = time.perf_counter()
        backbone.unet(
            latents, 500, encoder_hidden_states=text.expand(frames, -1, -1), cross_attention_kwargs=layer_kwargs(layout)
        )
        forward = time.perf_counter() - begin
    stamps = [time.perf_counter()]
    config = TuneConfig(
        "a man skiing", FrameSelection(max_frames=frames, size=size), steps=steps, gradient_checkpointing=checkpointing
    )
    weights, losses = tune_weights(backbone, latents, text, config, lambda *_: stamps.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tuned.safetensors"
        save_tuned(path, weights, {"format": "benchmark"})
        file_mb = path.stat().st_size / 1e6
    return {
        "seconds_per_step": statistics.median(per_step[1:] or per_step),
        "first_step": per_step[0],
        "forward": forward,
        "rss_before_mb": before,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": sum(p.numel() for p in weights.parameters()),
        "unet_parameters": sum(p.numel() for p in backbone.unet.parameters()),
        "file_mb": file_mb,
        "threads": torch.get_num_threads(),
    }


CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
if float(sys.argv[6]) > 0:
    cap = int(float(sys.argv[6]) * 1024**3)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
from benchmarks.tune_cost import measure
print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[7])))
"""


def run_child(args, checkpointing: bool) -> dict | None:
    """One configuration in a fresh process (so its peak RSS is its own); None when it ran out of memory."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(ROOT),
            str(args.size),
            str(args.frames),
            str(args.steps),
            "1" if checkpointing else "0",
            str(args.max_gb),
            args.model,
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(
            f"{'checkpointed' if checkpointing else 'plain'} run failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr
        )
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="tuning steps per configuration (the first is reported apart)")
    parser.add_argument("--model", default="sd15-random", help="tiny for a quick check of the script")
    parser.add_argument("--max-gb", type=float, default=0, help="cap on each run's data memory in GB (0 = none)")
    args = parser.parse_args()

    results = {"gradient checkpointing": run_child(args, True), "plain": run_child(args, False)}
    rows = []
    for name, figures in results.items():
        if figures is None:
            rows.append((f"{name}: seconds per tuning step", f"not measured (over {args.max_gb} GB or failed)"))
            continue
        rows.append((f"{name}: seconds per tuning step", f"{figures['seconds_per_step']:.1f}"))
        rows.append(
            (
                f"{name}: tuning step / inference forward of the same batch",
                f"{figures['seconds_per_step'] / figures['forward']:.1f}",
            )
        )
        rows.append((f"{name}: peak RSS while tuning (MB)", f"{figures['peak_mb']:.0f}"))
        rows.append((f"{name}: peak RSS added by tuning (MB)", f"{figures['peak_mb'] - figures['rss_before_mb']:.0f}"))
    any_run = next((f for f in results.values() if f is not None), None)
    if any_run is not None:
        rows.append(
            (
                "tuned parameters / UNet parameters",
                f"{any_run['parameters'] / 1e6:.1f} M / {any_run['unet_parameters'] / 1e6:.0f} M",
            )
        )
        rows.append(("tuned weights file (fp32, MB)", f"{any_run['file_mb']:.0f}"))
    threads = any_run["threads"] if any_run else "?"
    print(
        f"\n{args.model} on {threads} CPU threads, {args.size} px, {args.frames} frames, sparse-causal, {args.steps} tuning steps per run\n"
    )
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
