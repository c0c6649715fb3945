"""A reference image of the subject (Make-A-Protagonist's "this dog, from this photo"), through an IP-Adapter.

IP-Adapter (Ye et al. 2023) adds, beside each cross-attention layer's text keys and values, keys and values
of a few image tokens: the reference's CLIP image embedding, projected (`ImageProjection`). The weights
are read in the IP-Adapter checkpoint layout and turned into diffusers modules by diffusers' own UNet
loaders (`_convert_ip_adapter_attn_to_diffusers`, `_convert_ip_adapter_image_proj_to_diffusers`): an
`IPAdapterAttnProcessor2_0` per cross-attention layer and a `MultiIPAdapterImageProjection`.

They are not loaded into the backbone's UNet for good (the plain model stays plain): `ImageAdapter.installed`
puts the processors and the projection in for one denoising loop and takes them out in `finally`. The
cross-frame processors swapped in over them keep their image attention (editing.attention.cross_frame).
The reference is embedded once per edit; the conditional guidance branch gets its embedding, the
unconditional one zeros (as diffusers' pipelines do), through `added_cond_kwargs={"image_embeds": ...}`.
Reading files and the Hub is `editing.models.load_image_adapter`'s job (this module imports nothing of
editing.models: the core hands the loader in).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from .config import EngineConfig

DEFAULT_ADAPTER = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
ADAPTER_OFFLINE_ALTERNATIVES = (
    "a local IP-Adapter file or folder with its image_encoder folder (--reference-adapter), or leave out --reference-image"
)
RANDOM_EMBED_DIM = 32  # image-embedding width of the random image encoder
MAX_REFERENCE_PIXELS = 8192 * 8192


@dataclass(eq=False)
class ImageAdapter:
    """One IP-Adapter for one backbone: its cross-attention processors, image projection and image encoder."""

    name: str
    processors: dict[str, torch.nn.Module]  # cross-attention layer name -> IPAdapterAttnProcessor2_0
    projection: torch.nn.Module  # MultiIPAdapterImageProjection
    image_encoder: torch.nn.Module  # CLIPVisionModelWithProjection
    feature_extractor: Any  # CLIPImageProcessor at the encoder's size
    random_weights: bool = False

    @torch.no_grad()
    def embed(self, image: np.ndarray) -> torch.Tensor:
        """The (1, 1, width) CLIP image embedding of one (H, W, 3) uint8 RGB image (batch, images, width)."""
        encoder = self.image_encoder
        pixels = self.feature_extractor(images=Image.fromarray(image), return_tensors="pt").pixel_values
        pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
        return encoder(pixels).image_embeds[:, None]

    @contextlib.contextmanager
    def installed(self, unet: torch.nn.Module, scale: float) -> Iterator[None]:
        """The UNet with this adapter's processors (at `scale`) and image projection; the originals come back after."""
        if unet.encoder_hid_proj is not None:
            raise ModelLoadError(
                f"the model already has an encoder projection ({unet.config.encoder_hid_dim_type}); an IP-Adapter cannot be added"
            )
        original = dict(unet.attn_processors)
        missing = sorted(set(self.processors) - set(original))
        if missing:
            raise ModelLoadError(f"IP-Adapter {self.name} was made for a UNet with other attention layers (no {missing[0]})")
        scales = {name: processor.scale for name, processor in self.processors.items()}
        kind = unet.config.encoder_hid_dim_type
        try:
            for processor in self.processors.values():
                processor.scale = [float(scale)] * len(processor.scale)
            unet.set_attn_processor({name: self.processors.get(name, processor) for name, processor in original.items()})
            unet.encoder_hid_proj = self.projection
            unet.config.encoder_hid_dim_type = "ip_image_proj"  # what diffusers' _load_ip_adapter_weights sets
            yield
        finally:
            unet.config.encoder_hid_dim_type = kind
            unet.encoder_hid_proj = None
            unet.set_attn_processor(original)
            for name, processor in self.processors.items():
                processor.scale = scales[name]


