"""The options of region edits and object removal: where the mask comes from, how it is shaped, what is done in it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import require

TRACKERS = ("flow", "sam2")
DEFAULT_SAM_MODEL = "facebook/sam2.1-hiera-tiny"


@dataclass(frozen=True)
class MaskConfig:
    """A mask over the clip (a mask video, one frame's mask tracked through the clip, or words of the
    prompt), grown and feathered, and what to do with it: edit only inside (`region`) or remove what it covers."""

    mask: str | None = field(
        default=None,
        metadata={
            "help": "mask of the region (white = inside): a mask video with the clip's frames, or an image of "
            "one frame (IMAGE@FRAME; IMAGE alone: frame 0) tracked through the clip",
            "metavar": "FILE[@FRAME]",
            "file": "mask",
        },
    )
    mask_words: str | None = field(
        default=None,
        metadata={
            "help": "words naming the region (e.g. 'red star'): the model's cross-attention of them on the "
            "source, thresholded and steadied over time",
            "metavar": "WORDS",
        },
    )
    mask_track: str = field(
        default="flow",
        metadata={
            "help": "how a one-frame mask (IMAGE@FRAME) follows the clip: flow (the source's optical flow, "
            "offline) or sam2 (SAM 2 video model)",
            "choices": TRACKERS,
        },
    )
    mask_model: str = field(
        default=DEFAULT_SAM_MODEL,
        metadata={
            "app": {"form": False, "why": "a path or Hub id: the app picks the SAM model"},
            "help": "SAM 2 video model for --mask-track sam2 (Hub id or folder)",
            "metavar": "SPEC",
        },
    )
    mask_grow: int = field(
        default=0,
        metadata={
            "help": "pixels the mask is grown by on every side",
            "metavar": "PX",
            "range": "[0, 256]",
            "app": {"default": 2, "max": 32, "why": "a region drawn by hand needs a margin; a slider over the useful span"},
        },
    )
    mask_feather: int = field(
        default=0,
        metadata={
            "help": "pixels outside the grown mask over which the edit fades into the source",
            "metavar": "PX",
            "range": "[0, 256]",
            "app": {
                "default": 3,
                "max": 32,
                "why": "a soft edge hides a hand-drawn region's seam; a slider over the useful span",
            },
        },
    )
    mask_preview: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "a server path; the Region tab shows its own preview"},
            "help": "write the mask over the clip to this video before editing (.mp4 or .gif)",
            "metavar": "FILE",
        },
    )
    region: bool = field(
        default=False, metadata={"help": "edit only inside the mask: pixels outside it and its feather stay the source's exactly"}
    )
    remove: bool = field(
        default=False,
        metadata={
            "help": "remove what the mask covers: fill it from other frames along the background's flow, diffuse "
            "only what no frame shows (the prompt describes the background)"
        },
    )
    inpaint_model: str | None = field(
        default=None,
        metadata={
            "app": {"form": False, "why": "a path or Hub id: the app picks the inpainting model"},
            "help": "inpainting UNet for --remove (9-channel, e.g. "
            "stable-diffusion-v1-5/stable-diffusion-inpainting); default: blended latent diffusion with the backbone",
            "metavar": "SPEC",
        },
    )

    def __post_init__(self):
        require(self.mask is None or self.mask.strip() != "", "mask must name a file")
        require(self.mask_words is None or self.mask_words.strip() != "", "mask_words must not be empty")
        require(self.mask_track in TRACKERS, f"mask_track must be one of {', '.join(TRACKERS)}; got {self.mask_track!r}")
        require(
            isinstance(self.mask_grow, int) and 0 <= self.mask_grow <= 256,
            f"mask_grow must be 0 to 256 pixels, got {self.mask_grow}",
        )
        require(
            isinstance(self.mask_feather, int) and 0 <= self.mask_feather <= 256,
            f"mask_feather must be 0 to 256 pixels, got {self.mask_feather}",
        )
        require(
            not (self.region and self.remove),
            "region and remove cannot be combined: remove fills the mask, region edits inside it",
        )
        given = self.mask is not None or self.mask_words is not None
        require(not (self.mask is not None and self.mask_words is not None), "give mask or mask_words, not both")
        require(
            given or not (self.region or self.remove),
            f"{'remove' if self.remove else 'region'} needs a mask: --mask FILE or --mask-words WORDS",
        )
        require(given or self.mask_preview is None, "mask_preview needs a mask: --mask FILE or --mask-words WORDS")
        require(
            not given or self.region or self.remove or self.mask_preview is not None,
            "a mask needs --region (edit inside it) or --remove (remove what it covers)",
        )
        require(self.inpaint_model is None or self.remove, "inpaint_model needs remove")
        require(
            self.mask_preview is None or self.mask_preview.lower().endswith((".mp4", ".gif")),
            "mask_preview must end in .mp4 or .gif",
        )
        if self.mask is not None:
            parse_mask_file(self.mask)

    @property
    def given(self) -> bool:
        """Whether any mask is asked for."""
        return self.mask is not None or self.mask_words is not None

    @property
    def source(self) -> str:
        """The registered mask source this config reads (editing.masks)."""
        if self.mask_words is not None:
            return "words"
        return self.mask_track if parse_mask_file(self.mask)[1] is not None else "video"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def parse_mask_file(text: str) -> tuple[str, int | None]:
    """`FILE` (a mask video), `IMAGE@FRAME` (one frame's mask) or `IMAGE` (frame 0's): (path, frame or None)."""
    path, sep, tail = text.strip().rpartition("@")
    if sep and tail.strip().isdigit() and path.strip():
        return path.strip(), int(tail)
    require(not (sep and tail.strip().lstrip("-").isdigit()), f"mask frame must be a frame number >= 0, got {tail.strip()!r}")
    return text.strip(), 0 if text.strip().lower().endswith(IMAGE_SUFFIXES) else None
