"""`python -m editing`: inspect a video or edit it with a text prompt.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or settings, 130 interrupted.
Failures print one line on stderr; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from . import requests
from .batch import BATCH_DEFAULTS, batch_edits
from .batch import run_batch as run_edits
from .errors import ConfigError, EditingError
from .files import check_writable
from .models import RANDOM_WEIGHTS_NOTE
from .presets import preset_note
from .requests import DEFAULT_ATTENTION, output_size  # noqa: F401 (the app and tests read them here too)

log = logging.getLogger("editing")


class Parser(argparse.ArgumentParser):
    """argparse with short errors: one usage line, the error and where the options are listed (exit 2),
    instead of the whole usage of a command with dozens of options."""

    def error(self, message: str):
        self.exit(2, f"usage: {self.short_usage()}\nerror: {message}\nrun `{self.prog} --help` for the options\n")

    def short_usage(self) -> str:
        """`prog [options] POSITIONALS` in one line (the subcommands as {a,b,...} ...)."""
        words = [self.prog, "[options]"]
        for action in self._get_positional_actions():
            if isinstance(action, argparse._SubParsersAction):
                words.append("{" + ",".join(action.choices) + "} ...")
            elif action.nargs == argparse.OPTIONAL:
                words.append(f"[{action.metavar or action.dest}]")
            else:
                words.append(str(action.metavar or action.dest))
        return " ".join(words)


def build_parser(shapes: bool = False) -> argparse.ArgumentParser:
    """The command line: every edit and tune option comes from the request schema (editing.requests);
    `shapes` adds the shapes benchmark's options to `eval` (importing it)."""
    parser = Parser(prog="python -m editing", description="Edit videos with text over Stable Diffusion.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a video's metadata as JSON")
    info.add_argument("video")

    edit = commands.add_parser("edit", help="edit a video with a text prompt")
    requests.add_arguments(edit, "edit")
    edit.add_argument("--json", action="store_true", help="print the result as one JSON object")

    live = commands.add_parser("live", help="edit a clip frame by frame as a stream would; prints FPS and latency")
    requests.add_arguments(live, "edit")
    live.add_argument("--json", action="store_true", help="print the result as one JSON object")

    tune = commands.add_parser("tune", help="tune the model on one clip (Tune-A-Video) for edits of shape or motion")
    requests.add_arguments(tune, "tune")
    tune.add_argument("--json", action="store_true", help="print the result as one JSON object")

    evaluate = commands.add_parser("eval", help="run the edits a YAML spec lists and tabulate their quality metrics")
    evaluate.add_argument(
        "spec", nargs="?", help="YAML file: clip model, default settings and a list of edits (see examples/eval-tiny.yaml)"
    )
    evaluate.add_argument(
        "--out", required=True, help="folder for results.csv, results.md, results.json, videos and contact sheets"
    )
    evaluate.add_argument(
        "--clip",
        default=None,
        help="CLIP for the text scores (overrides the spec): Hub id, folder, open_clip:NAME, random or none",
    )
    batch = commands.add_parser(
        "batch", help="run every edit of a YAML spec (the eval format) and write the outputs with results.csv / results.json"
    )
    batch.add_argument("spec", help="YAML file: default settings and a list of edits (the eval spec; its clip key is ignored)")
    batch.add_argument(
        "--out",
        required=True,
        help="folder for the outputs, results.csv, results.json and manifest.json (a rerun skips edits already done)",
    )
    batch.add_argument(
        "--format", choices=("mp4", "zip", "gif"), help="output format of each edit (default mp4; zip = lossless PNG frames)"
    )
    batch.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: 'local' starts one on this machine, 'auto' joins the one running here, or a cluster address; "
        "without it the edits run one after another in this process",
    )
    batch.add_argument(
        "--workers", type=int, default=None, help="with --ray: workers to start (default one per GPU, else 2 CPU workers)"
    )
    batch.add_argument("--retries", type=int, help="with --ray: times an edit is re-run when its worker dies (default 2)")
    batch.set_defaults(**BATCH_DEFAULTS)  # the batch module's own defaults
    # Only then is the benchmark imported (a development tool, not the product); an installed wheel or the
    # Space has no shapes_world, and `eval --shapes` is then an ordinary argparse error.
    if shapes and importlib.util.find_spec("shapes_world") is not None:
        from shapes_world.benchmark import add_options  # a development tool: only for eval --shapes

        add_options(evaluate)
    else:
        evaluate.add_argument(
            "--shapes",
            action="store_true",
            help="run the shapes benchmark instead of a YAML spec (`eval --shapes --help` lists its options)",
        )
    return parser


def asks_for_shapes(argv: Sequence[str]) -> bool:
    """Whether a command line is `eval ... --shapes ...` (its parser then holds the benchmark's options)."""
    tokens = list(argv)
    return "eval" in tokens and "--shapes" in tokens[tokens.index("eval") + 1 :]


def run_info(args: argparse.Namespace) -> int:
    # here, not at the top: editing.video_io loads PyAV and PIL, which --help does not need
    from .video_io import probe

    print(json.dumps(probe(args.video).to_dict(), indent=2))
    return 0


def edit_request(args: argparse.Namespace):
    """The EditRequest the edit command's options describe (editing.requests.edit_request)."""
    return requests.edit_request(args)


def tune_request(args: argparse.Namespace):
    """The TuneRequest the tune command's options describe (editing.requests.tune_request)."""
    return requests.tune_request(args)


