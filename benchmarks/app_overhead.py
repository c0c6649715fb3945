"""What the web app adds to an edit, measured in one run: served edit vs library call, cancel latency.

    python benchmarks/app_overhead.py [--model tiny] [--frames 8] [--size 128] [--steps 10] [--runs 3]

Prints the median seconds (runs interleaved, after a warm-up) of the same edit through `edit_video` and through the running app
(gradio_client: upload, queue, the edit, warp error, GIF and zip, download), their ratio, and how long
after a client's cancel the worker stops.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def library_edit(args, video: str) -> float:
    """Seconds of one edit_video on the request the app would build (mp4 only)."""
    from editing.pipeline import edit_video
    from ui.edit_tab import request_from

    values = {
        "video": video,
        "prompt": "a watercolor painting",
        "model": args.model,
        "frames": args.frames,
        "size": args.size,
        "steps": args.steps,
    }
    request = request_from(values, tempfile.mkdtemp(), (".mp4",))
    begin = time.perf_counter()
    edit_video(request)
    return time.perf_counter() - begin


def app_edit(args, client, video: str) -> float:
    """Seconds of the same edit through the served app."""
    from gradio_client import handle_file

    begin = time.perf_counter()
    client.predict(
        video=handle_file(video),
        prompt="a watercolor painting",
        model=args.model,
        frames=args.frames,
        size=args.size,
        steps=args.steps,
        api_name="/edit",
    )
    return time.perf_counter() - begin


def cancel_latency(args, client, video: str, denoising: threading.Event, stopped: list) -> float:
    """Seconds from a client's cancel, sent during denoising, until the worker has stopped."""
    from gradio_client import handle_file

    denoising.clear()
    stopped.clear()
    job = client.submit(
        video=handle_file(video),
        prompt="a cat",
        model=args.model,
        frames=args.frames,
        size=args.size,
        steps=50,
        strength=1.0,
        api_name="/edit",
    )
    denoising.wait(600)
    begin = time.perf_counter()
    job.cancel()
    while not stopped:
        time.sleep(0.01)
    return stopped[0] - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("EDITING_CACHE_DIR", tempfile.mkdtemp(prefix="bench-cache-"))
    from gradio_client import Client

    from editing.pipeline import edit_video
    from ui import build_demo

    video = str(ROOT / "assets" / "man-skiing.mp4")
    denoising, stopped = threading.Event(), []

    def observed(request, progress):
        def report(stage, done, total):
            if stage == "denoise" and done >= 1:
                denoising.set()
            progress(stage, done, total)

        try:
            return edit_video(request, report)
        finally:
            stopped.append(time.perf_counter())

    library_edit(args, video)  # warm-up: loads the model, fills the inversion cache
    demo = build_demo(edit_fn=observed, default_model=args.model)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        pairs = [(library_edit(args, video), app_edit(args, client, video)) for _ in range(args.runs)]  # interleaved
        latency = cancel_latency(args, client, video, denoising, stopped)
    finally:
        demo.close()
    library, served = (statistics.median(p[i] for p in pairs) for i in (0, 1))
    print(f"{args.model}, {args.frames} frames, {args.size} px, {args.steps} steps, median of {args.runs}, inversion cached")
    print("| measure | value |\n|---|---|")
    print(f"| library edit_video (mp4), s | {library:.2f} |")
    print(f"| through the app (upload, queue, edit, warp error, gif + zip, download), s | {served:.2f} |")
    print(f"| app / library | {served / library:.2f} |")
    print(f"| worker stopped after a client's cancel, s | {latency:.2f} |")


if __name__ == "__main__":
    main()
