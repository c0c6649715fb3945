"""AnimateDiff motion modules over the frozen backbone: `--motion-adapter SPEC`.

A MotionAdapter (diffusers) holds trained temporal layers; `UNetMotionModel.from_unet2d` builds a UNet
with the backbone's own spatial weights and a motion module after every spatial block. The spec is a Hub
id (`owner/name`, a MotionAdapter repository), a Hub file (`owner/name/FILE.safetensors`, e.g.
AnimateDiff-Lightning's N-step files, read into the adapter's layout), a local MotionAdapter folder, a
single file (`MotionAdapter.from_single_file`), `shapes` (the module trained here for the shapes model,
editing/assets/shapes-motion) or `random` (a seeded random adapter shaped for the backbone, to test code).

The denoising loop calls the inflated UNet through `run_unet`: a batch of `branches x frames` images
becomes `(branches, channels, frames, h, w)`, so the motion modules attend over the frames of each
guidance branch, and back. The attention processors of editing.attention go on the spatial attention only
(`spatial_layer`); the motion modules keep their own temporal attention.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from .errors import ConfigError, ModelLoadError
from .hub import HUB_ID, HUB_PREFIX

if TYPE_CHECKING:
    from diffusers import MotionAdapter

SHAPES_MOTION = "shapes"
SHAPES_MOTION_DIR = Path(__file__).resolve().parent / "assets" / "shapes-motion"  # made by shapes_world/train_motion.py
RANDOM_MOTION = "random"
TEMPORAL_LAYERS = "motion_modules"  # the part of an attention layer's name that marks a motion module's
MOTION_OFFLINE_ALTERNATIVES = (
    "a local MotionAdapter folder or .safetensors file, 'shapes' with the shapes model, or 'random' to test the code"
)
MOTION_HELP = (
    "AnimateDiff motion module: Hub id (owner/name, or owner/name/FILE.safetensors such as AnimateDiff-Lightning's), "
    "local MotionAdapter folder or .safetensors file, shapes (trained here for the shapes model) or random (to test code)"
)
RANDOM_MOTION_NOTE = "the 'random' motion adapter has random weights: it tests the code, its output means nothing"
ADAPTER_FILE_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class MotionSpec:
    """A parsed --motion-adapter: its kind (shapes, random, folder, file, hub, hub-file) and where it is."""

    kind: str
    source: str
    filename: str | None = None  # hub-file: the file in the repository

    @classmethod
    def parse(cls, text: str) -> MotionSpec:
        """Tell the named modules, a local folder or file and a Hub id (or Hub file) apart."""
        text = str(text).strip()
        if not text:
            raise ConfigError("motion_adapter must not be empty")
        if text in (SHAPES_MOTION, RANDOM_MOTION):
            return cls(text, text)
        hub = text.startswith(HUB_PREFIX)
        text = text.removeprefix(HUB_PREFIX)
        path = Path(text).expanduser()
        if not hub and path.is_dir():
            return cls("folder", str(path.resolve()))
        if not hub and path.is_file():
            if path.suffix not in ADAPTER_FILE_SUFFIXES:
                raise ConfigError(
                    f"motion_adapter {path.name} must be a .safetensors file (a pickle checkpoint can run code when loaded)"
                )
            return cls("file", str(path.resolve()))
        if not hub and (text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 2)):
            raise ConfigError(f"motion_adapter {text} does not exist")
        parts = text.split("/")
        if len(parts) == 2 and HUB_ID.fullmatch(text) and ".." not in text:
            return cls("hub", text)
        if (
            len(parts) == 3
            and HUB_ID.fullmatch("/".join(parts[:2]))
            and parts[2].endswith(ADAPTER_FILE_SUFFIXES)
            and ".." not in text
        ):
            return cls("hub-file", "/".join(parts[:2]), parts[2])
        raise ConfigError(
            f"motion_adapter '{text}' is not a Hub id (owner/name[/FILE.safetensors]), "
            "a local folder or .safetensors file, shapes or random"
        )

    def __str__(self) -> str:
        return f"{self.source}/{self.filename}" if self.filename else self.source


# ---------------------------------------------------------------- building and loading


def build_adapter(unet_config: Mapping[str, Any], heads: int = 8, max_frames: int = 32, zero: bool = True):
    """A MotionAdapter shaped for a UNet2DConditionModel config; with `zero` its motion modules' output
    projections are zero (AnimateDiff's initialisation: the inflated UNet starts equal to the image model)."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import MotionAdapter

    channels = tuple(unet_config["block_out_channels"])
    adapter = MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=unet_config["layers_per_block"],
        motion_num_attention_heads=heads, motion_norm_num_groups=unet_config["norm_num_groups"],
        motion_max_seq_length=max_frames, use_motion_mid_block=True,
    )  # fmt: skip
    if zero:
        zero_output(adapter)
    return adapter


def zero_output(module: torch.nn.Module) -> None:
    """Zero every motion transformer's output projection inside `module`."""
    with torch.no_grad():
        for name, child in module.named_modules():
            if name.endswith("proj_out") and isinstance(child, torch.nn.Linear):
                child.weight.zero_()
                child.bias.zero_()


