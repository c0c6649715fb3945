"""One UNet call with and without small-map convolutions as matrix products (editing.small_convs), measured
side by side in one run: `sd15-random` (the full SD-1.5 UNet; cost does not depend on weight values), fp32 on
the CPU, for each latent size and batch (images in the call: frames times guidance branches).

    python benchmarks/small_convs.py                       # 128 px (16 x 16 latents), batches 1 to 16
    python benchmarks/small_convs.py --sizes 128,512 --batches 1,2,4 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _plain(unet):
    """A copy of `unet` whose convolutions are the ordinary `Conv2d` again."""
    import torch

    from editing.small_convs import SmallMapConv2d

    plain = copy.deepcopy(unet)
    for module in plain.modules():
        if type(module) is SmallMapConv2d:
            module.__class__ = torch.nn.Conv2d
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128", help="comma-separated frame sizes in px (latents are 1/8)")
    parser.add_argument("--batches", default="1,2,4,8,16", help="comma-separated images per UNet call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each, alternating the two")
    parser.add_argument("--json", default=None, metavar="PATH", help="also save the rows (for docs/speed.md)")
    args = parser.parse_args()

    import torch

    from editing.models import load_backbone

    backbone = load_backbone("sd15-random", "cpu", "fp32")
    unets = {"small-map products": backbone.unet, "ordinary convolutions": _plain(backbone.unet)}
    text = torch.randn(1, 77, backbone.unet.config.cross_attention_dim)
    rows = []
    print("| px | images per call | ordinary s | small-map products s | ratio |\n|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            sample = torch.randn(batch, backbone.unet.config.in_channels, size // 8, size // 8)
            seconds: dict[str, list[float]] = {name: [] for name in unets}
            with torch.no_grad():
                for unet in unets.values():  # one untimed call each first
                    unet(sample, 500, encoder_hidden_states=text.expand(batch, -1, -1))
                for _ in range(args.repeats):
                    for name, unet in unets.items():
                        begin = time.perf_counter()
                        unet(sample, 500, encoder_hidden_states=text.expand(batch, -1, -1))
                        seconds[name].append(time.perf_counter() - begin)
            best = {name: min(values) for name, values in seconds.items()}
            row = {"size": size, "batch": batch, **{f"{name} s": value for name, value in best.items()}}
            row["ratio"] = best["small-map products"] / best["ordinary convolutions"]
            rows.append(row)
            print(
                f"| {size} | {batch} | {best['ordinary convolutions']:.3f} | {best['small-map products']:.3f} | {row['ratio']:.3f} |",
                flush=True,
            )
    if args.json:
        from shapes_world.benchmark import provenance

        document = {"model": "sd15-random", "device": f"{torch.get_num_threads()} CPU threads", "dtype": "fp32", "rows": rows}
        document |= provenance() | {"command": "python benchmarks/small_convs.py " + " ".join(sys.argv[1:])}
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
