"""`python -m editing eval SPEC.yaml`: run a list of edits, measure them, tabulate the results.

A spec is YAML with three top-level keys:

    clip: random            # CLIP for the text scores: Hub id, folder, open_clip:NAME[@PRETRAINED], random, none
    defaults: {model: tiny, frames: 4, size: 64, steps: 2}   # settings every edit starts from
    edits:
      - name: car-watercolor                 # file-safe; defaults to <video stem>-<number>
        video: ../assets/car-turn.mp4        # relative to the spec file
        prompt: a watercolor painting of a car turning
        source_prompt: a car turning on a road  # inverts the source; frame accuracy compares with it
        reconstruction: true                 # also measure how well the inversion reconstructs the source

Settings are the `edit` command's options with `_` for `-` (`negative_prompt`, `control`, `smooth`,
...), mapped through the same code as the CLI, so they validate the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import re
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from . import metrics, requests, sampling, video_io
from .clip_score import CLIP_RANDOM_NOTE, load_clip
from .config import EditConfig, parse_reference
from .errors import ConfigError, EditingError, ModelLoadError
from .flows import source_flows
from .models import load_backbone
from .pipeline import STAGES, ProgressFn, edit_video
from .requests import EditRequest

if TYPE_CHECKING:
    from .clip_score import ClipScorer
    from .pipeline import EditResult

log = logging.getLogger(__name__)

SPEC_KEYS = ("clip", "defaults", "edits")
EVAL_KEYS = ("name", "video", "source_prompt", "reconstruction", "attention_edit")
_CLI_ONLY = ("video", "out")  # edit options a spec does not set (the spec names its videos; outputs are the runner's)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CONTACT_COLUMNS = 8
CONTACT_HEIGHT = 96


@dataclass(frozen=True)
class EvalEdit:
    """One edit of an evaluation: the request the CLI would build, and what to measure about it."""

    name: str
    request: EditRequest
    source_prompt: str = ""
    reconstruction: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise ConfigError(f"edit name {self.name!r} must be letters, digits, '.', '_' or '-' (it names files)")
        if self.reconstruction and not self.request.engine.inversion_prompt.strip():
            raise ConfigError(
                f"edit {self.name!r}: reconstruction needs a source_prompt (or inversion_prompt) to invert and re-render with"
            )


@dataclass(frozen=True)
class EvalSpec:
    """A validated evaluation: the CLIP to score with (None = skip CLIP scores) and the edits."""

    edits: tuple[EvalEdit, ...]
    clip: str | None = "random"

    def __post_init__(self):
        if not self.edits:
            raise ConfigError("the spec lists no edits")
        names = [edit.name for edit in self.edits]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"edit names must be unique; {duplicates[0]!r} appears more than once")


# ---------------------------------------------------------------- reading a spec


def _edit_options() -> dict[str, requests.Option]:
    """Every option of the edit command a spec may set, by name (the request schema's own list)."""
    return {option.name: option for option in requests.options("edit") if option.name not in _CLI_ONLY}


def _coerce(where: str, option: requests.Option, value: Any):
    """A spec value in the option's form (YAML already typed it), checked as the app's forms check it."""
    try:
        return requests.coerce(option, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _settings(where: str, entry: Mapping[str, Any], defaults: dict, known: dict) -> dict:
    """Spec settings merged over `defaults`, keys normalised and checked, values coerced."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(entry).__name__}")
    merged = dict(defaults)
    for raw_key, value in entry.items():
        key = str(raw_key).replace("-", "_")
        if key in EVAL_KEYS:
            merged[key] = value
            continue
        if key not in known:
            choices = ", ".join(sorted({*known, *EVAL_KEYS}))
            raise ConfigError(f"{where}: unknown setting {raw_key!r}; known settings: {choices}")
        merged[key] = _coerce(where, known[key], value)
    return merged


def _edit(index: int, settings: dict, base: Path, known: dict, missing_videos: bool = False) -> EvalEdit:
    """One EvalEdit from merged settings, built through the request schema, as the CLI and the app build theirs;
    with `missing_videos` a video that does not exist is left for the run to report (a batch fails that edit only)."""
    video = settings.get("video")
    where = f"edit {index + 1}"
    if not isinstance(video, str) or not video.strip():
        raise ConfigError(f"{where} needs a video")
    path = Path(video).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file() and not missing_videos:
        raise ConfigError(f"{where}: video {video} does not exist (paths are relative to the spec file)")
    name = str(settings.get("name") or f"{path.stem}-{index + 1}")
    where = f"edit {name!r}"
    source_prompt = settings.get("source_prompt") or ""
    reconstruction = settings.get("reconstruction", False)
    attention_edit = settings.get("attention_edit", False)
    if not isinstance(source_prompt, str) or not isinstance(reconstruction, bool) or not isinstance(attention_edit, bool):
        raise ConfigError(f"{where}: source_prompt must be text, reconstruction and attention_edit true or false")
    if settings.get("prompt") is None:
        raise ConfigError(f"{where} needs a prompt")
    values = {key: settings[key] for key in known}
    # source_prompt describes the source (inversion, frame accuracy); it drives a Prompt-to-Prompt /
    # FateZero edit, as --source-prompt does on the command line, only with attention_edit: true.
    values["source_prompt"] = source_prompt if attention_edit else None
    if not values["inversion_prompt"]:
        values["inversion_prompt"] = source_prompt
    if values["cache_dir"]:
        values["cache_dir"] = str(base / Path(values["cache_dir"]).expanduser())
    try:
        if values.get("reference_image"):  # PATH[:SCALE], the path relative to the spec file
            image, scale = parse_reference(values["reference_image"])
            values["reference_image"] = f"{base / Path(image).expanduser()}:{scale:g}"
        request = requests.edit_request(values | {"video": str(path.resolve()), "out": f"{name}.zip"})
    except EditingError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    return EvalEdit(name, request, source_prompt, reconstruction)


def parse_spec(data: Mapping[str, Any], base: Path, clip: str | None = None, missing_videos: bool = False) -> EvalSpec:
    """An EvalSpec from a parsed YAML document; relative paths are taken from `base`. A video that does not
    exist refuses the spec, unless `missing_videos` (the batch, which fails only that edit)."""
    if not isinstance(data, dict):
        raise ConfigError("the spec must be a mapping with 'edits' (and optionally 'clip' and 'defaults')")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]!r} in the spec; use {', '.join(SPEC_KEYS)}")
    known = _edit_options()
    defaults = _settings("defaults", data.get("defaults") or {}, requests.defaults("edit"), known)
    edits = data.get("edits")
    if not isinstance(edits, list):
        raise ConfigError("'edits' must be a list of edits, each with at least a video and a prompt")
    chosen = clip if clip is not None else data.get("clip", "random")
    if chosen is not None and not isinstance(chosen, str):
        raise ConfigError(f"clip must be a model spec or 'none', got {chosen!r}")
    chosen = None if chosen is None or chosen.strip().lower() in ("", "none") else chosen.strip()
    built = [
        _edit(i, _settings(f"edit {i + 1}", entry, defaults, known), base, known, missing_videos) for i, entry in enumerate(edits)
    ]
    return EvalSpec(tuple(built), chosen)


def load_spec(path: str | Path, clip: str | None = None, missing_videos: bool = False) -> EvalSpec:
    """Read and validate a YAML spec file; `clip` overrides its CLIP choice; `missing_videos` as in parse_spec."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        refuse_aliases(text, path.name)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"spec {path.name} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from exc
    return parse_spec(data, path.resolve().parent, clip, missing_videos)


def refuse_aliases(text: str, name: str) -> None:
    """Refuse a YAML document that uses an alias (`*name`), reading only its event stream: nothing is built,
    so a few hundred bytes of nested aliases (a "billion laughs" bomb) never expand into memory."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"spec {name} uses a YAML alias (*{event.anchor}) at line {event.start_mark.line + 1}: aliases are refused, "
                "so write the settings out or put the shared ones under defaults"
            )


# ---------------------------------------------------------------- running it


@dataclass
class EvalRow:
    """What one edit measured: metric values (numbers, or text saying why not), timings, per-pair warp errors."""

    name: str
    values: dict = field(default_factory=dict)
    warp_errors: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class EvalReport:
    """The written tables and the rows behind them."""

    rows: list[EvalRow]
    csv: Path
    md: Path
    json: Path
    markdown: str
    notes: list[str]

    @property
    def failures(self) -> int:
        return sum(1 for row in self.rows if row.error)


METRIC_COLUMNS = (
    "warp_error",
    "source_warp_error",
    "clip_text",
    "clip_consistency",
    "frame_accuracy",
    "recon_psnr",
    "recon_ssim",
    "vae_psnr",
    "vae_ssim",
)
COLUMNS = (
    "name",
    "video",
    "prompt",
    "source_prompt",
    "model",
    "frames",
    "width",
    "height",
    "steps",
    *METRIC_COLUMNS,
    "clip_model",
    *(f"seconds_{stage}" for stage in STAGES),
    "seconds_edit",
    "seconds_reconstruction",
    "seconds_metrics",
    "inversion_cached",
    "error",
)


def read_png_zip(path: str | Path) -> np.ndarray:
    """The frames of a PNG zip written by `video_io.write_png_zip`, in order, as (N, H, W, 3) uint8."""
    with zipfile.ZipFile(path) as archive:
        names = sorted(name for name in archive.namelist() if name.lower().endswith(".png"))
        return np.stack([np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("RGB")) for name in names])


def contact_sheet(
    rows: list[tuple[str, np.ndarray]], columns: int = CONTACT_COLUMNS, height: int = CONTACT_HEIGHT
) -> Image.Image:
    """One labelled row of evenly spaced thumbnails per clip (e.g. source over output), same frames in every row."""
    count = len(rows[0][1])
    picks = np.unique(np.linspace(0, count - 1, min(columns, count)).round().astype(int))
    frame_height, frame_width = rows[0][1].shape[1:3]
    width = max(1, round(frame_width * height / frame_height))
    label_width, gap = 72, 2
    sheet = Image.new("RGB", (label_width + len(picks) * (width + gap), len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        top = r * (height + gap)
        draw.text((4, top + height // 2 - 6), label, fill="black")
        for c, index in enumerate(picks):
            thumb = Image.fromarray(frames[index]).resize((width, height), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (label_width + c * (width + gap), top))
    return sheet


def _load_scorer(spec: EvalSpec, device: str | None):
    """The CLIP scorer, or None and the reason it is unavailable."""
    if spec.clip is None:
        return None, "not requested (clip: none)"

    try:
        return load_clip(spec.clip, device), ""
    except ModelLoadError as exc:
        log.warning("CLIP metrics unavailable: %s", exc)
        return None, str(exc)


def _measure(edit: EvalEdit, workdir: Path, out_dir: Path, scorer: ClipScorer, clip_reason: str, progress: ProgressFn) -> EvalRow:
    """Run one edit (and its reconstruction), measure it, write its video and contact sheet."""
    request = dataclasses.replace(edit.request, output=str(workdir / f"{edit.name}.zip"))
    result = edit_video(request, progress)
    output = result.images  # the edited frames, as written (the zip is not read back)
    clip = video_io.read_clip(request.video, request.selection, request.limits)
    row = EvalRow(edit.name, _edit_values(result))
    sheet = [("source", clip.frames), ("output", output)]
    if edit.reconstruction:
        begin = time.perf_counter()
        reconstruction = _reconstruct(edit, request, workdir, progress)
        row.values["seconds_reconstruction"] = time.perf_counter() - begin
        row.values.update(_reconstruction_values(request, clip.frames, reconstruction))
        sheet.append(("reconstr.", reconstruction))
    else:
        row.values.update(dict.fromkeys(("recon_psnr", "recon_ssim", "vae_psnr", "vae_ssim"), "not requested"))
    begin = time.perf_counter()
    row.warp_errors, temporal = _temporal_values(clip.frames, output)
    row.values.update(temporal)
    row.values.update(_clip_values(scorer, clip_reason, output, request.edit.prompt, edit.source_prompt))
    row.values["seconds_metrics"] = time.perf_counter() - begin
    audio = video_io.AudioSource(request.video, clip.start, clip.end) if clip.source.has_audio else None
    video_io.write_video(out_dir / f"{edit.name}.mp4", output, clip.fps, audio)
    contact_sheet(sheet).save(out_dir / f"contact-{edit.name}.png")
    return row


def _edit_values(result: EditResult) -> dict:
    """The table cells an EditResult fills: model, size, seconds per stage, cache use."""
    return dict(
        model=result.model + (" (random weights)" if result.random_weights else ""),
        frames=result.frames,
        width=result.width,
        height=result.height,
        **{f"seconds_{stage}": result.seconds.get(stage, 0.0) for stage in STAGES},
        seconds_edit=sum(result.seconds.values()),
        inversion_cached=result.inversion_cached,
    )


def _reconstruction_values(request: EditRequest, source: np.ndarray, reconstruction: np.ndarray) -> dict:
    """PSNR / SSIM of the reconstruction, and of the VAE alone (its ceiling), against the source frames."""
    recon_psnr, recon_ssim = metrics.frame_psnr_ssim(source, reconstruction)
    vae_psnr, vae_ssim = metrics.frame_psnr_ssim(source, _autoencode(request, source))
    return dict(recon_psnr=recon_psnr, recon_ssim=recon_ssim, vae_psnr=vae_psnr, vae_ssim=vae_ssim)


def _temporal_values(source: np.ndarray, output: np.ndarray) -> tuple[list[float], dict]:
    """Per-pair warp errors of the output, and the mean for the output and for the source itself."""
    flows = source_flows(source)
    errors = metrics.warp_errors(source, output, flows)
    floor = metrics.warp_errors(source, source, flows)
    return [float(e) for e in errors], dict(
        warp_error=metrics.mean_warp_error(errors), source_warp_error=metrics.mean_warp_error(floor)
    )


def _clip_values(scorer: ClipScorer, reason: str, output: np.ndarray, prompt: str, source_prompt: str) -> dict:
    """CLIP text score, frame consistency and frame accuracy, or why they are missing."""
    if scorer is None:
        return dict.fromkeys(("clip_text", "clip_consistency", "frame_accuracy"), f"unavailable: {reason}")
    return {"frame_accuracy": "needs a source_prompt", **metrics.clip_scores(scorer, output, prompt, source_prompt)}


def _reconstruct(edit: EvalEdit, request: EditRequest, workdir: Path, progress: ProgressFn) -> np.ndarray:
    """Frames of the source inverted with the inversion prompt and re-rendered with it, unguided (guidance 1).

    Controls and smoothing are left out, so only inversion (and the VAE) can lose detail; the
    inversion comes from the cache the edit just filled.
    """
    config = dataclasses.replace(request.edit, prompt=request.engine.inversion_prompt, negative_prompt="", guidance=1.0)
    engine = dataclasses.replace(request.engine, controls=(), smooth_flow=False, smooth_color=False, smooth_pixel=False)
    output = workdir / f"{edit.name}-reconstruction.zip"
    return edit_video(dataclasses.replace(request, edit=config, engine=engine, output=str(output)), progress).images


def _autoencode(request: EditRequest, frames: np.ndarray) -> np.ndarray:
    """The frames through the model's VAE alone: the best any inversion can reconstruct."""
    backbone = load_backbone(request.model, request.device, request.dtype)
    latents = sampling.encode_frames(backbone, frames, request.engine.chunk)
    return sampling.decode_latents(backbone, latents, request.engine.chunk)


def _cell(value: Any, markdown: bool = False) -> str:
    """A table cell: numbers rounded, reasons kept (shortened to 'unavailable' in Markdown; the notes hold them)."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if markdown else f"{value:.6g}"  # nan and inf print as such
    text = str(value)
    if markdown:
        text = "unavailable" if text.startswith("unavailable:") else text
        return text.replace("|", "\\|").replace("\n", " ")
    return text


def _table(rows: list[dict], columns: list[str], prefix: str = "") -> str:
    """A GitHub Markdown table of the given columns, `prefix` left out of the headers."""
    lines = ["| " + " | ".join(c.removeprefix(prefix) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c), markdown=True) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _markdown(rows: list[dict], notes: list[str]) -> str:
    """Markdown: a metrics table, a stage-timing table (seconds), the notes, and any errors."""
    timing = ["name", *(c for c in COLUMNS if c.startswith("seconds_")), "inversion_cached"]
    text = "## Metrics\n\n" + _table(rows, ["name", "model", "frames", "width", "height", "steps", *METRIC_COLUMNS])
    text += "\n## Stage timings (seconds)\n\n" + _table(rows, timing, prefix="seconds_")
    text += "\n" + "".join(f"- {note}\n" for note in notes)
    errors = [f"- {row['name']}: {row['error']}\n" for row in rows if row.get("error")]
    return text + ("\n## Errors\n\n" + "".join(errors) if errors else "")


def run_evaluation(spec: EvalSpec, out_dir: str | Path, progress: ProgressFn | None = None) -> EvalReport:
    """Run every edit of the spec and write results.csv, results.md, results.json, <name>.mp4 and contact-<name>.png."""
    progress = progress or (lambda stage, done, total: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scorer, clip_reason = _load_scorer(spec, spec.edits[0].request.device)
    notes = []
    if scorer is None:
        notes.append(f"CLIP metrics unavailable: {clip_reason}")
    elif scorer.random_weights:
        notes.append(f"CLIP metrics: {CLIP_RANDOM_NOTE}")
    notes.append("warp errors are in 8-bit levels; CLIP scores are 100 x cosine similarity; frame accuracy is a percentage")
    results: list[EvalRow] = []
    table: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="eval-", dir=out) as workdir:
        for edit in spec.edits:
            log.info("eval: %s", edit.name)
            try:
                row = _measure(edit, Path(workdir), out, scorer, clip_reason, progress)
            except EditingError as exc:
                row = EvalRow(edit.name, error=str(exc))
            results.append(row)
            config: EditConfig = edit.request.edit
            base = dict(
                name=edit.name,
                video=edit.request.video,
                prompt=config.prompt,
                source_prompt=edit.source_prompt,
                steps=config.steps,
            )
            base["clip_model"] = _clip_label(spec.clip, scorer)
            table.append({**base, **row.values, "error": row.error})
    return _write_tables(out, table, results, notes)


def _write_tables(out: Path, table: list[dict], results: list[EvalRow], notes: list[str]) -> EvalReport:
    """Write results.csv, results.md and results.json (with the per-pair warp errors)."""
    paths = out / "results.csv", out / "results.md", out / "results.json"
    with open(paths[0], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: _cell(row.get(c)) for c in COLUMNS} for row in table)
    markdown = _markdown(table, notes)
    paths[1].write_text(markdown, encoding="utf-8")
    document = [
        {**{c: _json_value(row.get(c)) for c in COLUMNS}, "warp_errors": [_json_value(e) for e in result.warp_errors]}
        for row, result in zip(table, results)
    ]
    paths[2].write_text(json.dumps({"rows": document, "notes": notes}, indent=2), encoding="utf-8")
    return EvalReport(results, *paths, markdown, notes)


def _clip_label(spec: str | None, scorer: ClipScorer) -> str:
    """The CLIP column: the model used, labelled when its weights are random, or why none was."""
    if scorer is None:
        return "none" if spec is None else f"{spec} (unavailable)"
    return scorer.name + (" (random weights)" if scorer.random_weights else "")


def _json_value(value: Any):
    """A value strict JSON can hold: numpy scalars as numbers, nan and inf as text."""
    value = value.item() if hasattr(value, "item") else value
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value
