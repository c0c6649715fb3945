"""What an edit costs, measured in one run on this machine with the full SD-1.5 architecture (random weights).

Prints: seconds per frame per step; the share of time inside UNet and ControlNet calls (the rest is our
overhead); a second prompt on the cached inversion relative to the first; peak RSS for 8 versus 32
frames; and the same first-frame + ControlNet edit through diffusers' deprecated Text2Video-Zero
processor on StableDiffusionControlNetPipeline, as a ratio. Speed and memory do not depend on weight
values, so `sd15-random` measures the real cost.

    python benchmarks/edit_cost.py                 # 256 px, 8 frames, 20 steps (about 20 min on 2 cores)
    python benchmarks/edit_cost.py --steps 4       # a quick look
    python benchmarks/edit_cost.py --steps 5 --compare-only   # only the Text2Video-Zero row
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editing.config import ControlSpec, EditConfig, EngineConfig, FrameSelection  # noqa: E402
from editing.pipeline import EditRequest, edit_video  # noqa: E402

CLIP = ROOT / "assets" / "man-skiing.mp4"


class CallTimer:
    """Seconds spent inside a module's forward calls (or another method), by wrapping the instance's method."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def wrap(self, module, method: str = "forward"):
        original = getattr(module, method)

        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - begin

        setattr(module, method, timed)
        try:
            yield
        finally:
            delattr(module, method)  # back to the class's method


def request(args, out: Path, prompt: str, cache: str, frames: int | None = None, **engine) -> EditRequest:
    return EditRequest(
        video=str(CLIP),
        output=str(out),
        edit=EditConfig(prompt=prompt, steps=args.steps, guidance=7.5, strength=engine.pop("strength", 1.0)),
        selection=FrameSelection(max_frames=frames or args.frames, size=args.size),
        model="sd15-random",
        device="cpu",
        engine=EngineConfig(attention="first", chunk=args.chunk, cache_dir=cache, controls=(ControlSpec("canny"),), **engine),
    )


