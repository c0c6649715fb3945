"""LoRAs and the autoencoder choice: what a backbone is loaded with besides its own weights.

`--lora SPEC[:SCALE]` (repeatable) names a LoRA: a Hub id (`owner/name`, whose
`pytorch_lora_weights.safetensors` is read, or `owner/name/FILE.safetensors`), a local folder, a `.safetensors` file, the name of
a LoRA shipped in the package (`editing/assets/NAME-lora`, e.g. `shapes-lcm-lora`), or `random` (a seeded random LoRA
built from a peft `LoraConfig` for whatever UNet it is applied to: it exercises the loading path on the
built-in random models, and its effect means nothing). LoRAs are loaded through diffusers' LoRA loaders
into peft layers, fused into the weights or kept as separate layers (`fuse`).

`--vae tiny` swaps in diffusers' tiny autoencoder (`AutoencoderTiny`, TAESD): `madebyollin/taesd` for
real SD-1.x models, a random one of matching shape for the built-in random models.

Nothing here touches a cached backbone: `editing.models.load_backbone` applies `ModelOptions` to copies.
This module imports nothing heavy at import time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .compile import COMPILE_HELP
from .errors import ConfigError, ModelLoadError, require
from .motion import MOTION_HELP, MotionSpec

log = logging.getLogger(__name__)

RANDOM_LORA = "random"
RANDOM_LORA_NOTE = "the 'random' LoRA has random weights: it runs the LoRA code path, its effect means nothing"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections LCM-LoRA and most SD LoRAs adapt
VAE_CHOICES = ("model", "tiny")
TINY_VAE = "madebyollin/taesd"
HUB_LORA_FILE = "pytorch_lora_weights.safetensors"  # the file a Hub id without a file names (diffusers' name)
LORA_OFFLINE_ALTERNATIVES = "a local LoRA folder or .safetensors file, or 'random' (random weights) on the built-in models"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # LoRAs shipped with the package, named NAME-lora (e.g. shapes-lcm-lora)
TINY_VAE_OFFLINE_ALTERNATIVES = "--vae model (the model's own autoencoder) or a local AutoencoderTiny folder"


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA: where its weights are and how strongly it acts."""

    source: str = field(metadata={"help": "Hub id (owner/name[/file.safetensors]), local folder, .safetensors file, or 'random'"})
    scale: float = field(default=1.0, metadata={"help": "LoRA weight: 0 leaves the model as it is, 1 is the LoRA as trained"})

    def __post_init__(self):
        require(
            isinstance(self.source, str) and self.source.strip() != "",
            "lora must name a Hub id, a folder, a .safetensors file or 'random'",
        )
        require(self.source == self.source.strip(), f"lora {self.source!r} must not start or end with spaces")
        require(math.isfinite(self.scale) and -10 <= self.scale <= 10, f"lora scale must be between -10 and 10, got {self.scale}")
        path = Path(self.source).expanduser()
        if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):
            raise ConfigError(f"lora {path.name} is a pickle file; convert it to .safetensors, which cannot run code when loaded")

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """Read `SPEC[:SCALE]`, e.g. `latent-consistency/lcm-lora-sdv1-5`, `style.safetensors:0.8`, `random:0.5`."""
        text = str(text).strip()
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
            except ValueError:  # a colon that is part of the path (e.g. C:\\loras\\x.safetensors): no scale given
                return cls(text)
            return cls(head.strip(), scale)
        return cls(text)

    @property
    def random(self) -> bool:
        return self.source == RANDOM_LORA

    def __str__(self) -> str:
        return f"{self.source}:{self.scale:g}"


