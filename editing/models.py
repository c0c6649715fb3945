"""The only module that loads weights: Stable Diffusion backbones and ControlNets.

A model spec is one of
  - a built-in offline spec: `tiny` (small SD-1.x-shaped model, random weights, for tests and offline
    demos) or `sd15-random` (the full SD-1.5 architecture with random weights, for benchmarks);
  - a local diffusers folder (holds `model_index.json`);
  - a single `.safetensors` checkpoint;
  - a Hugging Face Hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`.
Built-in specs produce noise-like images: they exist to test and to measure cost, not to make art.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BUILTIN_MODELS = ("tiny", "sd15-random")
RANDOM_WEIGHTS_NOTE = "built-in models have random weights and produce noise-like images; they exist for testing"
OFFLINE_ALTERNATIVES = "a local diffusers folder, a single .safetensors file, or the built-in 'tiny' model"

# Stable Diffusion 1.x noise schedule (as shipped in the SD-1.5 scheduler config).
SD1_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
CACHE_SIZE = 2


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: what to load and from where."""

    kind: str  # "builtin", "folder", "single_file" or "hub"
    source: str

    @classmethod
    def parse(cls, spec: str | os.PathLike | None) -> "ModelSpec":
        """Tell a built-in name, a local folder, a single file and a Hub id apart."""
        text = str(spec or DEFAULT_MODEL).strip()
        if text in BUILTIN_MODELS:
            return cls("builtin", text)
        path = Path(text).expanduser()
        if path.is_dir():
            return cls("folder", str(path.resolve()))
        if path.suffix in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
            if not path.is_file():
                raise ModelLoadError(f"checkpoint file {text} does not exist")
            if path.suffix != ".safetensors":
                raise ModelLoadError(f"{path.name} is a pickle checkpoint; convert it to .safetensors, which cannot run code when loaded")
            return cls("single_file", str(path.resolve()))
        if text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1):
            raise ModelLoadError(f"model folder {text} does not exist")
        if text.count("/") != 1 or not all(text.split("/")):
            raise ModelLoadError(
                f"model '{text}' is not a Hub id (owner/name), a local folder, a .safetensors file, or one of {', '.join(BUILTIN_MODELS)}"
            )
        return cls("hub", text)

    @property
    def random_weights(self) -> bool:
        return self.kind == "builtin"

    def __str__(self) -> str:
        return self.source


@dataclass
class Backbone:
    """The frozen parts of a Stable Diffusion model, on one device and dtype."""

    name: str
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    random_weights: bool
    extras: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def scheduler(self):
        """A fresh DDIM sampler with this model's noise schedule."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler_config)

    def inverse_scheduler(self):
        """A fresh DDIM inverse scheduler (noise the image along the deterministic DDIM path)."""
        from diffusers import DDIMInverseScheduler

        return DDIMInverseScheduler.from_config(self.scheduler_config)


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or the best available: CUDA, then Apple MPS, then CPU."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("CUDA was requested but no CUDA GPU is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("MPS was requested but Apple's Metal backend is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """fp16 on GPUs, fp32 on the CPU (bf16 when asked: smaller but slower on most CPUs)."""
    if requested and requested != "auto":
        if requested not in _DTYPES:
            raise ModelLoadError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {requested}")
        if requested == "fp16" and device.type == "cpu":
            raise ModelLoadError("fp16 is not supported on the CPU; use fp32 or bf16")
        return _DTYPES[requested]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


# ---------------------------------------------------------------- tokenizer


def _printable_bytes() -> list[int]:
    """Bytes that byte-level BPE maps to themselves; the rest are shifted above 255."""
    return [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


@lru_cache(maxsize=1)
def _clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, built from the vocabulary file open-clip-torch ships."""
    import open_clip

    vocab_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # CLIP keeps 48894 merges
    printable = _printable_bytes()
    characters = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer():
    """A real CLIP tokenizer (SD-1.x's), built offline from open-clip-torch's vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


# ---------------------------------------------------------------- built-in random models


def _builtin_configs(name: str) -> dict:
    """Architecture of the built-in models: `tiny` is SD-1.x-shaped but small; `sd15-random` is SD-1.5."""
    if name == "tiny":
        return dict(
            unet=dict(
                sample_size=32,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=16,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(16, 32, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1,
                norm_num_groups=16,
                sample_size=256,
            ),
            text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32),
        )
    return dict(
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),  # diffusers defaults are SD-1.x
        vae=dict(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            sample_size=512,
        ),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, projection_dim=768),
    )


def _build_random(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = _builtin_configs(name)
    text_config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        **configs["text"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(text_config)
    return _assemble(name, clip_tokenizer(), text_encoder, vae, unet, dict(SD1_SCHEDULER), device, dtype, True)


def _assemble(name, tokenizer, text_encoder, vae, unet, scheduler_config, device, dtype, random_weights) -> Backbone:
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False).eval()
        module.to(device) if module.dtype == dtype else module.to(device=device, dtype=dtype)
    return Backbone(name, tokenizer, text_encoder, vae, unet, dict(scheduler_config), device, dtype, random_weights)


# ---------------------------------------------------------------- pretrained models


def is_offline_error(exc: BaseException) -> bool:
    """Whether an exception chain says the Hub could not be reached (no network or offline mode)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, text = type(exc).__name__, str(exc)
        if isinstance(exc, (socket.gaierror, ConnectionError, TimeoutError)) or "Connect" in name or "Timeout" in name:
            return True
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "not fully cached locally" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _load_from(spec: ModelSpec, what: str, loader: Callable[[], Any]) -> Any:
    """Run a diffusers/transformers loader and turn its failures into one-line ModelLoadErrors."""
    try:
        return loader()
    except ModelLoadError:
        raise
    except Exception as exc:  # loaders raise many types; the user needs one sentence
        if is_offline_error(exc):
            raise ModelLoadError(
                f"cannot reach the Hugging Face Hub to get {what} '{spec.source}'; use {OFFLINE_ALTERNATIVES}"
            ) from exc
        if type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError"):
            raise ModelLoadError(f"the Hub has no accessible {what} named '{spec.source}'") from exc
        reason = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"could not load {what} from {spec.source}: {reason}") from exc


