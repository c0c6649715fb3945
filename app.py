"""Start the web app: `python app.py` serves it on http://127.0.0.1:7860 (`--host`, `--port`, `--share`, `--model`, `--model-dir`,
`--ray`)."""

import argparse
import os

from editing.config import VideoLimits
from editing.models import DEFAULT_MODEL, import_in_background
from ui import build_demo
from ui.serving import ServePolicy

MODEL_DIRS_ENV = "EDITING_MODEL_DIRS"  # model roots, separated by os.pathsep, for a Space (no command line)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the text-driven video editing app.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument("--model", default=None, help="default model in the Model box (default $EDITING_MODEL or SD 1.5)")
    parser.add_argument(
        "--model-dir",
        action="append",
        default=None,
        dest="model_dirs",
        metavar="DIR",
        help="served beyond this machine, the Model box loads local folders and files only from under DIR (repeatable; "
        f"default ${MODEL_DIRS_ENV}); Hub ids and the built-in models are always allowed",
    )
    parser.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the app's edits on a Ray cluster ('local' starts one here, 'auto' joins the one running here, or an address): "
        "one edit at a time per worker, one worker per GPU",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="with --ray: workers to start (default one per GPU, else 2 CPU workers)"
    )
    return parser.parse_args(argv)


def default_model(args: argparse.Namespace | None = None) -> str:
    return (args.model if args is not None and args.model else None) or os.environ.get("EDITING_MODEL", DEFAULT_MODEL)


def startup_model(args: argparse.Namespace | None = None, available=None) -> tuple[str, str | None]:
    """The model the app starts on and, when the default cannot be had offline, the line saying so (ui.startup;
    `available` replaces its check in tests)."""
    from ui.startup import first_model, model_available

    return first_model(default_model(args), available or model_available)


def serve_policy(args: argparse.Namespace) -> ServePolicy:
    """What the forms accept: anything on loopback; beyond it (--host, --share, a Space) only Hub ids, built-in
    names, the default model and files under the model roots."""
    roots = (
        args.model_dirs if args.model_dirs is not None else [d for d in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if d]
    )
    return ServePolicy.for_launch(args.host, args.share, roots, default_model(args))


def build_backend(args: argparse.Namespace):
    """The backend for these options: edits in this process, or on the Ray cluster `--ray` names."""
    from ui.backend import Backend, ray_backend

    policy = serve_policy(args)
    return ray_backend(args.ray, args.workers, policy) if args.ray else Backend(policy=policy)


def launch_options(args: argparse.Namespace, limits: VideoLimits = VideoLimits()) -> dict:
    """demo.launch() keywords: the address, sharing, uploads capped at the library's video file limit.

    No `allowed_paths`: Gradio then serves only its own cache (each file under a hash of its content and
    the server's secret seed, HTML, SVG and scripts as downloads, never inline). Session files are handed
    out as copies that Gradio puts in that cache, so no user folder is ever served by path."""
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": args.share,
        "max_file_size": int(limits.max_file_mb * 1e6),
    }


# No model is loaded here: the first Run loads it. EDITING_MODEL=tiny suits machines without the Hub.
# `demo` is built at import so `gradio app.py` and Hugging Face Spaces find it, with the policy the
# environment gives (a Space sets SPACE_ID, so the Space's app is built as a public one).
# Without the Hub or a cached copy of the default model, it starts on `shapes` and says so (ui.startup).
_started_on = startup_model()
demo = build_demo(default_model=_started_on[0], policy=serve_policy(parse_args([])), notice=_started_on[1])


if __name__ == "__main__":
    args = parse_args()
    model, notice = _started_on if default_model(args) == default_model() else startup_model(args)
    demo = build_demo(default_model=model, backend=build_backend(args), notice=notice)
    import_in_background()  # the first edit's imports, while the page loads and a clip is picked
    demo.launch(**launch_options(args))