@dataclass(frozen=True)
class ModelOptions:
    """What the backbone is loaded with besides its own weights: LoRAs and the autoencoder."""

    loras: tuple[LoraSpec, ...] = field(
        default=(),
        metadata={
            "help": "a LoRA, repeatable: Hub id (owner/name[/file.safetensors]), local folder, .safetensors file, or random; SCALE defaults to 1",
            "flag": "--lora",
            "dest": "lora",
            "metavar": "SPEC[:SCALE]",
        },
    )
    fuse: bool = field(
        default=False,
        metadata={
            "help": "merge the LoRAs into the weights (faster steps) instead of keeping separate LoRA layers",
            "flag": "--lora-fuse",
            "dest": "lora_fuse",
        },
    )
    vae: str = field(
        default="model",
        metadata={
            "help": "autoencoder: model (the model's own) or tiny (AutoencoderTiny, TAESD: fast, a little blurrier)",
            "choices": VAE_CHOICES,
        },
    )
    motion_adapter: str | None = field(default=None, metadata={"help": MOTION_HELP, "metavar": "SPEC"})  # editing.motion
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP})  # editing.compile

    def __post_init__(self):
        require(
            isinstance(self.loras, tuple) and all(isinstance(s, LoraSpec) for s in self.loras),
            "loras must be a tuple of LoraSpec",
        )
        sources = [s.source for s in self.loras]
        require(len(set(sources)) == len(sources), f"each lora may appear once, got {', '.join(sources)}")
        require(len(self.loras) <= 8, f"at most 8 loras, got {len(self.loras)}")
        require(self.vae in VAE_CHOICES, f"vae must be one of {', '.join(VAE_CHOICES)}; got {self.vae!r}")
        require(bool(self.loras) or not self.fuse, "lora fuse needs at least one --lora")
        if self.motion_adapter is not None:
            MotionSpec.parse(self.motion_adapter)  # a malformed spec fails now

    @property
    def plain(self) -> bool:
        """Whether the backbone is the model's own, unchanged."""
        return not self.loras and self.vae == "model" and self.motion_adapter is None and not self.compile

    def suffix(self) -> str:
        """What these options add to a backbone's name (and so to every cache key that holds the name)."""
        parts = [f"lora={','.join(map(str, self.loras))}{'(fused)' if self.fuse else ''}"] if self.loras else []
        parts += [f"vae={self.vae}"] if self.vae != "model" else []
        parts += [f"motion={self.motion_adapter}"] if self.motion_adapter is not None else []
        parts += ["compiled"] if self.compile else []
        return "".join(f"+{p}" for p in parts)


def model_options(loras: list[str] | tuple[str, ...] = (), fuse: bool = False, vae: str | None = None) -> ModelOptions:
    """ModelOptions from the CLI's --lora (repeatable SPEC[:SCALE]), --lora-fuse and --vae values."""
    return ModelOptions(tuple(LoraSpec.parse(t) for t in loras), bool(fuse), vae or "model")


# ---------------------------------------------------------------- building and saving LoRAs


def lora_config(rank: int = 4, targets: tuple[str, ...] = LORA_TARGETS):
    """A peft LoraConfig for SD-1.x UNets (alpha = rank, so the scale is the LoRA weight itself)."""
    # here, not at the top: peft is heavy, and --help imports this module
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights="gaussian")


def random_lora_state_dict(unet: torch.nn.Module, rank: int = 4, seed: int = 0, std: float = 0.5) -> dict[str, Any]:
    """A seeded random LoRA for `unet`'s architecture, in diffusers' format (`unet.<module>.lora_A.weight`, ...).

    The layer names and shapes come from peft: the config is injected into an empty (meta-device) copy of
    the UNet, so no weights are copied. A is drawn with std 1/sqrt(in features) and B with `std`/sqrt(rank),
    so the update's size does not depend on the layer's width."""
    # here, not at the top: accelerate and peft are heavy, and --help imports this module
    from accelerate import init_empty_weights
    from peft.utils import get_peft_model_state_dict

    with init_empty_weights():
        empty = type(unet).from_config(unet.config)  # a UNet2DConditionModel, or a motion UNet (editing.motion)
        empty.add_adapter(lora_config(rank))
    shapes = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(empty).items()}
    generator = torch.Generator("cpu").manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        scale = shape[1] ** -0.5 if ".lora_A." in key else std * rank**-0.5
        state[f"unet.{key}"] = torch.randn(shape, generator=generator) * scale
    return state


