"""`python -m editing`: inspect a video or edit it with a text prompt.

Exit codes: 0 success, 1 unexpected failure, 2 bad input or settings, 130 interrupted.
Failures print one line on stderr; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import traceback
from typing import Sequence

from .config import PROMPT_EDITS, AttentionEditConfig
from .attention.modes import attention_mode_names
from .config import INVERSIONS, ControlSpec, EditConfig, EngineConfig, FrameSelection, VideoLimits
from .control.kinds import condition_kind_names
from .errors import ConfigError, EditingError
from .samplers import sampler_names
from .models import BUILTIN_MODELS, DEFAULT_MODEL, RANDOM_WEIGHTS_NOTE, SHAPES_NOTE, native_size

log = logging.getLogger("editing")
DEFAULT_ATTENTION = "first"  # cross-frame attention of an edit without --attention or --tuned
SIZE_HELP = "long side in pixels, a multiple of 8 (default: the model's own size: 512 for SD 1.x, 64 for shapes)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editing", description="Edit videos with text over Stable Diffusion.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a video's metadata as JSON")
    info.add_argument("video")

    edit = commands.add_parser("edit", help="edit a video with a text prompt")
    edit.add_argument("video")
    edit.add_argument("--prompt", required=True, help="what the edited video should show")
    edit.add_argument("--negative-prompt", default="", help="what it should not show")
    edit.add_argument("--out", required=True, help="output file: .mp4, .gif or .zip (PNG frames)")
    edit.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id, local diffusers folder, .safetensors file, shapes ({SHAPES_NOTE}), or {'/'.join(BUILTIN_MODELS)} ({RANDOM_WEIGHTS_NOTE})",
    )
    edit.add_argument("--start", type=float, default=0.0, help="first second to keep")
    edit.add_argument("--end", type=float, default=None, help="last second to keep (exclusive)")
    edit.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    edit.add_argument("--frames", type=int, default=16, help="most frames to edit (0 = all)")
    edit.add_argument("--size", type=int, default=None, help=SIZE_HELP)
    edit.add_argument("--steps", type=int, default=20, help="denoising steps")
    edit.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    edit.add_argument("--strength", type=float, default=1.0, help="share of the steps to invert and re-run (lower keeps more of the source)")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--sampler", default="ddim", help=f"sampler: {', '.join(sampler_names())}")
    edit.add_argument(
        "--attention", default=None, choices=attention_mode_names(), help=f"cross-frame attention (default: {DEFAULT_ATTENTION}; with --tuned, the mode it was tuned with)"
    )
    edit.add_argument("--window", type=int, default=2, help="neighbours on each side for --attention window")
    edit.add_argument("--chunk", type=int, default=8, help="frames per UNet call; longer clips run in chunks sharing anchor frames")
    edit.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="KIND[:SCALE[:START:END]]",
        help=f"ControlNet conditioning, repeatable; KIND is one of {', '.join(condition_kind_names())}",
    )
    edit.add_argument("--control-model", action="append", default=[], metavar="KIND=SPEC", help="ControlNet for a kind (Hub id, folder, file)")
    edit.add_argument("--control-video", action="append", default=[], metavar="KIND=VIDEO", help="use a condition video instead of extracting")
    edit.add_argument("--annotators", default="lllyasviel/Annotators", help="Hub id or folder of the depth / soft-edge annotators")
    edit.add_argument("--inversion", default="ddim", choices=INVERSIONS, help="ddim: invert the source; none: noise it (SDEdit)")
    edit.add_argument("--inversion-prompt", default="", help="prompt describing the source, used to invert it")
    edit.add_argument("--smooth", default="", metavar="flow,color", help="temporal smoothing: flow (latent fusion), color (match first frame)")
    edit.add_argument("--cache-dir", default=None, help="cache for inversions and condition maps")
    edit.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    edit.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    edit.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_speed_options(edit)
    add_attention_edit_options(edit)
    edit.add_argument("--tuned", default=None, metavar="FILE", help="edit with one-shot tuned weights from `tune` (in the attention mode they were tuned with)")
    add_tune_command(commands)

    evaluate = commands.add_parser("eval", help="run the edits a YAML spec lists and tabulate their quality metrics")
    evaluate.add_argument("spec", nargs="?", help="YAML file: clip model, default settings and a list of edits (see examples/eval-tiny.yaml)")
    evaluate.add_argument("--out", required=True, help="folder for results.csv, results.md, results.json, videos and contact sheets")
    evaluate.add_argument("--clip", default=None, help="CLIP for the text scores (overrides the spec): Hub id, folder, open_clip:NAME, random or none")
    from .shapes.benchmark import add_options

    add_options(evaluate)
    return parser


def add_speed_options(edit: argparse.ArgumentParser) -> None:
    """LoRAs, the autoencoder and the speed presets (editing.lora, editing.presets)."""
    from .lora import VAE_CHOICES
    from .presets import PRESETS

    group = edit.add_argument_group("speed: LoRAs, autoencoder, presets")
    group.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="SPEC[:SCALE]",
        help="a LoRA, repeatable: Hub id (owner/name[/file.safetensors]), local folder, .safetensors file, or random (random weights); SCALE defaults to 1",
    )
    group.add_argument("--lora-fuse", action="store_true", help="merge the LoRAs into the weights (faster steps; the default keeps separate LoRA layers)")
    group.add_argument("--vae", default="model", choices=VAE_CHOICES, help="autoencoder: model (its own) or tiny (AutoencoderTiny / TAESD: fast, a little blurrier)")
    group.add_argument(
        "--preset",
        default=None,
        choices=tuple(PRESETS),
        help="speed preset setting defaults that explicit options override: " + "; ".join(f"{p.name}: {p.help}" for p in PRESETS.values()),
    )


def run_info(args: argparse.Namespace) -> int:
    from .video_io import probe

    print(json.dumps(probe(args.video).to_dict(), indent=2))
    return 0


def edit_request(args: argparse.Namespace):
    """The EditRequest the edit command's options describe (the eval command maps its spec through this too)."""
    from .lora import model_options
    from .pipeline import EditRequest
    from .presets import apply_preset

    args = apply_preset(args, edit_defaults())
    request = EditRequest(
        video=args.video,
        output=args.out,
        edit=EditConfig(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            steps=args.steps,
            guidance=args.guidance,
            strength=args.strength,
            seed=args.seed,
            sampler=args.sampler,
        ),
        engine=engine_config(args),
        selection=FrameSelection(start=args.start, end=args.end, stride=args.stride, max_frames=args.frames or None, size=output_size(args)),
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        limits=VideoLimits(),
        attention_edit=attention_edit_config(args),
        tuned=args.tuned,
        model_options=model_options(getattr(args, "lora", ()), getattr(args, "lora_fuse", False), getattr(args, "vae", None)),
    )
    return request


