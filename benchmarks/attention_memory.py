"""Memory of attention editing (FateZero-style blending, Prompt-to-Prompt word swap) with SD-1.5's shapes.

Prints, as one JSON object:
  - the attention store's size computed from the shapes (editing.attention.store.store_nbytes) for
    8 frames at 512 px and 50 steps, next to what storing every map of every layer and head in fp32
    (an upper bound of keeping everything, as FateZero does with its full store) would take;
  - the store's measured bytes and the peak RSS of a whole edit (fresh process each) at `--size`,
    with attention editing (swap + local blend) and without (plain DDIM inversion + sampling).
Memory does not depend on weight values, so `sd15-random` measures the real cost.

    python benchmarks/attention_memory.py                       # 8 frames, 256 px, 3 steps (~10 min on 2 cores)
    python benchmarks/attention_memory.py --frames 2 --steps 2  # a quick look
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from editing.attention.store import StorePolicy, layer_downsampling, level_tokens, store_nbytes  # noqa: E402

CLIP = ROOT / "assets" / "car-turn.mp4"
SOURCE, TARGET = "a silver jeep driving down a road", "a red porsche driving down a road"

RUN = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from editing.config import AttentionEditConfig, EditConfig, EngineConfig, FrameSelection
from editing.pipeline import EditRequest, edit_video
steps, frames, size, out, cache, attention = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7] == "1"
blend = AttentionEditConfig(source_prompt=sys.argv[8], edit="swap", blend_words=("jeep", "porsche")) if attention else None
result = edit_video(EditRequest(
    video=sys.argv[10], output=out,
    edit=EditConfig(prompt=sys.argv[9], steps=steps, guidance=7.5),
    selection=FrameSelection(max_frames=frames, size=size),
    model="sd15-random", device="cpu",
    engine=EngineConfig(attention="first", chunk=frames, cache_dir=cache, inversion_prompt=sys.argv[8]),
    attention_edit=blend,
))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "attention_edit": result.attention_edit, "seconds": result.seconds}))
"""


def run_edit(args, attention: bool, workdir: Path) -> dict:
    """One whole edit in a fresh process: its peak RSS (MB) and what it reports."""
    tag = "p2p" if attention else "plain"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN,
            str(ROOT),
            str(args.steps),
            str(args.frames),
            str(args.size),
            str(workdir / f"{tag}.mp4"),
            str(workdir / f"cache-{tag}"),
            "1" if attention else "0",
            SOURCE,
            TARGET,
            str(CLIP),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def full_store_nbytes(unet_config, frames: int, latent: int, steps: int, heads: int = 8, kv_frames: int = 1) -> int:
    """Bytes of every attention map of every layer, head and step in fp32 (what FateZero keeps)."""
    total = 0
    for _, kind, downsample in layer_downsampling(unet_config):
        tokens = level_tokens(latent, latent, downsample)
        total += tokens * (77 if kind == "cross" else tokens * kv_frames)
    return 4 * heads * frames * steps * total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-runs", action="store_true", help="only compute sizes from the shapes")
    args = parser.parse_args()
    unet = _sd15_config()
    self_share = 0.4
    report = {
        "store_mb_8f_512px_50steps": store_nbytes(unet, 8, (64, 64), (50, round(50 * self_share)), 1, StorePolicy()) / 2**20,
        "all_maps_all_heads_fp32_gb_8f_512px_50steps": full_store_nbytes(unet, 8, 64, 50) / 2**30,
        "store_mb_formula_at_size": store_nbytes(
            unet, args.frames, (args.size // 8, args.size // 8), (args.steps, round(args.steps * self_share)), 1, StorePolicy()
        )
        / 2**20,
    }
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as work:
            attention = run_edit(args, True, Path(work))
            plain = run_edit(args, False, Path(work))
        report |= {
            "store_mb_measured_at_size": attention["attention_edit"]["store_bytes"] / 2**20,
            "peak_rss_mb_attention_edit": attention["peak_mb"],
            "peak_rss_mb_plain_edit": plain["peak_mb"],
            "seconds_attention_edit": attention["seconds"],
            "seconds_plain_edit": plain["seconds"],
        }
    report["settings"] = vars(args)
    print(json.dumps(report, indent=2))


def _sd15_config() -> dict:
    """SD-1.5's UNet block layout (diffusers' UNet2DConditionModel defaults)."""
    return dict(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=2,
    )


if __name__ == "__main__":
    main()
