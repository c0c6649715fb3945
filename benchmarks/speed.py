"""Interactive speed, measured side by side in one run: seconds and UNet image evaluations per output frame
for editing every frame (the default before), the default edit (keyframes then propagation), each consistency mode, keyframes then propagation, and the fast preset (alone and
with keyframes), with the full SD-1.5 architecture (`sd15-random`: cost does not depend on weight values).

Every setting edits the same clip from an empty cache, so inversion is counted. A UNet image evaluation
is one frame through the UNet once (a guided step costs two; a step cache's cheaper pass counts as one);
the autoencoder's share is the time inside VAE encode and decode calls. `UNet s/frame` is the time inside
UNet calls of the sampling loop (DDIM inversion, which runs without step caches, apart), per output frame;
a setting `X+CACHE` is setting X with a step cache (`--step-cache`), and its ratios are taken against X.

    python benchmarks/speed.py                        # 16 frames, 128 px, 10 steps
    python benchmarks/speed.py --frames 16 --size 256 --steps 10
    python benchmarks/speed.py --settings every-frame,keyframes-8,fast   # a subset
    python benchmarks/speed.py --device cuda --dtype fp16 --size 512 --settings default,fast   # on a GPU (benchmarks/gpu_check.sh)

On a CUDA device the timers synchronise the device around each timed call, and each setting's peak GPU
memory (torch.cuda.max_memory_allocated, model weights included) is a column of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "assets" / "man-skiing.mp4"

# setting -> the edit command's options over the defaults (first-frame attention, DDIM inversion, guidance 7.5);
# every setting edits every frame unless it names its keyframes. `every-frame` (the default before keyframes
# then propagation became it, at --strength 1) is the base of the ratios; `default` is the edit command's
# default now (keyframes 8, at the default strength); the others run the whole schedule (strength 1) like the base.
BASE = "every-frame"
SETTINGS: dict[str, dict] = {
    "every-frame": {},
    "default": {"keyframes": None},
    "flow": {"attention": "flow"},
    "token-merge-0.5": {"attention": "full", "token_merge": 0.5},
    "feature-bank-4": {"feature_bank": 4},
    "tokenflow": {"attention": "tokenflow"},
    "keyframes-8": {"keyframes": "8"},
    "fast": {"preset": "fast"},
    "fast-keyframes-8": {"preset": "fast", "keyframes": "8"},
    # step caches (editing.stepcache), each against the setting before its first '+'
    "every-frame+deepcache-3": {"step_cache": "deepcache:3"},
    "every-frame+tome-0.5": {"step_cache": "tome:0.5"},
    "every-frame+deepcache-3+tome-0.5": {"step_cache": "deepcache:3,tome:0.5"},
    "default+deepcache-3": {"keyframes": None, "step_cache": "deepcache:3"},
    "fast+deepcache-2": {"preset": "fast", "step_cache": "deepcache:2"},
    # a motion module (random weights on sd15-random: the cost of a real one) over 16-frame context windows
    "motion": {"attention": "none", "motion_adapter": "random"},
    "motion-first": {"motion_adapter": "random"},
}


class Counter:
    """UNet image evaluations (frames through the UNet's forward: batch items, times frames for a motion UNet)
    and seconds inside modules' forwards."""

    def __init__(self, sync=lambda: None):
        self.images = 0
        self.seconds: dict[str, float] = {}
        self.sync = sync  # waits for the device's queued work, so the timers time it (CUDA runs asynchronously)
        self.inverting = False

    @contextlib.contextmanager
    def watching(self, backbone):
        import editing.core as core

        unet, vae = backbone.unet, backbone.vae
        originals = [(vae, "encode", vae.encode), (vae, "decode", vae.decode)]
        began = []

        def before(module, args, kwargs):  # module hooks time whatever forward runs (a step cache's included)
            sample = args[0] if args else kwargs["sample"]
            self.images += sample.shape[0] * (sample.shape[2] if sample.ndim == 5 else 1)  # a motion UNet's (B, C, F, H, W)
            self.sync()
            began.append(time.perf_counter())

        def after(module, args, kwargs, output):
            self.sync()
            name = "unet-invert" if self.inverting else "unet"
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began.pop()

        invert = core.ddim_invert

        def inverting(*args, **kwargs):
            self.inverting = True
            try:
                return invert(*args, **kwargs)
            finally:
                self.inverting = False

        hooks = [unet.register_forward_pre_hook(before, with_kwargs=True), unet.register_forward_hook(after, with_kwargs=True)]
        core.ddim_invert = inverting

        def timed(name, function):
            def call(sample, *args, **kwargs):
                self.sync()
                begin = time.perf_counter()
                try:
                    return function(sample, *args, **kwargs)
                finally:
                    self.sync()
                    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

            return call

        vae.encode, vae.decode = timed("vae", vae.encode), timed("vae", vae.decode)
        try:
            yield self
        finally:
            core.ddim_invert = invert
            for hook in hooks:
                hook.remove()
            for module, name, _ in originals:
                delattr(module, name)  # back to the class's method


def run(setting: str, args, backbones: dict, frames, cache: Path) -> dict:
    import torch

    from editing.context import EditParts
    from editing.models import load_backbone
    from editing.requests import build_request
    from editing.staging import edit_clip

    values = {
        "video": str(CLIP),
        "out": "unused.mp4",
        "prompt": "a watercolor painting",
        "model": "sd15-random",
        "device": args.device,
        "dtype": args.dtype,
    }
    values |= {"frames": args.frames, "size": args.size, "cache_dir": str(cache / setting), "keyframes": "off"} | SETTINGS[
        setting
    ]
    if "preset" not in SETTINGS[setting]:
        values["steps"] = args.steps  # a preset runs its own steps (fast: the last 4 of 8)
        if setting.split("+")[0] != "default":
            values["strength"] = 1.0  # the whole schedule, whatever the default strength; a preset keeps its own
    request = build_request("edit", values)
    key = repr(request.model_options)
    if key not in backbones:
        backbones[key] = load_backbone(request.model, args.device, args.dtype, options=request.model_options)
    backbone = backbones[key]
    cuda = backbone.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    counter = Counter(sync)
    with counter.watching(backbone):
        sync()
        begin = time.perf_counter()
        edited = edit_clip(frames, EditParts.of(request), backbone)
        sync()
        seconds = time.perf_counter() - begin
    count = len(frames)
    return {
        "setting": setting,
        "s/frame": seconds / count,
        "UNet evals/frame": counter.images / count,
        "UNet s/frame": counter.seconds.get("unet", 0.0) / count,
        "inversion UNet s/frame": counter.seconds.get("unet-invert", 0.0) / count,
        "VAE share": counter.seconds.get("vae", 0.0) / seconds,
        "keyframes": "-" if edited.keyframes is None else len(edited.keyframes),
        "peak GPU MB": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", help="fp32 (the CPU: bf16 is emulated there), fp16 on a GPU")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also save the rows with the command, date and commit (copy to benchmarks/results/speed-*.json for the docs)",
    )
    args = parser.parse_args()

    import torch

    from editing.attention.modes import attention_mode_names
    from editing.config import FrameSelection
    from editing.video_io import read_clip

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    names = [n for n in names if SETTINGS[n].get("attention", "first") in attention_mode_names()]
    frames = read_clip(CLIP, FrameSelection(max_frames=args.frames, size=args.size)).frames
    rows, backbones = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            rows[name] = run(name, args, backbones, frames, Path(work))
            print(
                f"  {name}: {rows[name]['s/frame']:.3f} s/frame, {rows[name]['UNet evals/frame']:.2f} UNet evals/frame, {rows[name]['UNet s/frame']:.3f} UNet s/frame",
                file=sys.stderr,
                flush=True,
            )

    height, width = frames.shape[1:3]
    gpu = any(row["peak GPU MB"] is not None for row in rows.values())
    where = torch.cuda.get_device_name() if gpu else f"{torch.get_num_threads()} CPU threads"
    print(f"\nsd15-random, {args.dtype} on {where}, {len(frames)} frames at {width}x{height}, {args.steps} steps\n")
    print(
        "| setting | s / frame | UNet evals / frame | UNet s / frame (sampling) | VAE share of time | keyframes |"
        + (" peak GPU MB |" if gpu else "")
    )
    print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for row in rows.values():
        memory = f" {row['peak GPU MB']:.0f} |" if gpu else ""
        print(
            f"| {row['setting']} | {row['s/frame']:.3f} | {row['UNet evals/frame']:.2f} | {row['UNet s/frame']:.3f} | {row['VAE share']:.0%} | {row['keyframes']} |{memory}"
        )
    if args.json:
        from shapes_world.benchmark import provenance

        document = {
            "model": "sd15-random",
            "device": where,
            "dtype": args.dtype,
            "frames": len(frames),
            "size": [width, height],
            "steps": args.steps,
            "rows": list(rows.values()),
        }
        document |= provenance() | {"command": "python benchmarks/speed.py " + " ".join(sys.argv[1:])}
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    base = rows.get(BASE)
    print("\n| ratio (same run) | value |\n|---|---|")
    for name, row in rows.items():
        plain = rows.get(name.split("+")[0])
        if "+" in name and plain is not None:  # a step cache against the same setting without it
            print(
                f"| {name} / {plain['setting']}, UNet time per frame (sampling) | {row['UNet s/frame'] / plain['UNet s/frame']:.3f} |"
            )
            print(f"| {name} / {plain['setting']}, wall time per frame | {row['s/frame'] / plain['s/frame']:.3f} |")
    if base:
        for name, row in rows.items():
            if name != BASE and "+" not in name:
                print(f"| {name} / {BASE}, wall time per frame | {row['s/frame'] / base['s/frame']:.3f} |")
                print(f"| {name} / {BASE}, UNet evals per frame | {row['UNet evals/frame'] / base['UNet evals/frame']:.3f} |")


if __name__ == "__main__":
    main()