def save_lora(path: str | Path, state_dict: dict[str, Any]) -> Path:
    """Write a LoRA state dict as one .safetensors file, as diffusers' `save_lora_weights` does."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    unet = {k.removeprefix("unet."): v.contiguous() for k, v in state_dict.items() if k.startswith("unet.")}
    text = {k.removeprefix("text_encoder."): v.contiguous() for k, v in state_dict.items() if k.startswith("text_encoder.")}
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=unet, text_encoder_lora_layers=text or None, weight_name=path.name, safe_serialization=True
    )
    return path


# ---------------------------------------------------------------- reading LoRAs


def _hub_location(source: str) -> tuple[str, str | None]:
    """`owner/name` or `owner/name/path/in/repo.safetensors` -> (repo id, file in the repo or None)."""
    parts = source.split("/")
    if len(parts) > 2 and parts[-1].endswith(".safetensors"):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return source, None


def lora_location(spec: LoraSpec) -> tuple[str, str, dict[str, str]]:
    """Where a LoRA's file is: (kind, folder or Hub repo, diffusers' loader options), kind being
    `single_file`, `folder` or `hub`; a missing local file or folder is refused in one sentence. `hub:ID`
    is a Hub id, never a local path (how the app passes Hub ids when it is served to others)."""
    if spec.source.startswith("hub:"):
        repo, weight = _hub_location(spec.source[len("hub:") :])
        if repo.count("/") != 1 or not all(repo.split("/")) or ".." in spec.source:
            raise ModelLoadError(f"lora '{spec.source}' is not a Hub id (hub:owner/name[/file.safetensors])")
        return "hub", repo, {"weight_name": weight or HUB_LORA_FILE}
    path = Path(spec.source).expanduser()
    hub_file = (
        path.suffix == ".safetensors"
        and not path.exists()
        and spec.source.count("/") >= 2
        and not spec.source.startswith((".", "/", "~"))
    )
    if path.suffix == ".safetensors" and not hub_file:
        if not path.is_file():
            raise ModelLoadError(f"LoRA file {spec.source} does not exist")
        return "single_file", str(path.parent), {"weight_name": path.name}
    if path.is_dir():
        return "folder", str(path.resolve()), {}
    shipped = ASSETS_DIR / spec.source
    if "/" not in spec.source and spec.source.endswith("-lora") and shipped.is_dir():
        return "folder", str(shipped), {}
    if spec.source.startswith((".", "/", "~")):
        raise ModelLoadError(f"LoRA folder {spec.source} does not exist")
    repo, weight = _hub_location(spec.source)
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelLoadError(
            f"lora '{spec.source}' is not a Hub id (owner/name[/file.safetensors]), a local folder, a .safetensors file, or 'random'"
        )
    return "hub", repo, {"weight_name": weight or HUB_LORA_FILE}


def check_lora_state(state: dict[str, Any], name: str) -> None:
    """Refuse, in one sentence, weights that are not LoRA layers."""
    if not state or not all("lora" in key for key in state):
        raise ModelLoadError(f"{name} is not a LoRA: its weights are not LoRA layers (no 'lora' in their names)")


# ---------------------------------------------------------------- applying LoRAs to copies of a backbone


def _adapter_keys(model: torch.nn.Module, adapter: str) -> int:
    """How many LoRA weights of `adapter` the model holds."""
    # here, not at the top: peft is heavy, and --help imports this module
    from peft.utils import get_peft_model_state_dict

    return len(get_peft_model_state_dict(model, adapter_name=adapter))


def _load_into(
    kind: str, state: dict[str, Any], alphas: dict[str, float], model: torch.nn.Module, adapter: str, name: str
) -> None:
    """Load one LoRA part (`unet` or `text_encoder`) into `model` through diffusers' loaders; refused in
    one sentence when its layers do not exist in the model or have other shapes."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import StableDiffusionPipeline

    part = {k: v for k, v in state.items() if k.startswith(f"{kind}.")}
    if not part:
        return
    expected = sum(1 for k in part if "lora" in k and k.endswith(".weight"))
    what = "UNet" if kind == "unet" else "text encoder"
    quiet = [
        logging.getLogger(n)
        for n in ("diffusers.loaders.peft", "diffusers.loaders.lora_base", "diffusers.utils.peft_utils", "peft")
    ]
    levels = [q.level for q in quiet]
    for q in quiet:  # diffusers logs the failure at error level before raising; ours is the one-line error
        q.setLevel(logging.CRITICAL)
    try:
        if kind == "unet":
            StableDiffusionPipeline.load_lora_into_unet(part, alphas, model, adapter_name=adapter)
        else:
            StableDiffusionPipeline.load_lora_into_text_encoder(part, alphas, model, adapter_name=adapter)
    except Exception as exc:  # peft and torch raise several types for layers that do not fit
        raise ModelLoadError(f"{name} is not a LoRA for this model's {what}: {_misfit(exc)}") from exc
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    loaded = _adapter_keys(model, adapter) if adapter in getattr(model, "peft_config", {}) else 0
    if loaded < expected:
        raise ModelLoadError(
            f"{name} is not a LoRA for this model's {what}: only {loaded} of its {expected} weights match the model's layers"
        )


