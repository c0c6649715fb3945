"""Frozen, self-validating settings. Every entry point turns its inputs into these once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .attention.modes import attention_mode_names
from .compat import keyframes_by_default
from .condition_kinds import condition_kind_names
from .errors import ConfigError, require
from .samplers import DEFAULT_SAMPLER, sampler_names
from .stepcache import parse_step_caches, step_cache_help
from .windows import CONTEXT_HELP, ContextWindows


@dataclass(frozen=True)
class VideoLimits:
    """Bounds on what a user may upload; anything beyond is refused before decoding."""

    max_file_mb: float = field(default=500.0, metadata={"help": "largest input file in MB"})
    max_side: int = field(default=4096, metadata={"help": "largest input width or height in pixels"})
    max_duration: float = field(default=600.0, metadata={"help": "longest input in seconds"})
    max_source_frames: int = field(default=20000, metadata={"help": "most frames an input may hold"})

    def __post_init__(self):
        require(self.max_file_mb > 0, f"max_file_mb must be positive, got {self.max_file_mb}")
        require(self.max_side >= 8, f"max_side must be at least 8, got {self.max_side}")
        require(self.max_duration > 0, f"max_duration must be positive, got {self.max_duration}")
        require(self.max_source_frames >= 2, f"max_source_frames must be at least 2, got {self.max_source_frames}")


@dataclass(frozen=True)
class FrameSelection:
    """Which source frames to edit and at what size."""

    start: float = field(default=0.0, metadata={"help": "first second to keep"})
    end: float | None = field(default=None, metadata={"help": "last second to keep (exclusive)"})
    stride: int = field(
        default=1,
        metadata={
            "app": {"max": 8, "why": "a slider: strides past 8 skip most of a short clip"},
            "help": "keep every n-th frame",
            "range": "[1, inf)",
        },
    )
    max_frames: int | None = field(
        default=16,
        metadata={
            "app": {
                "default": 8,
                "max": 64,
                "why": "half the CLI's frames keep an interactive edit short; a slider needs an end",
            },
            "help": "most frames to edit (0 = all)",
            "flag": "--frames",
            "dest": "frames",
            "none_as": 0,
            "range": "[2, inf) or 0",
        },
    )
    size: int = field(
        default=512,
        metadata={
            "app": {
                "default": 256,
                "max": 768,
                "step": 64,
                "why": "SD-1.x models at half their size keep CPU edits short (a model drawn smaller, e.g. shapes at 64, keeps its own)",
            },
            "help": "long side in pixels, a multiple of 8 (default: the model's own size: 512 for SD 1.x, 64 for shapes)",
            "resolve": "native_size",
            "range": "[64, 2048], a multiple of 8",
        },
    )

    def __post_init__(self):
        require(math.isfinite(self.start) and self.start >= 0, f"start must be a time >= 0 s, got {self.start}")
        if self.end is not None:
            require(math.isfinite(self.end), f"end must be a finite time, got {self.end}")
            require(self.end > self.start, f"end ({self.end} s) must be after start ({self.start} s)")
        require(self.stride >= 1, f"stride must be at least 1, got {self.stride}")
        if self.max_frames is not None:
            require(self.max_frames >= 2, f"frames must be at least 2 for a video, got {self.max_frames}")
        require(64 <= self.size <= 2048, f"size must be between 64 and 2048 pixels, got {self.size}")
        require(self.size % 8 == 0, f"size must be a multiple of 8, got {self.size}")


# --strength when left out: the whole schedule (why, with the measurements: docs/consistency.md, "What the
# default was chosen on").
DEFAULT_STRENGTH = 1.0


@dataclass(frozen=True)
class EditConfig:
    """What to generate: prompt, sampler and randomness."""

    prompt: str = field(metadata={"help": "what the edited video should show"})
    negative_prompt: str = field(default="", metadata={"help": "what it should not show"})
    steps: int = field(
        default=20,
        metadata={
            "app": {
                "default": 10,
                "max": 50,
                "why": "half the CLI's steps keep an interactive edit short; more than 50 gains little",
            },
            "help": "denoising steps",
            "range": "[1, 1000]",
        },
    )
    guidance: float = field(
        default=7.5,
        metadata={
            "app": {"min": 1, "max": 15, "step": 0.5, "why": "a slider over the useful span: below 1 and above 15 draw badly"},
            "help": "classifier-free guidance scale; 1 disables it",
            "range": "[0, 50]",
        },
    )
    strength: float = field(
        default=DEFAULT_STRENGTH,
        metadata={
            "app": {
                "default": 0.6,
                "step": 0.05,
                "why": "an interactive edit keeps more of the source, so a first try resembles the clip",
            },
            "help": "share of the steps to invert and re-run: lower keeps more of the source (default: {default})",
            "range": "(0, 1]",
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same output"})
    sampler: str = field(
        default=DEFAULT_SAMPLER,
        metadata={"help": "sampler (editing.samplers); every one follows DDIM inversion's timesteps", "choices": sampler_names},
    )

    def __post_init__(self):
        require(isinstance(self.prompt, str) and self.prompt.strip() != "", "prompt must not be empty")
        require(1 <= self.steps <= 1000, f"steps must be between 1 and 1000, got {self.steps}")
        require(
            math.isfinite(self.guidance) and 0 <= self.guidance <= 50, f"guidance must be between 0 and 50, got {self.guidance}"
        )
        require(0 < self.strength <= 1, f"strength must be in (0, 1], got {self.strength}")
        require(0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed}")
        require(self.sampler in sampler_names(), f"sampler must be one of {', '.join(sampler_names())}; got {self.sampler!r}")

    @property
    def uses_guidance(self) -> bool:
        """Whether classifier-free guidance needs the unconditional branch."""
        return self.guidance > 1.0


INVERSIONS = ("ddim", "none")
REFERENCE_SCALE = 0.6  # IP-Adapter's weight against the prompt when --reference-image gives none
REFERENCE_MAX_SCALE = 2.0


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet: the condition kind, its weight, and the share of steps [start, end] it acts on."""

    kind: str = field(metadata={"choices": condition_kind_names})
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str | None = field(
        default=None,
        metadata={
            "app": {"api": False, "why": "ControlNets are the app's choice (a path or Hub id per kind)"},
            "help": "ControlNet for a kind (Hub id, folder, file)",
            "flag": "--control-model",
            "metavar": "KIND=SPEC",
        },
    )
    video: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "a condition video is a server path; the app extracts the maps itself"},
            "help": "use a condition video instead of extracting",
            "flag": "--control-video",
            "metavar": "KIND=VIDEO",
        },
    )

    def __post_init__(self):
        kinds = condition_kind_names()
        require(self.kind in kinds, f"control must be one of {', '.join(kinds)}; got {self.kind!r}")
        require(math.isfinite(self.scale) and 0 <= self.scale <= 5, f"control scale must be between 0 and 5, got {self.scale}")
        require(
            0 <= self.start < self.end <= 1, f"control steps must satisfy 0 <= start < end <= 1, got {self.start}..{self.end}"
        )

    @classmethod
    def parse(cls, text: str, **extra) -> ControlSpec:
        """Read `kind[:scale[:start:end]]`, e.g. `depth:0.8` or `pose:1.0:0:0.6`."""
        parts = text.strip().split(":")
        require(len(parts) in (1, 2, 4), f"control {text!r} must look like kind[:scale[:start:end]], e.g. depth:0.8")
        try:
            numbers = [float(p) for p in parts[1:]]
        except ValueError:
            raise ConfigError(f"control {text!r} has a value that is not a number") from None
        values = dict(zip(("scale", "start", "end"), numbers))
        return cls(parts[0].strip(), **values, **extra)