@dataclass(frozen=True)
class ImagePrompt:
    """A reference image for the denoising loop: its embedding per guidance branch, its adapter and weight."""

    positive: torch.Tensor  # (1, 1, width): the reference's CLIP image embedding
    negative: torch.Tensor  # zeros of the same shape: the unconditional branch
    adapter: ImageAdapter
    scale: float

    def installed(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager:
        return self.adapter.installed(unet, self.scale)


def read_reference_image(path: str) -> np.ndarray:
    """The (H, W, 3) uint8 RGB pixels of the reference image, or one sentence naming reference_image."""
    name = Path(path).name or path
    if not Path(path).is_file():
        raise ConfigError(f"reference_image {name} is not a file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_REFERENCE_PIXELS:
                raise ConfigError(f"reference_image {name} is {image.width}x{image.height} pixels, more than a reference needs")
            return np.asarray(image.convert("RGB"))
    except ConfigError:
        raise
    except Exception as exc:  # PIL raises many types for files that are not images
        raise ConfigError(f"reference_image {name} cannot be read as an image ({type(exc).__name__})") from exc


def default_image_adapter(backbone: Any) -> str:  # editing.models.Backbone (models imports this module)
    """The IP-Adapter for a backbone: a random one for the built-in random models, else the SD-1.5 one."""
    return "random" if backbone.random_weights else DEFAULT_ADAPTER


def prepare_reference(
    engine: EngineConfig, backbone: Any, load_adapter: Callable[[str, Any], ImageAdapter]
) -> ImagePrompt | None:
    """The edit's reference image, read, its adapter loaded (`load_adapter(spec, backbone)`:
    editing.models.load_image_adapter) and embedded once; None without one."""
    if engine.reference is None:
        return None
    path, scale = engine.reference
    image = read_reference_image(path)
    adapter = load_adapter(engine.reference_adapter or default_image_adapter(backbone), backbone)
    positive = adapter.embed(image).to(backbone.dtype)
    return ImagePrompt(positive, torch.zeros_like(positive), adapter, scale)


# ---------------------------------------------------------------- building adapters (diffusers' converters)


def cross_attention_layers(unet: torch.nn.Module) -> list[str]:
    """The UNet's cross-attention processor names, in the order IP-Adapter checkpoints number them."""
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor") and "motion_modules" not in name]


def random_adapter_state(
    unet: torch.nn.Module, embed_dim: int = RANDOM_EMBED_DIM, seed: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """A seeded random IP-Adapter checkpoint for `unet`, in the layout of ip-adapter_sd15 ("image_proj": the
    4-token projection, "ip_adapter": "{1, 3, 5, ...}.to_k_ip/to_v_ip.weight" per cross-attention layer)."""
    width = int(unet.config.cross_attention_dim)
    generator = torch.Generator("cpu").manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) / shape[-1] ** 0.5

    image_proj = {
        "proj.weight": normal(4 * width, embed_dim),
        "proj.bias": torch.zeros(4 * width),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
    }
    layers = {}
    for number, name in enumerate(cross_attention_layers(unet)):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        layers[f"{2 * number + 1}.to_k_ip.weight"] = normal(attn.to_k.out_features, width)
        layers[f"{2 * number + 1}.to_v_ip.weight"] = normal(attn.to_v.out_features, width)
    return {"image_proj": image_proj, "ip_adapter": layers}


def random_image_encoder(embed_dim: int = RANDOM_EMBED_DIM, seed: int = 5):
    """A small seeded random CLIPVisionModelWithProjection (32 px, 2 layers)."""
    # here, not at the top: transformers is heavy and only the image adapter needs it
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=embed_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPVisionModelWithProjection(config)


def check_adapter_state(name: str, state: dict[str, torch.Tensor], unet: torch.nn.Module) -> None:
    """Refuse, in one sentence, a checkpoint that is not a plain IP-Adapter made for this UNet's text width."""
    if not isinstance(state, dict) or not {"image_proj", "ip_adapter"} <= set(state):
        raise ModelLoadError(f"{name} is not an IP-Adapter: it has no image_proj and ip_adapter weights")
    if "proj.weight" not in state["image_proj"]:
        raise ModelLoadError(
            f"{name} is an IP-Adapter Plus / Full-face / FaceID; only plain IP-Adapters (such as ip-adapter_sd15) are supported"
        )
    width = int(unet.config.cross_attention_dim)
    first = state["ip_adapter"].get("1.to_k_ip.weight")
    if first is None or first.shape[-1] != width:
        made_for = "another model" if first is None else f"a text width of {first.shape[-1]}"
        raise ModelLoadError(f"IP-Adapter {name} was made for {made_for}, but the model uses {width}")


def build_image_adapter(
    name: str,
    state: dict,
    image_encoder: torch.nn.Module,
    backbone: Any,  # editing.models.Backbone (models imports this module)
    random_weights: bool = False,
) -> ImageAdapter:
    """An ImageAdapter for the backbone's UNet, device and dtype from an IP-Adapter checkpoint ({"image_proj":
    ..., "ip_adapter": ...}) through diffusers' converters; refused in one sentence when it is not a plain
    IP-Adapter for this UNet."""
    # here, not at the top: diffusers and transformers are heavy and only the image adapter needs them
    from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection
    from transformers import CLIPImageProcessor

    unet, device, dtype = backbone.unet, backbone.device, backbone.dtype

    check_adapter_state(name, state, unet)
    try:
        processors = unet._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"IP-Adapter {name} does not fit the model's attention layers ({type(exc).__name__})") from exc
    if not isinstance(projection, ImageProjection):
        raise ModelLoadError(f"{name} is not a plain IP-Adapter; only those (such as ip-adapter_sd15) are supported")
    embed_dim = int(image_encoder.config.projection_dim)
    if projection.image_embeds.in_features != embed_dim:
        raise ModelLoadError(
            f"IP-Adapter {name} takes image embeddings of width {projection.image_embeds.in_features}, but its image encoder makes {embed_dim}"
        )
    kept = {layer: processor for layer, processor in processors.items() if hasattr(processor, "to_k_ip")}
    modules = [*kept.values(), projection, image_encoder]
    for module in modules:
        module.requires_grad_(False).eval().to(device=device, dtype=dtype)
    size = int(image_encoder.config.image_size)
    extractor = CLIPImageProcessor(size=size, crop_size=size)  # as diffusers' load_ip_adapter makes it
    return ImageAdapter(name, kept, MultiIPAdapterImageProjection([projection]), image_encoder, extractor, random_weights)