def _misfit(exc: BaseException) -> str:
    """Why LoRA layers did not fit a model, in a few words."""
    text = " ".join(str(exc).split())
    if "size mismatch" in text:
        return "its layers have other shapes than the model's (a LoRA made for another architecture)"
    if "Target modules" in text or "not found in the base model" in text:
        return "it adapts layers the model does not have"
    return text[:160]


def apply_loras(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    specs: tuple[LoraSpec, ...],
    fuse: bool,
    read: Callable[[LoraSpec], tuple[dict, dict | None]],
) -> tuple[list[str], list[str]]:
    """Load `specs` into `unet` and `text_encoder` (copies the caller owns), set their scales, and merge
    them into the weights when `fuse`. `read(spec, unet)` returns a LoRA's (state dict, alphas) (it is
    `editing.models.read_lora`, the one place weights are read). Returns the adapter names in the UNet
    and in the text encoder."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    unet_names, text_names = [], []
    unet_scales, text_scales = [], []
    for number, spec in enumerate(specs):
        adapter = f"lora{number}"
        state, alphas = read(spec, unet)
        name = "the random LoRA" if spec.random else Path(spec.source).name
        known = [k for k in state if k.startswith(("unet.", "text_encoder."))]
        if not known:
            raise ModelLoadError(f"{name} is not a LoRA for an SD-1.x model: it has no UNet or text-encoder layers")
        _load_into("unet", state, alphas, unet, adapter, name)
        _load_into("text_encoder", state, alphas, text_encoder, adapter, name)
        if any(k.startswith("unet.") for k in state):
            unet_names.append(adapter)
            unet_scales.append(spec.scale)
        if any(k.startswith("text_encoder.") for k in state):
            text_names.append(adapter)
            text_scales.append(spec.scale)
    if unet_names:
        unet.set_adapters(unet_names, weights=unet_scales)
    if text_names:
        set_weights_and_activate_adapters(text_encoder, text_names, text_scales)
    if fuse:
        for model, names in ((unet, unet_names), (text_encoder, text_names)):
            if names:
                merge_adapters(model, names)
    return unet_names, text_names


def merge_adapters(model: torch.nn.Module, names: list[str]) -> None:
    """Merge the named LoRA adapters into the base weights, at their set scales (peft's `merge`), then put
    each fully merged layer's base layer back in its place: a merged peft layer only calls its base layer,
    so the output is the same and each call skips the wrapper."""
    # here, not at the top: peft is heavy, and --help imports this module
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = []
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[n for n in names if n in module.lora_A])
            merged.append((name, module))
    for name, module in merged:
        if set(module.active_adapters) <= set(module.merged_adapters):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())


# ---------------------------------------------------------------- the tiny autoencoder


def random_tiny_vae_config(name: str) -> dict:
    """AutoencoderTiny's architecture for the built-in random models: TAESD's for sd15-random (its cost is
    the real one), a narrower one for `tiny`; both downsample 8x to 4 latent channels, as SD's VAE does."""
    if name == "tiny":
        return dict(
            encoder_block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    return dict(latent_channels=4)  # diffusers' defaults are TAESD's
