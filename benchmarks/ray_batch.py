"""What Ray gives and costs, measured in one run on a local Ray cluster: batch throughput on 2 workers
against 1 on the same edits, one edit through a Ray worker (the batch's plain task, the app's
streamed one) against a direct call, and one long keyframe edit on 2 workers (keyframes in one task,
then 2 propagation segments) against 1 (the whole edit in one task).

    python benchmarks/ray_batch.py [--model tiny] [--edits 4] [--frames 4] [--size 64] [--steps 4] [--runs 3]
                                   [--keyframes 4 --keyframe-frames 17 --keyframe-refine 0.5 | --only-keyframes]

Workers are CPU actors (one thread each: Ray sets OMP_NUM_THREADS=1); each pool is warmed up (model loaded,
one edit run) before it is timed, and every timed edit inverts afresh (its own cache folder). The direct
call runs with one torch thread too, so both sides do the same compute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIPS = ("car-turn.mp4", "man-skiing.mp4")


def edits(args, root: Path, count: int, tag: str, **settings):
    """`count` batch edits (alternating clips and prompts), each with a fresh cache folder."""
    from editing.batch import batch_edits
    from editing.evaluate import parse_spec

    defaults = {
        "model": args.model,
        "device": "cpu",
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "stride": 4,
        **settings,
    }
    entries = [
        {
            "name": f"{tag}-{i}",
            "video": str(ROOT / "assets" / CLIPS[i % 2]),
            "prompt": f"a painting, style {i}",
            "cache_dir": str(root / f"cache-{tag}-{i}"),
        }
        for i in range(count)
    ]
    return batch_edits(parse_spec({"defaults": defaults, "edits": entries}, ROOT, clip="none"), root / f"out-{tag}", ".zip")


def batch_seconds(args, root: Path) -> dict[int, float]:
    """Median wall seconds of a batch of `args.edits` edits on a warm pool of 1 and of 2 workers, the
    runs interleaved (so a change in the shared machine's load hits both alike)."""
    from editing import distributed
    from editing.batch import run_batch

    pools = {workers: distributed.WorkerPool(workers) for workers in (1, 2)}
    times: dict[int, list[float]] = {workers: [] for workers in pools}
    try:
        for workers, pool in pools.items():
            run_batch(edits(args, root, workers, f"warm{workers}"), root / f"warm{workers}", distributed.batch_runner(pool=pool))
        for run in range(args.runs):
            for workers, pool in pools.items():
                tag = f"timed{workers}-{run}"
                begin = time.perf_counter()
                report = run_batch(edits(args, root, args.edits, tag), root / tag, distributed.batch_runner(pool=pool))
                times[workers].append(time.perf_counter() - begin)
                assert all(row["status"] == "ok" for row in report.rows), report.rows
    finally:
        for pool in pools.values():
            pool.close()
    return {workers: statistics.median(values) for workers, values in times.items()}


def keyframe_seconds(args, root: Path) -> tuple[dict[int, float], str]:
    """Median wall seconds of one keyframe edit of `args.keyframe_frames` frames on a warm pool of 1 worker
    (one task) and of 2 (keyframes, then the propagation segments on both), interleaved; and the split's note."""
    from editing import distributed
    from editing.batch import run_batch

    settings = {"frames": args.keyframe_frames, "stride": 2, "keyframes": args.keyframes, "keyframe_refine": args.keyframe_refine}
    pools = {workers: distributed.WorkerPool(workers) for workers in (1, 2)}
    times: dict[int, list[float]] = {workers: [] for workers in pools}
    note = ""
    try:
        for workers, pool in pools.items():  # warm: model loaded, and the pool's workers started
            run_batch(
                edits(args, root, workers, f"kwarm{workers}", **settings),
                root / f"kwarm{workers}",
                distributed.batch_runner(pool=pool),
            )
        for run in range(args.runs):
            for workers, pool in pools.items():
                tag = f"ktimed{workers}-{run}"
                begin = time.perf_counter()
                report = run_batch(edits(args, root, 1, tag, **settings), root / tag, distributed.batch_runner(pool=pool))
                times[workers].append(time.perf_counter() - begin)
                assert all(row["status"] == "ok" for row in report.rows), report.rows
                note = report.rows[0]["note"] if workers == 2 else note
    finally:
        for pool in pools.values():
            pool.close()
    return {workers: statistics.median(values) for workers, values in times.items()}, note


def overhead(args, root: Path) -> dict[str, float]:
    """Median seconds of one edit (edit_video, decode and write included) called directly, as one Ray actor
    task (the batch) and as a streamed, cancellable Ray task (the app)."""
    import torch

    from editing import distributed
    from editing.pipeline import edit_video

    torch.set_num_threads(1)
    remote = distributed.RayEditor(1)  # the app's path: progress streamed back, cancellable
    actor = remote.pool.idle.get()
    remote.pool.idle.put(actor)

    def task(frames, request, progress, timer):  # the batch's path: one plain actor task
        payload = ray.get(actor.edit.remote(frames, request))
        return payload["edited"], payload["model"]

    import ray

    editors = {"direct": None, "task": task, "stream": remote}
    times: dict[str, list[float]] = {kind: [] for kind in editors}
    try:
        for run in range(args.runs + 1):  # the first run of each warms up (model load) and is dropped
            for kind, editor in editors.items():
                request = edits(args, root, 1, f"{kind}{run}")[0].request
                begin = time.perf_counter()
                edit_video(request) if editor is None else edit_video(request, editor=editor)
                if run:
                    times[kind].append(time.perf_counter() - begin)
    finally:
        remote.close()
    return {kind: statistics.median(values) for kind, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keyframes", default="4", help="the long keyframe edit's --keyframes")
    parser.add_argument("--keyframe-frames", type=int, default=17, help="its frame count (every 2nd frame of the clip)")
    parser.add_argument("--keyframe-refine", type=float, default=0.5)
    parser.add_argument("--only-keyframes", action="store_true", help="measure the long keyframe edit only")
    args = parser.parse_args()
    import ray

    ray.init(
        num_cpus=3,  # 3 logical CPUs: both pools stay up (1 + 2 workers); the machine's 2 cores run them
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            seconds, note = keyframe_seconds(args, root)
            print(
                f"one keyframe edit ({args.model}, {args.keyframe_frames} frames, --keyframes {args.keyframes}, refine {args.keyframe_refine}, "
                f"{args.size} px, {args.steps} steps), median of {args.runs}:"
            )
            print(f"  1 worker  {seconds[1]:.2f} s (one task)")
            print(f"  2 workers {seconds[2]:.2f} s ({note}); speed-up {seconds[1] / seconds[2]:.2f}x")
            if args.only_keyframes:
                print(f"load average after: {os.getloadavg()[0]:.1f}")
                return
            batch = batch_seconds(args, root)
            one, two = batch[1], batch[2]
            print(
                f"batch of {args.edits} edits ({args.model}, {args.frames} frames, {args.size} px, {args.steps} steps), median of {args.runs}:"
            )
            print(f"  1 worker  {one:.2f} s ({args.edits / one:.3f} edits/s)")
            print(f"  2 workers {two:.2f} s ({args.edits / two:.3f} edits/s); speed-up {one / two:.2f}x")
            seconds = overhead(args, root)
            direct = seconds["direct"]
            print(f"one edit, median of {args.runs}: direct call {direct:.3f} s")
            for kind, label in (("task", "one Ray task (batch)"), ("stream", "streamed Ray task (app)")):
                print(f"  {label}: {seconds[kind]:.3f} s; ratio {seconds[kind] / direct:.3f} (+{seconds[kind] - direct:.3f} s)")
            print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