@functools.lru_cache(maxsize=1)
def edit_defaults() -> dict:
    """The edit command's default option values (what a preset replaces when no record of the given options exists)."""
    return vars(build_parser().parse_args(["edit", "video", "--prompt", "prompt", "--out", "out.mp4"]))


def output_size(args: argparse.Namespace) -> int:
    """--size, or the size the model was trained at (a model drawn far from its size draws badly and slowly)."""
    return args.size if args.size is not None else native_size(args.model)


def run_edit(args: argparse.Namespace) -> int:
    from .pipeline import edit_video

    request = edit_request(args)
    with TerminalProgress() as progress:
        result = edit_video(request, progress)
    from .presets import preset_note

    if result.random_weights:
        print(f"note: '{args.model}': {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    for note in (preset_note(args), *result.notes):
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        cached = " (inversion from cache)" if result.inversion_cached else ""
        print(f"wrote {result.output}: {result.frames} frames, {result.width}x{result.height} at {result.fps:.3f} fps{cached}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import load_spec, run_evaluation

    if args.shapes:
        from .shapes.benchmark import run_command

        with TerminalProgress() as progress:
            return run_command(args, progress)
    if not args.spec:
        raise ConfigError("eval needs a SPEC.yaml, or --shapes for the shapes benchmark")
    spec = load_spec(args.spec, clip=args.clip)
    with TerminalProgress() as progress:
        report = run_evaluation(spec, args.out, progress)
    print(report.markdown, end="")
    print(f"wrote {report.csv}, {report.md} and {len(report.rows)} contact sheets in {args.out}", file=sys.stderr)
    if report.failures:
        print(f"error: {report.failures} of {len(report.rows)} edits failed; see the error column of {report.csv}", file=sys.stderr)
        return 2
    return 0


def add_tune_command(commands) -> None:
    """The `tune` command: one-shot tuning of the inflated UNet on a clip (Tune-A-Video)."""
    tune = commands.add_parser("tune", help="tune the model on one clip (Tune-A-Video) for edits of shape or motion")
    tune.add_argument("video")
    tune.add_argument("--prompt", required=True, help="what the source clip shows")
    tune.add_argument("--out", required=True, help="tuned weights, a .safetensors file (its settings go beside it as .json)")
    tune.add_argument("--model", default=DEFAULT_MODEL, help=f"base model: Hub id, folder, .safetensors file, shapes, or {'/'.join(BUILTIN_MODELS)}")
    tune.add_argument("--steps", type=int, default=300, help="optimiser steps")
    tune.add_argument("--learning-rate", type=float, default=3e-5, help="AdamW learning rate")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--start", type=float, default=0.0, help="first second to keep")
    tune.add_argument("--end", type=float, default=None, help="last second to keep (exclusive)")
    tune.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    tune.add_argument("--frames", type=int, default=8, help="frames to tune on")
    tune.add_argument("--size", type=int, default=None, help=SIZE_HELP)
    tune.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    tune.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="autocast precision (GPU only)")
    tune.add_argument("--cache-dir", default=None, help="where tunings are cached for reuse")
    tune.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    tune.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16 (of the frozen model)")
    tune.add_argument("--json", action="store_true", help="print the result as one JSON object")


def tune_request(args: argparse.Namespace):
    """The TuneRequest the tune command's options describe (the app maps its form through this too)."""
    from .tuning import TuneConfig, TuneRequest

    config = TuneConfig(
        prompt=args.prompt,
        selection=FrameSelection(start=args.start, end=args.end, stride=args.stride, max_frames=args.frames or None, size=output_size(args)),
        steps=args.steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        mixed_precision=args.mixed_precision,
    )
    return TuneRequest(args.video, config, args.out, args.model, args.device, args.dtype, args.cache_dir)


def run_tune(args: argparse.Namespace) -> int:
    from .tuning import tune_video

    request = tune_request(args)
    with TerminalProgress() as progress:
        result = tune_video(request, progress)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        how = "reused an earlier tuning" if result.reused else f"{len(result.losses)} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
        print(f"wrote {result.path}: {result.parameters} tuned parameters ({how})")
    return 0


def add_attention_edit_options(edit: argparse.ArgumentParser) -> None:
    """Prompt-to-Prompt / FateZero options of the edit command (active when --source-prompt is given)."""
    group = edit.add_argument_group("attention editing (Prompt-to-Prompt, FateZero, null-text inversion)")
    group.add_argument("--source-prompt", default=None, help="what the source shows; enables attention editing (and inverts with it)")
    group.add_argument("--edit", default="refine", choices=PROMPT_EDITS, dest="prompt_edit", help="swap: same word count; refine: added words; reweight")
    group.add_argument("--cross-replace", type=float, default=0.8, help="share of the steps whose cross-attention comes from the source")
    group.add_argument("--self-replace", type=float, default=0.4, help="share of the steps whose self-attention comes from the source")
    group.add_argument("--blend-words", default="", metavar="W1,W2", help="words whose attention masks the edited region; the rest keeps the source")
    group.add_argument("--blend-threshold", type=float, default=0.3, help="mask threshold on the blend words' normalised attention")
    group.add_argument("--reweight", action="append", default=[], metavar="WORD=VALUE", help="scale a target word's attention (with --edit reweight), repeatable")
    group.add_argument("--null-text", action="store_true", help="null-text inversion: fit per-step unconditional embeddings (slow, cached)")
    group.add_argument("--null-text-iterations", type=int, default=10, help="Adam iterations per step of null-text inversion")


def attention_edit_config(args: argparse.Namespace) -> AttentionEditConfig | None:
    """The attention-edit settings, or None when --source-prompt is not given."""
    if args.source_prompt is None:
        if args.blend_words or args.reweight or args.null_text or args.prompt_edit != "refine":
            raise ConfigError("--edit, --blend-words, --reweight and --null-text need --source-prompt")
        return None
    reweight = []
    for text in args.reweight:
        word, sep, value = text.rpartition("=")
        try:
            reweight.append((word.strip(), float(value)))
        except ValueError:
            raise ConfigError(f"--reweight takes WORD=VALUE, e.g. --reweight red=2; got {text!r}") from None
        if not sep or not word.strip():
            raise ConfigError(f"--reweight takes WORD=VALUE, e.g. --reweight red=2; got {text!r}")
    return AttentionEditConfig(
        source_prompt=args.source_prompt,
        edit=args.prompt_edit,
        cross_replace=args.cross_replace,
        self_replace=args.self_replace,
        blend_words=tuple(w.strip() for w in args.blend_words.split(",") if w.strip()),
        blend_threshold=args.blend_threshold,
        reweight=tuple(reweight),
        null_text=args.null_text,
        null_text_iterations=args.null_text_iterations,
    )


def _per_kind(values: list[str], option: str) -> dict[str, str]:
    """Parse repeated KIND=VALUE options."""
    pairs = {}
    for value in values:
        kind, sep, rest = value.partition("=")
        if not sep or not rest:
            raise ConfigError(f"{option} takes KIND=VALUE, e.g. {option} depth=/path; got {value!r}")
        pairs[kind.strip()] = rest.strip()
    return pairs


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The engine settings the edit command's options describe."""
    models, videos = _per_kind(args.control_model, "--control-model"), _per_kind(args.control_video, "--control-video")
    controls = tuple(ControlSpec.parse(text) for text in args.control)
    kinds = {c.kind for c in controls}
    for kind in {*models, *videos} - kinds:
        raise ConfigError(f"--control-model/--control-video name {kind!r}, which no --control asks for")
    controls = tuple(dataclasses.replace(c, model=models.get(c.kind), video=videos.get(c.kind)) for c in controls)
    from .temporal import SmoothingConfig

    smoothing = SmoothingConfig.parse(args.smooth)
    return EngineConfig(
        attention=attention_mode(args),
        window=args.window,
        chunk=args.chunk,
        inversion=args.inversion,
        inversion_prompt=args.inversion_prompt,
        controls=controls,
        smooth_flow=smoothing.flow,
        smooth_color=smoothing.color,
        cache_dir=args.cache_dir,
        annotators=args.annotators,
    )


def attention_mode(args: argparse.Namespace) -> str:
    """--attention if given; else the mode a --tuned file was tuned with; else DEFAULT_ATTENTION."""
    if args.attention is not None:
        return args.attention
    if getattr(args, "tuned", None) is not None:
        from .tuning import tuned_attention

        return tuned_attention(args.tuned)
    return DEFAULT_ATTENTION


class TerminalProgress:
    """A tqdm bar on stderr per long stage; silent when stderr is not a terminal."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "edit":
        from .presets import given_options

        args.given_options = given_options(parser, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        _quiet_libraries()
    try:
        return {"info": run_info, "edit": run_edit, "eval": run_eval, "tune": run_tune}[args.command](args)
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
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's native logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    for name in ("huggingface_hub", "diffusers", "transformers", "controlnet_aux"):
        logging.getLogger(name).setLevel(logging.ERROR)