# --keyframes when left out: the best consistency setting of the shapes benchmark that edits as well as
# editing every frame (docs/consistency.md, "What the default was chosen on").
DEFAULT_KEYFRAMES = "8"


def default_keyframes(values: Mapping[str, Any]) -> str | None:
    """--keyframes left out: DEFAULT_KEYFRAMES where keyframes then propagation can run the edit, else every
    frame (None) where a feature of the edit turns them off (editing.compat: a --tuned model, a --control-video,
    a feature bank, attention editing, --attention none / tokenflow)."""
    if not keyframes_by_default(values):
        return None
    return DEFAULT_KEYFRAMES


def parse_keyframes(text: str | None) -> int | None:
    """`--keyframes`: None or '' (edit every frame) -> 0; 'auto' -> -1; 'N' (N >= 2) -> N."""
    if text is None or str(text).strip() in ("", "0", "off"):
        return 0
    text = str(text).strip().lower()
    if text == "auto":
        return -1
    try:
        every = int(text)
    except ValueError:
        raise ConfigError(f"keyframes must be a number of frames (e.g. 8) or 'auto', got {text!r}") from None
    if not 2 <= every <= 1000:
        raise ConfigError(f"keyframes must be every 2 to 1000 frames (or 'auto'), got {every}")
    return every


