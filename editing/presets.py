"""Speed presets (`--preset fast`, ...): a few-step distilled LoRA with its sampler, an SDEdit start, guidance 1,
the tiny autoencoder and one attention setting, applied as defaults that explicit options override.

On the built-in random models a preset runs the same code with the `random` LoRA; the shapes model uses
its own distilled LoRA folder (`shapes_lora`) or is refused. Why these settings: docs/speed.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .compat import kept_options
from .errors import ConfigError
from .models import SHAPES_MODEL, SHAPES_MODEL_DIR, ModelSpec
from .samplers import sampler_names

# The presets' cross-frame attention and feature bank: one named setting each.
PRESET_ATTENTION = "first"
PRESET_BANK = 4  # StreamV2V's bounded feature bank: chunks after the first also attend to the last 4 frames before them
PRESET_NOTE = "preset {name} on the built-in random model '{model}': a random LoRA stands in for {lora}; the same code runs, its output means nothing"


@dataclass(frozen=True)
class Preset:
    """A speed preset: the defaults it sets (CLI option names, with _ for -)."""

    name: str
    lora: str = field(metadata={"help": "the distilled LoRA for real SD-1.x models (Hub id[/file])"})
    sampler: str = field(metadata={"help": "the sampler the LoRA was distilled for"})
    steps: int = field(default=8, metadata={"help": "length of the DDIM schedule; strength picks its tail"})
    strength: float = field(default=0.5, metadata={"help": "SDEdit strength: share of the schedule run"})
    guidance: float = field(default=1.0, metadata={"help": "classifier-free guidance (1: off, one UNet call per step)"})
    lora_scale: float = field(default=1.0, metadata={"help": "the LoRA's weight"})
    vae: str = field(default="tiny", metadata={"help": "autoencoder"})
    attention: str = field(default=PRESET_ATTENTION, metadata={"help": "cross-frame attention"})
    feature_bank: int = field(
        default=PRESET_BANK, metadata={"help": "frames of earlier chunks later chunks attend to (StreamV2V's bank)"}
    )
    keyframe_refine: float = field(
        default=0.0,
        metadata={
            "help": "with --keyframes: share of the schedule re-run on what no keyframe sees (0: the warped keyframes alone, as Rerender's non-keyframes)"
        },
    )
    distilled: str = field(
        default="",
        metadata={"help": "the kind of distilled LoRA (e.g. lcm): names the shapes model's own LoRA folder, shapes-KIND-lora"},
    )
    motion_adapter: str = field(
        default="", metadata={"help": "the motion module it runs with (editing.motion; '' = none): a few-step AnimateDiff model"}
    )
    help: str = field(default="", compare=False)

    def __post_init__(self):
        if self.sampler not in sampler_names():
            raise ValueError(f"preset {self.name}: sampler must be one of {', '.join(sampler_names())}; got {self.sampler!r}")
        if not (0 < self.strength <= 1 and self.steps >= 1 and self.guidance >= 0):
            raise ValueError(f"preset {self.name}: steps, strength or guidance out of range")

    @property
    def steps_run(self) -> int:
        """Denoising steps (= UNet evaluations per frame, guidance 1) the preset runs."""
        return max(1, round(self.steps * self.strength))

    def values(self, random_weights: bool, own_lora: str | None = None) -> dict[str, Any]:
        """The option values this preset sets, with the `random` LoRA for the built-in random models, or a
        model's `own_lora` folder (the shapes model's, see shapes_lora) with the model's own autoencoder."""
        lora = own_lora or ("random" if random_weights else self.lora)
        motion = (
            ("random" if random_weights else self.motion_adapter) if self.motion_adapter else None
        )  # only presets with a motion module
        return dict(
            lora=[f"{lora}:{self.lora_scale:g}"] if self.lora else [],
            lora_fuse=bool(self.lora),
            motion_adapter=motion,
            vae="model" if own_lora else self.vae,
            sampler=self.sampler,
            steps=self.steps,
            strength=self.strength,
            guidance=self.guidance,
            inversion="none",
            attention=self.attention,
            feature_bank=self.feature_bank,
            keyframe_refine=self.keyframe_refine,
        )


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to the registry; a name can be registered only once."""
    if not preset.name or preset.name != preset.name.strip():
        raise ValueError(f"a preset needs a plain name, got {preset.name!r}")
    if preset.name in PRESETS:
        raise ValueError(f"a preset named '{preset.name}' is already registered")
    PRESETS[preset.name] = preset
    return preset


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return PRESETS[name]


def shapes_lora(preset: Preset):
    """The shapes model's distilled LoRA folder for `preset` (editing/assets/shapes-KIND-lora), or None."""
    if not preset.distilled:
        return None
    folder = SHAPES_MODEL_DIR.parent / f"shapes-{preset.distilled}-lora"
    return folder if (folder / "pytorch_lora_weights.safetensors").is_file() else None


