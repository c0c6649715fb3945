"""Start the web app: `python app.py` serves it on http://127.0.0.1:7860 (`--host`, `--port`, `--share`, `--model`)."""

import argparse
import os

from editing import sessions
from editing.config import VideoLimits
from editing.models import DEFAULT_MODEL
from ui import build_demo

# No model is loaded here: the first Run loads it. EDITING_MODEL=tiny suits machines without the Hub.
# `demo` is built at import so `gradio app.py` and Hugging Face Spaces find it.
demo = build_demo(default_model=os.environ.get("EDITING_MODEL", DEFAULT_MODEL))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the text-driven video editing app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument("--model", default=None, help="default model in the Model box (default $EDITING_MODEL or SD 1.5)")
    return parser.parse_args(argv)


def launch_options(args: argparse.Namespace, limits: VideoLimits = VideoLimits()) -> dict:
    """demo.launch() keywords: the address, sharing, uploads capped at the library's video file limit, and the
    sessions folder (outside the temp and working folders Gradio serves by default) allowed for galleries."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": args.share,
        "max_file_size": int(limits.max_file_mb * 1e6),
        "allowed_paths": [str(sessions.default_root())],
    }


if __name__ == "__main__":
    args = parse_args()
    if args.model:
        demo = build_demo(default_model=args.model)
    demo.launch(**launch_options(args))