def random_adapter(unet_config: Mapping[str, Any], seed: int = 0):
    """A seeded random MotionAdapter for a backbone (output projections random too, so it changes the result)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = build_adapter(unet_config, heads=_heads_for(unet_config), zero=False)
        for name, child in adapter.named_modules():
            if name.endswith("proj_out") and isinstance(child, torch.nn.Linear):
                torch.nn.init.normal_(child.weight, std=0.02)
    return adapter


def _heads_for(unet_config: Mapping[str, Any]) -> int:
    """The largest of 8, 4, 2, 1 dividing every block's channels and the group norm's groups."""
    channels = tuple(unet_config["block_out_channels"])
    return next(h for h in (8, 4, 2, 1) if all(c % h == 0 for c in channels))


def read_motion_adapter(spec: MotionSpec, unet_config: Mapping[str, Any], load_from: Callable[..., Any]):
    """The MotionAdapter a spec names (fp32, on the CPU), refused in one sentence when it does not fit;
    `load_from(loader, alternatives=None)` runs a diffusers loader and words its failures (editing.models)."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import MotionAdapter

    if spec.kind == RANDOM_MOTION:
        adapter = random_adapter(unet_config)
    elif spec.kind == SHAPES_MOTION:
        if not (SHAPES_MOTION_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"the shapes motion module is missing from {SHAPES_MOTION_DIR} (made by shapes_world/train_motion.py)"
            )
        adapter = load_from(lambda: MotionAdapter.from_pretrained(SHAPES_MOTION_DIR, torch_dtype=torch.float32))
    elif spec.kind == "folder":
        if not (Path(spec.source) / "config.json").is_file():
            raise ModelLoadError(f"motion_adapter folder {spec.source} has no config.json: it is not a MotionAdapter folder")
        adapter = load_from(lambda: MotionAdapter.from_pretrained(spec.source, torch_dtype=torch.float32))
    elif spec.kind == "file":
        adapter = load_from(lambda: MotionAdapter.from_single_file(spec.source, torch_dtype=torch.float32))
    elif spec.kind == "hub":
        adapter = load_from(
            lambda: MotionAdapter.from_pretrained(spec.source, torch_dtype=torch.float32),
            MOTION_OFFLINE_ALTERNATIVES,
        )
    else:
        adapter = load_from(lambda: _hub_file_adapter(spec), MOTION_OFFLINE_ALTERNATIVES)
    check_fits(adapter, unet_config, str(spec))
    return adapter.requires_grad_(False).eval()


def _hub_file_adapter(spec: MotionSpec):
    """A MotionAdapter from one Hub file in diffusers' layout (AnimateDiff-Lightning's `*_diffusers.safetensors`),
    or in the original AnimateDiff layout (read by from_single_file)."""
    # here, not at the top: diffusers and huggingface_hub are heavy, and --help imports this module
    from diffusers import MotionAdapter
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(spec.source, spec.filename)
    state = load_file(path)
    if any(key.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for key in state):
        adapter = MotionAdapter()  # SD-1.5's shape: the files are made for it
        adapter.load_state_dict(state)
        return adapter
    return MotionAdapter.from_single_file(path, torch_dtype=torch.float32)


def check_fits(adapter: MotionAdapter, unet_config: Mapping[str, Any], name: str) -> None:
    """Refuse an adapter whose blocks do not match the backbone's UNet, in one sentence."""
    theirs, ours = tuple(adapter.config.block_out_channels), tuple(unet_config["block_out_channels"])
    layers = adapter.config.motion_layers_per_block
    if theirs != ours or layers != unet_config["layers_per_block"]:
        raise ConfigError(
            f"motion_adapter {name} was made for a UNet with channels {list(theirs)}, but the model's are {list(ours)}"
        )


def inflate(unet: torch.nn.Module, adapter: MotionAdapter):
    """The UNetMotionModel made of `unet`'s spatial weights and `adapter`'s motion modules, frozen, on the
    UNet's device and dtype."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import UNetMotionModel

    motion = UNetMotionModel.from_unet2d(unet, adapter).to(device=unet.device)
    if motion.dtype != unet.dtype:
        motion = motion.to(dtype=unet.dtype)
    return motion.requires_grad_(False).eval()


# ---------------------------------------------------------------- calling it


def is_motion_unet(unet: torch.nn.Module) -> bool:
    """Whether a UNet is inflated with motion modules."""
    return type(unet).__name__ == "UNetMotionModel"


def spatial_layer(name: str) -> bool:
    """Whether an attention layer (a `unet.attn_processors` name) is spatial, not a motion module's."""
    return TEMPORAL_LAYERS not in name


def max_frames(unet: torch.nn.Module) -> int:
    """The longest frame sequence a motion UNet's positional embeddings take."""
    return int(unet.config.motion_max_seq_length)


def run_unet(
    unet: torch.nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    branches: int,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """The UNet's prediction of a `(branches x frames, C, h, w)` batch, each branch a clip: a plain UNet
    takes it as it is; a motion UNet takes `(branches, C, frames, h, w)` (one text embedding per frame,
    one image embedding per branch, ControlNet residuals per frame) and gives the same layout back."""
    if not is_motion_unet(unet):
        return unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, **kwargs
        ).sample
    rows, channels, height, width = sample.shape
    frames = rows // branches
    if frames > max_frames(unet):
        raise ConfigError(f"the motion module takes at most {max_frames(unet)} frames per window; use a shorter --context")
    clips = sample.view(branches, frames, channels, height, width).transpose(1, 2)
    if (
        added_cond_kwargs and "image_embeds" in added_cond_kwargs
    ):  # the motion UNet repeats each branch's image embedding per frame
        added_cond_kwargs = {**added_cond_kwargs, "image_embeds": [e[::frames] for e in added_cond_kwargs["image_embeds"]]}
    out = unet(clips, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs, **kwargs).sample
    return out.transpose(1, 2).reshape(rows, -1, height, width)
