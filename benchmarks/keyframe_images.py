"""Supplying an edited frame against prompting, on the shapes benchmark's clips (ground truth, shapes model).

For each clip and each of its colour and shape edits, two edits of the whole clip with `first` attention:
- `prompt`: the target caption as the prompt (the benchmark's own colour / shape edit);
- `keyframe`: frame 0 replaced by its target render (`--keyframe-image 0=...`), the prompt left as the
  source caption: nothing else says what to change.
Printed per kind: edit accuracy of frames 1.. (the frames nobody drew), structure IoU and true-motion
warp error over the clip, means over clips.

    python benchmarks/keyframe_images.py --clips 4 --steps 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from PIL import Image

    from editing.config import EditConfig, EngineConfig, KeyframeImage
    from editing.context import EditParts
    from editing.models import load_backbone
    from editing.staging import edit_clip
    from shapes_world.benchmark import GUIDANCE, benchmark_clip, derive_edits, edit_accuracy, structure_iou, true_warp_errors
    from shapes_world.world import render, scene_at

    backbone = load_backbone("shapes", device="cpu")
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as work:
        for index in range(args.clips):
            clip = benchmark_clip(index)
            for edit in (e for e in derive_edits(clip) if e.kind in ("colour", "shape")):
                target = Path(work) / f"target-{index}-{edit.kind}.png"
                Image.fromarray(render(scene_at(edit.target, clip.motions, 0))[0]).save(target)
                for how in ("prompt", "keyframe"):
                    supplied = (KeyframeImage(0, str(target)),) if how == "keyframe" else ()
                    prompt = edit.prompt if how == "prompt" else edit.source_prompt
                    engine = EngineConfig(
                        inversion_prompt=edit.source_prompt, cache_dir=str(Path(work) / "cache"), keyframe_images=supplied
                    )
                    out = edit_clip(
                        clip.frames, EditParts(EditConfig(prompt=prompt, steps=args.steps, guidance=GUIDANCE), engine), backbone
                    ).frames
                    measured = (
                        edit_accuracy(out[1:], clip.masks[1:], edit),
                        structure_iou(out, clip.masks),
                        float(np.nanmean(true_warp_errors(out, clip.flow, clip.masks))),
                    )
                    rows.setdefault((edit.kind, how), []).append(measured)
                    print(
                        f"  clip {index} {edit.kind} {how}: accuracy of frames 1.. {measured[0]:.3f}, IoU {measured[1]:.3f}, warp {measured[2]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(
        f"\nshapes model, {args.clips} clips, {args.steps} steps, guidance {GUIDANCE} (keyframe: --keyframe-guidance default)\n"
    )
    print("| edit | how | accuracy of frames 1.. | structure IoU | true-motion warp error |\n|---|---|---|---|---|")
    for (kind, how), values in rows.items():
        mean = np.mean(values, axis=0)
        print(f"| {kind} | {how} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.2f} |")


if __name__ == "__main__":
    main()
