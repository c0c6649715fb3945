"""What a reference image (IP-Adapter) adds to an edit, measured in one run.

    python benchmarks/reference_cost.py [--model sd15-random] [--frames 2] [--size 128] [--runs 7]

One guided UNet evaluation of a batch of frames (both guidance branches, `first` cross-frame attention),
with and without a reference (the random IP-Adapter of the built-in models: SD-1.5's 16 cross-attention
layers each get 4 image tokens beside the 77 text tokens), runs interleaved after a warm-up. Prints the
fastest and the median seconds of each and the ratio of the fastest (the least disturbed by other work on
a shared machine), and the one-off seconds of loading the adapter and embedding the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd15-random")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)

    from PIL import Image

    from editing import sampling
    from editing.attention.cross_frame import cross_frame_attention
    from editing.config import EngineConfig
    from editing.models import load_backbone, load_image_adapter
    from editing.reference import prepare_reference

    backbone = load_backbone(args.model, device="cpu")
    reference = Path(tempfile.mkdtemp()) / "reference.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(reference)
    begin = time.perf_counter()
    prompt = prepare_reference(EngineConfig(reference_image=f"{reference}:0.6"), backbone, load_image_adapter)
    one_off = time.perf_counter() - begin

    side = args.size // backbone.vae_scale_factor
    latents = torch.randn(args.frames, backbone.latent_channels, side, side, generator=torch.Generator().manual_seed(0)).to(
        backbone.dtype
    )
    text = sampling.encode_text(backbone, "a red car", "", guided=True)
    plan = sampling.plan_frames(args.frames, args.frames, "first")
    layout = plan.layout(plan.batches[0])
    guidance = {"none": sampling.Guidance(text, 7.5), "reference": sampling.Guidance(text, 7.5, reference=prompt)}

    def evaluate(name: str) -> float:
        adapter = prompt.installed(backbone.unet) if name == "reference" else contextlib.nullcontext()
        with adapter, cross_frame_attention(backbone.unet):
            begin = time.perf_counter()
            sampling.guided_noise(backbone, latents, 500, guidance[name], sampling.UnetCall(layout))
            return time.perf_counter() - begin

    for name in guidance:
        evaluate(name)  # warm-up
    seconds = {name: [] for name in guidance}
    for _ in range(args.runs):
        for name in guidance:
            seconds[name].append(evaluate(name))
    fastest = {name: min(s) for name, s in seconds.items()}
    print(f"{args.model}, {args.frames} frames at {args.size} px, both guidance branches, {args.runs} interleaved runs (CPU)")
    for name, values in seconds.items():
        print(f"{name}: fastest {fastest[name]:.3f} s, median {statistics.median(values):.3f} s per UNet evaluation")
    print(f"ratio of the fastest (reference / none): {fastest['reference'] / fastest['none']:.3f}")
    print(f"once per edit: load the adapter and embed the reference {one_off:.2f} s")


if __name__ == "__main__":
    main()