@dataclass(frozen=True)
class KeyframeImage:
    """An edited frame the user supplies (AnyV2V): it replaces frame `index`'s result and anchors the rest."""

    index: int
    path: str
    given_index: int | None = None  # the index the user gave, for messages, when `index` is remapped into a sub-clip (keyframes)

    @property
    def name(self) -> str:
        return f"keyframe_image {self.index if self.given_index is None else self.given_index}"

    def __post_init__(self):
        require(
            isinstance(self.index, int) and self.index >= 0,
            f"keyframe_image index must be a frame number >= 0, got {self.index!r}",
        )
        require(isinstance(self.path, str) and self.path.strip() != "", "keyframe_image needs a file after INDEX=")

    @classmethod
    def parse(cls, text: str) -> KeyframeImage:
        """Read `INDEX=PATH`, e.g. `0=first_edited.png`."""
        index, sep, path = text.partition("=")
        try:
            number = int(index.strip())
        except ValueError:
            number = None
        require(bool(sep) and number is not None, f"keyframe_image {text!r} must look like INDEX=PATH, e.g. 0=first_edited.png")
        return cls(number, path.strip())


@dataclass(frozen=True)
class EngineConfig:
    """How the video engine edits: inversion, cross-frame attention, chunking, ControlNets, smoothing."""

    attention: str = field(
        default="first",
        metadata={
            "help": "cross-frame attention (default: {default}; with --tuned, the mode it was tuned with)",
            "choices": attention_mode_names,
            "resolve": "tuned_attention",
        },
    )
    window: int = field(
        default=2,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "neighbours on each side for --attention window; frames per keyframe window for --attention tokenflow",
            "range": "[1, inf)",
        },
    )
    chunk: int = field(
        default=8,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "frames per UNet call; longer clips run in chunks sharing anchor frames",
            "range": "[1, inf)",
        },
    )
    token_merge: float = field(
        default=0.0,
        metadata={
            "help": "share of cross-frame attention context tokens merged into their nearest first-frame token (VidToMe); 0 = off",
            "range": "[0, 1)",
        },
    )
    feature_bank: int = field(
        default=0,
        metadata={
            "help": "frames of earlier chunks whose self-attention keys and values later chunks also attend to (StreamV2V); 0 = off",
            "range": "[0, 64]",
        },
    )
    step_cache: str | None = field(
        default=None, metadata={"help": step_cache_help(), "metavar": "KIND[:VALUE][,...]"}
    )  # editing.stepcache
    context: str | None = field(
        default=None, metadata={"help": CONTEXT_HELP, "metavar": "LENGTH[:OVERLAP[:SCHEDULE]]|off"}
    )  # editing.windows
    keyframes: str | None = field(
        default=None,
        metadata={
            "help": "edit only every N-th frame (or 'auto': where the scene changes) jointly, then propagate them to the other frames along the source's optical flow, re-diffusing only what no keyframe sees; 'off' edits every frame "
            f"(default: {DEFAULT_KEYFRAMES} where the edit allows it: not with --tuned, a --control-video, a --feature-bank, --source-prompt or --attention none/tokenflow)",
            "metavar": "EVERY|auto|off",
            "resolve": "default_keyframes",
        },
    )
    keyframe_images: tuple[KeyframeImage, ...] = field(
        default=(),
        metadata={
            "app": {"form": False, "why": "the Edit tab's own keyframe upload sets it, never a path from a form"},
            "help": "an edited frame of your own that replaces frame INDEX of the selected clip and anchors the others' attention, repeatable",
            "flag": "--keyframe-image",
            "dest": "keyframe_image",
            "metavar": "INDEX=PATH",
        },
    )
    keyframe_guidance: float = field(
        default=1.0,
        metadata={
            "help": "classifier-free guidance of an edit with a --keyframe-image: 1 (no guidance) lets the supplied frames, not the prompt, decide what the other frames show; higher lets the prompt steer too",
            "range": "[0, 50]",
        },
    )
    keyframe_fit: str = field(
        default="refuse",
        metadata={
            "help": "a --keyframe-image of another size: refuse it, resize it, or crop it (scale to cover, centre-crop)",
            "choices": ("refuse", "resize", "crop"),
        },
    )
    keyframe_refine: float = field(
        default=0.1,
        metadata={
            "help": "with --keyframes: share of the steps re-run, at low noise, on the regions no keyframe sees; 0 = none",
            "range": "[0, 1]",
        },
    )
    inversion: str = field(
        default="ddim", metadata={"help": "ddim: invert the source; none: noise it (SDEdit)", "choices": INVERSIONS}
    )
    inversion_prompt: str = field(
        default="",
        metadata={
            "app": {"api": False, "why": "the one-shot tab sets it from what the clip shows; the Edit tab leaves it blank"},
            "help": "prompt describing the source, used to invert it",
        },
    )
    controls: tuple[ControlSpec, ...] = field(
        default=(),
        metadata={
            "app": {"api": False, "why": "set by the ControlNet checkboxes and scale"},
            "help": "ControlNet conditioning, repeatable; KIND is one of {choices}",
            "flag": "--control",
            "dest": "control",
            "metavar": "KIND[:SCALE[:START:END]]",
        },
    )
    smooth_flow: bool = field(
        default=False,
        metadata={"help": "latent fusion along the optical flow", "flag": "--smooth", "dest": "smooth", "word": "flow"},
    )
    smooth_color: bool = field(
        default=False,
        metadata={
            "help": "match every frame's colours to the first frame's",
            "flag": "--smooth",
            "dest": "smooth",
            "word": "color",
        },
    )
    smooth_pixel: bool = field(
        default=False,
        metadata={
            "help": "occlusion-aware pixel fusion of the previous output frame in the late steps (Rerender)",
            "flag": "--smooth",
            "dest": "smooth",
            "word": "pixel",
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "where the cache lives is the app's business"},
            "help": "cache for inversions and condition maps",
        },
    )
    cache_bytes: int = field(default=4 * 1024**3, metadata={"help": "size cap of each on-disk cache", "option": False})
    annotators: str = field(
        default="lllyasviel/Annotators",
        metadata={
            "app": {"api": False, "why": "the app's annotators: a path or Hub id"},
            "help": "Hub id or folder of the depth / soft-edge annotators",
        },
    )
    reference_image: str | None = field(
        default=None,
        metadata={
            "help": f"an image of the subject the edit should show (IP-Adapter); SCALE weighs it against the prompt (default {REFERENCE_SCALE:g}, 0 = no effect)",
            "metavar": "PATH[:SCALE]",
            "file": "image",
        },
    )
    reference_adapter: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "a path or Hub id: the app picks the adapter"},
            "help": "IP-Adapter for --reference-image: Hub id[/file in the repo], local .safetensors/.bin file or folder, or random (default: h94/IP-Adapter's SD-1.5 adapter; a random one for tiny and sd15-random)",
            "metavar": "SPEC",
        },
    )

    def __post_init__(self):
        modes = attention_mode_names()
        require(self.attention in modes, f"attention must be one of {', '.join(modes)}; got {self.attention!r}")
        require(self.window >= 1, f"window must be at least 1, got {self.window}")
        require(self.chunk >= 1, f"chunk must be at least 1 frame, got {self.chunk}")
        require(
            math.isfinite(self.token_merge) and 0 <= self.token_merge < 1,
            f"token_merge must be in [0, 1), got {self.token_merge}",
        )
        require(0 <= self.feature_bank <= 64, f"feature_bank must be between 0 and 64 frames, got {self.feature_bank}")
        parse_step_caches(self.step_cache)
        parse_keyframes(self.keyframes)
        ContextWindows.parse(self.context)  # a malformed --context fails now; what it combines with is editing.compat's
        indices = [image.index for image in self.keyframe_images]
        require(
            len(set(indices)) == len(indices), f"each keyframe_image index may appear once, got {', '.join(map(str, indices))}"
        )
        require(
            math.isfinite(self.keyframe_guidance) and 0 <= self.keyframe_guidance <= 50,
            f"keyframe_guidance must be between 0 and 50, got {self.keyframe_guidance}",
        )
        require(
            self.keyframe_fit in ("refuse", "resize", "crop"),
            f"keyframe_fit must be one of refuse, resize, crop; got {self.keyframe_fit!r}",
        )
        require(
            math.isfinite(self.keyframe_refine) and 0 <= self.keyframe_refine <= 1,
            f"keyframe_refine must be in [0, 1], got {self.keyframe_refine}",
        )
        require(self.cache_bytes > 0, f"cache size must be positive, got {self.cache_bytes}")
        require(self.inversion in INVERSIONS, f"inversion must be one of {', '.join(INVERSIONS)}; got {self.inversion!r}")
        kinds = [c.kind for c in self.controls]
        require(len(set(kinds)) == len(kinds), f"each control kind may appear once, got {', '.join(kinds)}")
        if self.reference_image is not None:
            parse_reference(self.reference_image)
        require(self.reference_adapter is None or self.reference_image is not None, "reference_adapter needs a reference_image")

    @property
    def keyframes_every(self) -> int:
        """--keyframes as a number: 0 = edit every frame, -1 = auto, N = every N-th frame."""
        return parse_keyframes(self.keyframes)

    @property
    def reference(self) -> tuple[str, float] | None:
        """(path, scale) of the reference image, or None."""
        return None if self.reference_image is None else parse_reference(self.reference_image)


