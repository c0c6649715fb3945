"""The first look and the peers' rows, measured in one run with `sd15-random` (cost does not depend on weights).

First look: seconds from an edit request to its first edited frame with the model loaded, for the app's
"Preview first frame" (the default edit on the first PREVIEW_FRAMES frames, decoding only the first) and
"Fast preview" (the same with `--preset fast`), each with and without the step cache named by
--step-cache. Peers: the same clip through diffusers' AnimateDiffVideoToVideoPipeline (a random
MotionAdapter of AnimateDiff's shape) and through Text2Video-Zero's cross-frame processor
(diffusers' CrossFrameAttnProcessor2_0 on StableDiffusionImg2ImgPipeline), seconds per output frame, and
our default and fast edits of the same clip for the ratio. Peak GPU memory per row on CUDA.

    python benchmarks/gpu_peers.py --device cuda --dtype fp16 --size 512 --frames 16 --steps 10
    python benchmarks/gpu_peers.py --size 64 --frames 2 --steps 2      # a CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIP = ROOT / "assets" / "man-skiing.mp4"
PROMPT = "a watercolor painting"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device, run) -> tuple[float, float | None]:
    """(seconds, peak GPU MB or None) of `run()`."""
    import torch

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    begin = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - begin, (torch.cuda.max_memory_allocated() / 2**20 if cuda else None)


def our_request(args, frames: int, **values):
    from editing.requests import build_request

    base = {
        "video": str(CLIP),
        "out": "unused.mp4",
        "prompt": PROMPT,
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "frames": frames,
        "size": args.size,
    }
    if "preset" not in values:
        base["steps"] = args.steps
    return build_request("edit", base | values)


def our_edit(args, backbones: dict, frames, request, decode=None) -> None:
    from editing.context import EditParts
    from editing.models import load_backbone
    from editing.staging import edit_clip

    key = repr(request.model_options)
    if key not in backbones:
        backbones[key] = load_backbone(request.model, args.device, args.dtype, options=request.model_options)
    request = dataclasses.replace(request, decode_frames=decode) if decode is not None else request
    edit_clip(frames, EditParts.of(request), backbones[key])


def animatediff(args, backbone, frames) -> None:
    """The clip through AnimateDiffVideoToVideoPipeline with a random MotionAdapter (AnimateDiff v1.5's shape)."""
    import torch
    from diffusers import AnimateDiffVideoToVideoPipeline, MotionAdapter
    from PIL import Image

    torch.manual_seed(0)
    config = backbone.unet.config
    adapter = MotionAdapter(
        block_out_channels=tuple(config.block_out_channels),
        motion_layers_per_block=config.layers_per_block,
        motion_norm_num_groups=config.norm_num_groups,
    )
    adapter = adapter.to(backbone.device, backbone.dtype)  # AnimateDiff v1.5's shape for SD-1.5
    pipe = AnimateDiffVideoToVideoPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        motion_adapter=adapter,
        scheduler=backbone.scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    video = [Image.fromarray(f) for f in frames]
    height, width = frames.shape[1:3]
    pipe(
        video=video,
        prompt=PROMPT,
        num_inference_steps=args.steps,
        strength=1.0,
        guidance_scale=7.5,
        height=height,
        width=width,
        output_type="np",
    )


def text2video_zero(args, backbone, frames) -> None:
    """The clip through StableDiffusionImg2ImgPipeline with Text2Video-Zero's first-frame cross-frame attention."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0
    from PIL import Image

    pipe = StableDiffusionImg2ImgPipeline(
        vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
        scheduler=backbone.scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    original = dict(backbone.unet.attn_processors)
    try:
        backbone.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
        pipe(
            prompt=[PROMPT] * len(frames),
            image=[Image.fromarray(f) for f in frames],
            strength=1.0,
            num_inference_steps=args.steps,
            output_type="np",
        )
    finally:
        backbone.unet.set_attn_processor(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", default="sd15-random", help="sd15-random (the cost of SD-1.5) or tiny (a smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--step-cache", default="deepcache:3", help="the step cache of the 'with' rows")
    parser.add_argument("--skip-peers", action="store_true", help="only the first-look rows")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args()

    from editing.config import FrameSelection
    from editing.video_io import read_clip
    from ui.backend import PREVIEW_FRAMES

    frames = read_clip(CLIP, FrameSelection(max_frames=args.frames, size=args.size)).frames
    backbones: dict = {}
    rows = []
    first = our_request(args, PREVIEW_FRAMES)
    device = None

    def row(name: str, run, per: int):
        nonlocal device
        seconds, memory = _timed(device, run)
        rows.append({"row": name, "seconds": seconds / per, "per": "frame" if per > 1 else "first frame", "peak GPU MB": memory})
        print(
            f"  {name}: {seconds / per:.3f} s per {'frame' if per > 1 else 'first frame'}"
            + (f", {memory:.0f} MB" if memory else ""),
            file=sys.stderr,
            flush=True,
        )

    our_edit(args, backbones, frames[:PREVIEW_FRAMES], first, decode=(0,))  # load and warm up (kernels, caches)
    our_edit(
        args, backbones, frames[:PREVIEW_FRAMES], our_request(args, PREVIEW_FRAMES, preset="fast"), decode=(0,)
    )  # the fast preset's LoRA copy too
    device = next(iter(backbones.values())).device
    for label, values in (("Preview first frame", {}), ("Fast preview", {"preset": "fast"})):
        for cache in (None, args.step_cache):
            request = our_request(args, PREVIEW_FRAMES, keyframes="off", **values, **({"step_cache": cache} if cache else {}))
            row(
                f"first look: {label}" + (f" + {cache}" if cache else ""),
                lambda r=request: our_edit(args, backbones, frames[:PREVIEW_FRAMES], r, decode=(0,)),
                1,
            )
    if not args.skip_peers:
        plain = backbones[repr(first.model_options)]
        row("ours: default (keyframes 8)", lambda: our_edit(args, backbones, frames, our_request(args, len(frames))), len(frames))
        row(
            "ours: every frame (first-frame attention, strength 1)",
            lambda: our_edit(args, backbones, frames, our_request(args, len(frames), keyframes="off", strength=1.0)),
            len(frames),
        )
        row(
            "ours: fast",
            lambda: our_edit(args, backbones, frames, our_request(args, len(frames), preset="fast", keyframes="off")),
            len(frames),
        )
        row(
            "diffusers AnimateDiffVideoToVideoPipeline (random motion adapter, strength 1)",
            lambda: animatediff(args, plain, frames),
            len(frames),
        )
        row(
            "diffusers Text2Video-Zero processor, img2img (strength 1)", lambda: text2video_zero(args, plain, frames), len(frames)
        )
    print(f"\n{args.model}, {args.dtype} on {device}, {len(frames)} frames at {args.size} px, {args.steps} steps\n")
    print("| row | seconds | per | peak GPU MB |\n|---|---|---|---|")
    for r in rows:
        memory = "-" if r["peak GPU MB"] is None else f"{r['peak GPU MB']:.0f}"
        print(f"| {r['row']} | {r['seconds']:.3f} | {r['per']} | {memory} |")
    if args.json:
        from shapes_world.benchmark import provenance

        document = {
            "model": args.model,
            "device": str(device),
            "dtype": args.dtype,
            "frames": len(frames),
            "size": args.size,
            "steps": args.steps,
            "rows": rows,
        }
        Path(args.json).write_text(
            json.dumps(
                document | provenance() | {"command": "python benchmarks/gpu_peers.py " + " ".join(sys.argv[1:])}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