def _is_shapes(model: str) -> bool:
    return model.source == SHAPES_MODEL or model.folder == SHAPES_MODEL_DIR


def apply_preset(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Option values (the edit command's, by name) with the preset's (`values["preset"]`) for every option
    not set explicitly.

    Explicit options are `values["given_options"]` when the CLI recorded them (editing.requests.explicit_options);
    otherwise (the app's form, an eval spec) the options whose value differs from `defaults` (the edit command's)."""
    name = values.get("preset")
    if not name:
        return dict(values)
    preset = get_preset(name)
    model = ModelSpec.parse(values.get("model"))
    own = None
    if _is_shapes(model):
        own = shapes_lora(preset)
        if own is None:
            raise ConfigError(
                f"preset {name} needs an SD-1.x model; the shapes model has no distilled LoRA for it (it has one for --preset fast)"
            )
    given = values.get("given_options")
    if given is None:
        given = {k for k, v in values.items() if k in defaults and v != defaults[k]}
    preset_values = preset.values(
        model.random_weights, own.name if own else None
    )  # a shipped LoRA's name (editing.lora.ASSETS_DIR)
    for option in kept_options(values):  # editing.compat: e.g. a tuned model keeps its attention mode
        preset_values.pop(option, None)
    return {**values, **{k: v for k, v in preset_values.items() if k not in given}}


def preset_note(values: Mapping[str, Any]) -> str | None:
    """The note that a preset (`values["preset"]`) on a built-in random model (`values["model"]`) makes output
    that means nothing (None otherwise)."""
    name = values.get("preset")
    if not name:
        return None
    model = ModelSpec.parse(values.get("model"))
    return PRESET_NOTE.format(name=name, model=model.source, lora=get_preset(name).lora) if model.random_weights else None


register_preset(
    Preset(
        "fast",
        "latent-consistency/lcm-lora-sdv1-5",
        "lcm",
        distilled="lcm",
        help="LCM-LoRA, 4 LCM steps, guidance 1, SDEdit, tiny autoencoder",
    )
)
register_preset(Preset("tcd", "h1t/TCD-SD15-LoRA", "tcd", help="TCD LoRA, 4 TCD steps, guidance 1, SDEdit, tiny autoencoder"))
for _steps, _file in ((1, "1step"), (2, "2steps"), (4, "4steps"), (8, "8steps")):
    register_preset(
        Preset(
            f"hyper-sd-{_steps}",
            f"ByteDance/Hyper-SD/Hyper-SD15-{_file}-lora.safetensors",
            "ddim-trailing",
            steps=2 * _steps,
            help=f"Hyper-SD {_steps}-step LoRA, {_steps} trailing-DDIM step(s), guidance 1, SDEdit, tiny autoencoder",
        )
    )
# Few-step motion models (editing.motion): the motion module runs over 16-frame context windows (editing.windows),
# so no feature bank (it streams chunks; windows blend instead).
register_preset(
    Preset(
        "animatelcm", "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors", "lcm", lora_scale=0.8, feature_bank=0,
        motion_adapter="wangfuyun/AnimateLCM", help="AnimateLCM: its motion module and LCM LoRA (0.8), 4 LCM steps, guidance 1, SDEdit, tiny autoencoder",
    )
)  # fmt: skip
for _steps in (1, 2, 4, 8):
    register_preset(
        Preset(
            f"animatediff-lightning-{_steps}", "", "euler-trailing", steps=2 * _steps, feature_bank=0,
            motion_adapter=f"ByteDance/AnimateDiff-Lightning/animatediff_lightning_{_steps}step_diffusers.safetensors",
            help=f"AnimateDiff-Lightning {_steps}-step motion module, {_steps} trailing-Euler step(s), guidance 1, SDEdit, tiny autoencoder",
        )
    )  # fmt: skip