def run_edit(args: argparse.Namespace) -> int:
    # here, not at the top: editing.pipeline loads PyAV and PIL, which --help does not need
    from .pipeline import edit_video

    request = edit_request(args)
    with TerminalProgress() as progress:
        result = edit_video(request, progress)

    if result.random_weights:
        print(f"note: '{args.model}': {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    for note in (preset_note(vars(args)), *result.notes):
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        cached = " (inversion from cache)" if result.inversion_cached else ""
        print(f"wrote {result.output}: {result.frames} frames, {result.width}x{result.height} at {result.fps:.3f} fps{cached}")
    for warning in result.warnings:  # damaged audio left out, a file replaced by the frames as PNGs
        print(f"warning: {warning}", file=sys.stderr)
    return 0 if result.output == str(request.output) else 1  # the frames were kept, but not as asked


def run_live(args: argparse.Namespace) -> int:
    # here, not at the top: editing.stream loads the editing core (PyAV, PIL), which --help does not need
    from .stream import live_video

    request = edit_request(args)
    with TerminalProgress() as progress:
        result = live_video(request, progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        cpu = f"{1000 * result.cpu_seconds:.0f} ms of CPU per frame"
        speed = f"{result.fps:.2f} FPS, mean latency {1000 * result.latency:.0f} ms ({cpu})"
        print(f"wrote {result.output}: {result.frames} frames streamed at {speed}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0 if result.output == str(request.output) else 1


def run_eval(args: argparse.Namespace) -> int:
    if args.shapes:
        # here: the shapes benchmark is a development tool, absent from an installed wheel
        from shapes_world.benchmark import run_command

        with TerminalProgress() as progress:
            return run_command(args, progress)
    # here, not at the top: --help does not import the evaluation
    from .evaluate import load_spec, run_evaluation

    if not args.spec:
        raise ConfigError("eval needs a SPEC.yaml, or --shapes for the shapes benchmark")
    spec = load_spec(args.spec, clip=args.clip)
    check_writable(Path(args.out) / "results.csv", "results folder (--out)")
    with TerminalProgress() as progress:
        report = run_evaluation(spec, args.out, progress)
    print(report.markdown, end="")
    print(f"wrote {report.csv}, {report.md} and {len(report.rows)} contact sheets in {args.out}", file=sys.stderr)
    if report.failures:
        print(
            f"error: {report.failures} of {len(report.rows)} edits failed; see the error column of {report.csv}", file=sys.stderr
        )
        return 2
    return 0


def run_batch(args: argparse.Namespace) -> int:
    # here, not at the top: --help does not import the evaluation
    from .evaluate import load_spec

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {args.workers}")
    if args.retries < 0:
        raise ConfigError(f"retries must be 0 or more, got {args.retries}")
    spec = load_spec(args.spec, clip="none", missing_videos=True)  # a clip that does not exist fails its row only
    check_writable(Path(args.out) / "results.csv", "results folder (--out)")
    edits = batch_edits(spec, args.out, "." + args.format)
    if args.ray is None:
        report = run_edits(edits, args.out)
    else:
        from . import distributed  # Ray is imported only here

        distributed.connect(args.ray, args.workers)
        workers, _ = distributed.placement(args.workers)
        runner = distributed.batch_runner(args.workers, args.retries)
        report = run_edits(edits, args.out, runner, {"ray": args.ray, "workers": workers})
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    counts = {status: sum(1 for row in report.rows if row["status"] == status) for status in ("ok", "skipped", "failed")}
    print(
        f"{counts['ok']} edited, {counts['skipped']} up to date, {counts['failed']} failed in {report.seconds:.1f} s; wrote {report.csv} and {report.json}"
    )
    if report.failures:
        print(
            f"error: {report.failures} of {len(report.rows)} edits failed; see the error column of {report.csv}", file=sys.stderr
        )
        return 2
    return 0


def run_tune(args: argparse.Namespace) -> int:
    # here, not at the top: editing.tuning loads PyAV and PIL, which --help does not need
    from .tuning import tune_video

    request = tune_request(args)
    with TerminalProgress() as progress:
        result = tune_video(request, progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        how = (
            "reused an earlier tuning"
            if result.reused
            else f"{len(result.losses)} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
        )
        print(f"wrote {result.path}: {result.parameters} tuned parameters ({how})")
    return 0


class TerminalProgress:
    """A tqdm bar on stderr per long stage; silent when stderr is not a terminal."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=False, disable=None)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(shapes=asks_for_shapes(argv))
    args = parser.parse_args(argv)
    if args.command in ("edit", "live"):
        args.given_options = requests.explicit_options("edit", argv[argv.index(args.command) + 1 :])
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        _quiet_libraries()
    try:
        return {"info": run_info, "edit": run_edit, "live": run_live, "eval": run_eval, "batch": run_batch, "tune": run_tune}[
            args.command
        ](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except EditingError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the last line of defence: one line, traceback only with --debug
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split())[:300]
        print(f"error: {type(exc).__name__}: {message} (run with --debug for details)", file=sys.stderr)
        return 1


def _quiet_libraries() -> None:
    """Keep third-party progress bars and advice off the terminal; our own errors stay one line."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's native logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    for name in ("huggingface_hub", "diffusers", "transformers", "controlnet_aux"):
        logging.getLogger(name).setLevel(logging.ERROR)