def _load_pretrained(spec: ModelSpec, device: torch.device, dtype: torch.dtype, config: str | None) -> Backbone:
    from diffusers import StableDiffusionPipeline

    options = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if spec.kind == "single_file":
        if config:
            options["config"] = config

        def load():
            return StableDiffusionPipeline.from_single_file(spec.source, **options)
    else:

        def load():
            return StableDiffusionPipeline.from_pretrained(spec.source, **options)

    pipe = _load_from(spec, "model", load)
    scheduler_config = {**SD1_SCHEDULER, **{k: v for k, v in pipe.scheduler.config.items() if k in SD1_SCHEDULER}}
    return _assemble(spec.source, pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler_config, device, dtype, False)


# ---------------------------------------------------------------- cache and entry points

_cache: "OrderedDict[tuple, Backbone]" = OrderedDict()
_cache_lock = threading.Lock()


def load_backbone(spec: str | None = None, device: str | None = None, dtype: str | None = None, config: str | None = None) -> Backbone:
    """Load (or fetch from the in-process cache) the model a spec names, on the chosen device and dtype.

    `config` is a diffusers folder or Hub id describing a single-file checkpoint's architecture.
    """
    parsed = ModelSpec.parse(spec)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    key = (parsed, str(torch_device), str(torch_dtype), config)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        if parsed.random_weights:
            log.warning("model '%s': %s", parsed.source, RANDOM_WEIGHTS_NOTE)
            backbone = _build_random(parsed.source, torch_device, torch_dtype)
        else:
            backbone = _load_pretrained(parsed, torch_device, torch_dtype, config)
        _cache[key] = backbone
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return backbone


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once no edit holds them)."""
    with _cache_lock:
        _cache.clear()
        _controlnets.clear()


# SD-1.5 ControlNet 1.1 checkpoints for each condition kind.
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "pose": "lllyasviel/control_v11p_sd15_openpose",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "softedge": "lllyasviel/control_v11p_sd15_softedge",
}


def default_controlnet(kind: str, backbone: Backbone) -> str:
    """The ControlNet for a condition kind: the SD-1.5 one, or a random one for built-in backbones."""
    return "random" if backbone.random_weights else DEFAULT_CONTROLNETS[kind]


_controlnets: "OrderedDict[tuple, torch.nn.Module]" = OrderedDict()


def load_controlnet(spec: str, backbone: Backbone):
    """Load (or reuse) a ControlNet: `random` (matching the backbone), a folder, a file or a Hub id."""
    key = (spec, id(backbone), str(backbone.device), str(backbone.dtype))
    with _cache_lock:
        if key not in _controlnets:
            _controlnets[key] = _load_controlnet(spec, backbone)
            while len(_controlnets) > 2 * CACHE_SIZE:
                _controlnets.popitem(last=False)
        return _controlnets[key]


def _load_controlnet(spec: str, backbone: Backbone):
    from diffusers import ControlNetModel

    if spec == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            controlnet = ControlNetModel.from_unet(backbone.unet, load_weights_from_unet=False)
        # A fresh ControlNet's zero convolutions output zeros; give them small random weights so a
        # random ControlNet really changes the UNet's input, as a trained one does.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                torch.nn.init.normal_(module.weight, std=0.02)
    else:
        parsed = ModelSpec.parse(spec)
        if parsed.kind == "builtin":
            raise ModelLoadError(f"'{spec}' is a backbone, not a ControlNet; use 'random' for a random ControlNet")
        if parsed.kind == "single_file":
            controlnet = _load_from(parsed, "ControlNet", lambda: ControlNetModel.from_single_file(parsed.source))
        else:
            controlnet = _load_from(parsed, "ControlNet", lambda: ControlNetModel.from_pretrained(parsed.source))
        if controlnet.config.cross_attention_dim != backbone.unet.config.cross_attention_dim:
            raise ModelLoadError(
                f"ControlNet {spec} was made for a text width of {controlnet.config.cross_attention_dim}, "
                f"but the model uses {backbone.unet.config.cross_attention_dim}"
            )
    return controlnet.requires_grad_(False).eval().to(device=backbone.device, dtype=backbone.dtype)