PEAK = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from benchmarks.edit_cost import request
from editing.pipeline import edit_video
import argparse
args = argparse.Namespace(steps=int(sys.argv[2]), frames=int(sys.argv[3]), size=int(sys.argv[4]), chunk=int(sys.argv[7]))
edit_video(request(args, sys.argv[5], "a watercolor painting", sys.argv[6]))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(args, frames: int, workdir: Path) -> float:
    """Peak resident memory (MB) of a whole edit in a fresh process."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PEAK,
            str(ROOT),
            str(args.memory_steps),
            str(frames),
            str(args.size),
            str(workdir / f"m{frames}.mp4"),
            str(workdir / f"c{frames}"),
            str(args.chunk),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def diffusers_t2v_zero(args, backbone, controlnet, condition_images) -> float:
    """Seconds for the same first-frame + ControlNet edit through diffusers' deprecated Text2Video-Zero processor."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import CrossFrameAttnProcessor2_0
    from PIL import Image

    pipe = StableDiffusionControlNetPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        controlnet=controlnet,
        scheduler=backbone.scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    original_unet, original_cn = dict(backbone.unet.attn_processors), dict(controlnet.attn_processors)
    height, width = condition_images.shape[1:3]
    latents = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(0)).repeat(args.frames, 1, 1, 1)
    images = [Image.fromarray(frame) for frame in condition_images]
    try:
        backbone.unet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
        controlnet.set_attn_processor(CrossFrameAttnProcessor2_0(batch_size=2))
        begin = time.perf_counter()
        pipe(
            prompt=["a watercolor painting"] * args.frames,
            image=images,
            latents=latents,
            num_inference_steps=args.steps,
            height=height,
            width=width,
            output_type="np",
        )
        return time.perf_counter() - begin
    finally:
        backbone.unet.set_attn_processor(original_unet)
        controlnet.set_attn_processor(original_cn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=8, help="frames per UNet call (the 32-frame memory run is chunked by this)")
    parser.add_argument("--memory-only", action="store_true", help="only the 8- versus 32-frame peak memory rows")
    parser.add_argument(
        "--memory-steps", type=int, default=2, help="steps of the 8- vs 32-frame memory runs (memory does not grow with steps)"
    )
    parser.add_argument("--compare-only", action="store_true", help="only the row against diffusers' Text2Video-Zero")
    args = parser.parse_args()

    import torch

    from editing.models import load_backbone, load_controlnet

    rows = []
    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        if not args.memory_only:
            backbone = load_backbone("sd15-random", device="cpu")
            controlnet = load_controlnet("random", backbone)
            if not args.compare_only:
                rows += timed_rows(args, backbone, controlnet, work, workdir)
            rows += comparison_rows(args, backbone, controlnet, work, workdir)
        if not args.compare_only:
            peak8, peak32 = peak_rss(args, 8, workdir), peak_rss(args, 32, workdir)
            rows.append((f"peak RSS, 8 frames (MB, {args.memory_steps} steps)", f"{peak8:.0f}"))
            rows.append((f"peak RSS, 32 frames in chunks of {args.chunk} (MB, {args.memory_steps} steps)", f"{peak32:.0f}"))
            rows.append(("peak RSS 32 / 8 frames", f"{peak32 / peak8:.2f}"))

    print(
        f"\nsd15-random on {torch.get_num_threads()} CPU threads, {args.size} px, {args.frames} frames, {args.steps} steps, first-frame attention + canny ControlNet\n"
    )
    width = max(len(name) for name, _ in rows)
    print(f"| {'measure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


def timed_rows(args, backbone, controlnet, work: str, workdir: Path) -> list[tuple[str, str]]:
    """Speed rows: per-step cost, time inside the networks, cached second prompt."""
    rows = []
    unet_timer, cn_timer, vae_timer, text_timer = CallTimer(), CallTimer(), CallTimer(), CallTimer()
    with (
        unet_timer.wrap(backbone.unet),
        cn_timer.wrap(controlnet),
        vae_timer.wrap(backbone.vae, "encode"),
        text_timer.wrap(backbone.text_encoder),
    ):
        first = edit_video(request(args, workdir / "a.mp4", "a watercolor painting", work))
        unet_first, cn_first, vae_first, text_first = unet_timer.seconds, cn_timer.seconds, vae_timer.seconds, text_timer.seconds
        second = edit_video(request(args, workdir / "b.mp4", "an oil painting", work))
    assert second.inversion_cached
    sampled = first.seconds["invert"] + first.seconds["denoise"]
    total_first, total_second = sum(first.seconds.values()), sum(second.seconds.values())
    rows.append(
        (
            "seconds per frame per denoising step (CFG + ControlNet)",
            f"{first.seconds['denoise'] / (args.frames * args.steps):.3f}",
        )
    )
    rows.append(("share of invert+denoise time inside UNet calls", f"{unet_first / sampled:.1%}"))
    rows.append(("share of invert+denoise time inside ControlNet calls", f"{cn_first / sampled:.1%}"))
    # the invert stage also encodes the source frames (VAE) and the inversion prompt: networks, not overhead
    rows.append(
        ("share of invert+denoise time inside VAE encode and text-encoder calls", f"{(vae_first + text_first) / sampled:.1%}")
    )
    rows.append(
        (
            "our overhead in invert+denoise (in no network: UNet, ControlNet, VAE, text encoder)",
            f"{1 - (unet_first + cn_first + vae_first + text_first) / sampled:.1%}",
        )
    )
    rows.append(
        (
            "the same, counted as before (neither UNet nor ControlNet: VAE encoding counted as overhead)",
            f"{1 - (unet_first + cn_first) / sampled:.1%}",
        )
    )
    rows.append(("second prompt on cached inversion / first prompt (whole edit)", f"{total_second / total_first:.2f}"))

    return rows


def comparison_rows(args, backbone, controlnet, work: str, workdir: Path) -> list[tuple[str, str]]:
    """The same first-frame + ControlNet edit from noise, ours against diffusers' Text2Video-Zero processor."""
    from editing.control import extract_conditions
    from editing.video_io import read_clip

    ours_from_noise = edit_video(request(args, workdir / "c.mp4", "a watercolor painting", work, inversion="none"))
    clip = read_clip(CLIP, FrameSelection(max_frames=args.frames, size=args.size))
    reference = diffusers_t2v_zero(args, backbone, controlnet, extract_conditions("canny", clip.frames))
    ours = ours_from_noise.seconds["denoise"] + ours_from_noise.seconds["decode_latents"]
    return [
        (
            "ours / diffusers Text2Video-Zero ControlNet pipeline (same steps, from noise, denoise + VAE decode)",
            f"{ours / reference:.2f}",
        )
    ]


if __name__ == "__main__":
    main()