def parse_reference(text: str) -> tuple[str, float]:
    """Read `PATH[:SCALE]` (a path such as `C:\\dog.png` keeps its colon: only a number after the last one is a scale)."""
    require(isinstance(text, str) and text.strip() != "", "reference_image must name an image file, got nothing")
    path, sep, tail = text.strip().rpartition(":")
    scale = REFERENCE_SCALE
    if not sep:
        path = tail
    else:
        try:
            scale = float(tail)
        except ValueError:
            path = text.strip()  # no number after the colon: part of the path
        else:
            require(path.strip() != "", f"reference_image {text!r} must look like PATH[:SCALE], e.g. dog.png:0.6")
            require(
                math.isfinite(scale) and 0 <= scale <= REFERENCE_MAX_SCALE,
                f"reference_image scale must be between 0 and {REFERENCE_MAX_SCALE:g}, got {tail.strip()}",
            )
    return path.strip(), scale


PROMPT_EDITS = ("swap", "refine", "reweight")


@dataclass(frozen=True)
class AttentionEditConfig:
    """Prompt-to-Prompt / FateZero attention editing: what the source shows and how its attention is reused."""

    source_prompt: str = field(metadata={"help": "what the source shows; enables attention editing (and inverts with it)"})
    edit: str = field(
        default="refine",
        metadata={
            "help": "swap: same word count; refine: added words; reweight",
            "flag": "--edit",
            "dest": "prompt_edit",
            "choices": PROMPT_EDITS,
        },
    )
    cross_replace: float = field(
        default=0.8,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "share of the steps whose cross-attention comes from the source",
            "range": "[0, 1]",
        },
    )
    self_replace: float = field(
        default=0.4,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "share of the steps whose self-attention comes from the source",
            "range": "[0, 1]",
        },
    )
    blend_words: tuple[str, ...] = field(
        default=(), metadata={"help": "words whose attention masks the edited region; the rest keeps the source"}
    )
    blend_threshold: float = field(
        default=0.3,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "mask threshold on the blend words' normalised attention",
            "range": "[0, 1)",
        },
    )
    reweight: tuple[tuple[str, float], ...] = field(
        default=(),
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "scale a target word's attention (with --edit reweight), repeatable",
        },
    )
    null_text: bool = field(
        default=False,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default (slow)"},
            "help": "null-text inversion: fit per-step unconditional embeddings (slow, cached)",
        },
    )
    null_text_iterations: int = field(
        default=10,
        metadata={
            "app": {"api": False, "why": "advanced: stays at its default"},
            "help": "Adam iterations per step of null-text inversion",
            "range": "[1, 100]",
        },
    )
    self_downsample: int = field(
        default=4,
        metadata={"help": "store self-attention only at layers this many times smaller than the latent", "option": False},
    )

    def __post_init__(self):
        require(
            isinstance(self.source_prompt, str) and self.source_prompt.strip() != "",
            "source prompt must not be empty for attention editing",
        )
        require(self.edit in PROMPT_EDITS, f"edit must be one of {', '.join(PROMPT_EDITS)}; got {self.edit!r}")
        require(0 <= self.cross_replace <= 1, f"cross-replace must be in [0, 1], got {self.cross_replace}")
        require(0 <= self.self_replace <= 1, f"self-replace must be in [0, 1], got {self.self_replace}")
        require(0 <= self.blend_threshold < 1, f"blend threshold must be in [0, 1), got {self.blend_threshold}")
        require(all(w.strip() for w in self.blend_words), "blend words must not be empty")
        require(self.edit == "reweight" or not self.reweight, "reweight values need --edit reweight")
        require(self.edit != "reweight" or bool(self.reweight), "--edit reweight needs at least one --reweight WORD=VALUE")
        for word, value in self.reweight:
            require(math.isfinite(value) and -10 <= value <= 10, f"reweight of {word!r} must be between -10 and 10, got {value}")
        require(
            1 <= self.null_text_iterations <= 100,
            f"null-text iterations must be between 1 and 100, got {self.null_text_iterations}",
        )
        require(
            self.self_downsample >= 1 and not self.self_downsample & (self.self_downsample - 1),
            f"self_downsample must be a power of two, got {self.self_downsample}",
        )
