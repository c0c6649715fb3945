"""The only module that loads weights: Stable Diffusion backbones and ControlNets.

A model spec is one of
  - a built-in offline spec: `tiny` (small SD-1.x-shaped model, random weights, for tests and offline
    demos) or `sd15-random` (the full SD-1.5 architecture with random weights, for benchmarks);
  - a local diffusers folder (holds `model_index.json`), optionally with a `manifest.json` naming its
    tokenizer and its ControlNets (see `read_manifest`);
  - `shapes`: the name of such a folder shipped in the package (editing/assets/shapes-model), a small
    model trained on a world of coloured shapes (the development package `shapes_world` trains it);
  - a single `.safetensors` checkpoint;
  - a Hugging Face Hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`.
Built-in specs produce noise-like images: they exist to test and to measure cost, not to make art.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import json
import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .autoencoder import placed_dtype
from .compile import compiled_unet
from .condition_kinds import get_condition_kind
from .errors import ConfigError, ModelLoadError
from .hub import HUB_ID, HUB_PREFIX
from .lora import (
    LORA_OFFLINE_ALTERNATIVES,
    RANDOM_LORA_NOTE,
    TINY_VAE,
    TINY_VAE_OFFLINE_ALTERNATIVES,
    LoraSpec,
    ModelOptions,
    apply_loras,
    check_lora_state,
    lora_location,
    random_lora_state_dict,
    random_tiny_vae_config,
)
from .motion import RANDOM_MOTION, RANDOM_MOTION_NOTE, SHAPES_MOTION, MotionSpec, inflate, read_motion_adapter
from .samplers import DEFAULT_SAMPLER, make_scheduler
from .small_convs import small_map_convs

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BUILTIN_MODELS = ("tiny", "sd15-random")
RANDOM_WEIGHTS_NOTE = "built-in models have random weights and produce noise-like images; they exist for testing"
SHAPES_NOTE = "a small model trained here on a world of coloured shapes, 64 px: real edits offline, of such scenes only"
OFFLINE_ALTERNATIVES = (
    "a local diffusers folder, a single .safetensors file, 'shapes' (the model trained here, for scenes of coloured shapes) "
    "or the built-in 'tiny' model (random weights)"
)

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
SHAPES_MODEL = "shapes"
SHAPES_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "shapes-model"  # package data: found from a wheel too
MANIFEST = "manifest.json"  # in a local diffusers folder: {"tokenizer": ..., "controlnets": {kind: subfolder}}
BUILTIN_TOKENIZERS = ("clip",)  # a manifest's tokenizer: one of these, or a subfolder of the model folder


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: what to load and from where."""

    kind: str  # "builtin", "folder", "single_file" or "hub"
    source: str

    @classmethod
    def parse(cls, spec: str | os.PathLike | None) -> ModelSpec:
        """Tell a built-in name, a local folder, a single file and a Hub id apart."""
        text = str(spec or DEFAULT_MODEL).strip()
        if text.startswith(HUB_PREFIX):  # a Hub id, never a local path (how the app passes Hub ids when served)
            hub_id = text[len(HUB_PREFIX) :]
            if not HUB_ID.fullmatch(hub_id) or ".." in hub_id or "--" in hub_id:
                raise ModelLoadError(f"model '{text}' is not a Hub id (hub:owner/name)")
            return cls("hub", hub_id)
        if text in BUILTIN_MODELS:
            return cls("builtin", text)
        if text == SHAPES_MODEL:
            return cls("folder", text)
        path = Path(text).expanduser()
        if path.is_dir():
            return cls("folder", str(path.resolve()))
        if path.suffix in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
            if not path.is_file():
                raise ModelLoadError(f"checkpoint file {text} does not exist")
            if path.suffix != ".safetensors":
                raise ModelLoadError(
                    f"{path.name} is a pickle checkpoint; convert it to .safetensors, which cannot run code when loaded"
                )
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

    @property
    def folder(self) -> Path | None:
        """The local diffusers folder the weights are read from (the name `shapes` names the shipped one)."""
        if self.kind != "folder":
            return None
        return SHAPES_MODEL_DIR if self.source == SHAPES_MODEL else Path(self.source)

    def __str__(self) -> str:
        return self.source


@dataclass
class Backbone:
    """The frozen parts of a Stable Diffusion model, on one device and dtype (the autoencoder may run in fp32:
    editing.autoencoder)."""

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
    def family(self) -> str:
        """Which ControlNets, LoRAs and adapters fit: every backbone here is SD-1.x shaped."""
        return "sd15"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (
            len(self.vae.config.block_out_channels) - 1
        )  # AutoencoderTiny records its decoder's as block_out_channels too

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    def scheduler(self, sampler: str = DEFAULT_SAMPLER):
        """A fresh sampler (editing.samplers, DDIM by default) with this model's noise schedule."""
        return make_scheduler(sampler, self.scheduler_config)

    def inverse_scheduler(self):
        """A fresh DDIM inverse scheduler (noise the image along the deterministic DDIM path)."""
        # here, not at the top: diffusers is heavy, and --help imports this module
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
    # here, not at the top: open_clip is heavy, and --help imports this module
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
    # here, not at the top: transformers is heavy, and --help imports this module
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
    # here, not at the top: diffusers and transformers are heavy, and --help imports this module
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
    return _placed(Backbone(name, clip_tokenizer(), text_encoder, vae, unet, dict(SD1_SCHEDULER), device, dtype, True))


def _placed(backbone: Backbone) -> Backbone:
    """`backbone` with its modules frozen, in eval mode, on its device and dtype (the autoencoder in fp32 where
    diffusers would upcast it: editing.autoencoder), the UNet's small-map convolutions as matrix products on
    the CPU (editing.small_convs)."""
    small_map_convs(backbone.unet)
    for module in (backbone.text_encoder, backbone.vae, backbone.unet):
        module.requires_grad_(False).eval()
        dtype = placed_dtype(module, backbone.dtype) if module is backbone.vae else backbone.dtype
        if module.dtype == dtype:
            module.to(backbone.device)
        else:
            module.to(device=backbone.device, dtype=dtype)
    return backbone


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


class quiet_loading:
    """Diffusers' and transformers' loading bars ("Loading pipeline components...") off while any load
    runs, so a failed load prints its one-line error alone; the libraries' settings are restored when the
    last concurrent load ends. Hub download bars are left as they are."""

    _lock = threading.Lock()
    _depth = 0
    _saved: tuple[bool, bool] = (True, True)

    def __enter__(self):
        # here, not at the top: diffusers and transformers are heavy, and --help imports this module
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        with quiet_loading._lock:
            if quiet_loading._depth == 0:
                libraries = (diffusers_logging, transformers_logging)
                quiet_loading._saved = tuple(library.is_progress_bar_enabled() for library in libraries)
                diffusers_logging.disable_progress_bar()
                transformers_logging.disable_progress_bar()
            quiet_loading._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        # here, not at the top: diffusers and transformers are heavy, and --help imports this module
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        with quiet_loading._lock:
            quiet_loading._depth -= 1
            if quiet_loading._depth == 0:
                for enabled, library in zip(quiet_loading._saved, (diffusers_logging, transformers_logging)):
                    if enabled:
                        library.enable_progress_bar()


def _load_from(spec: ModelSpec, what: str, loader: Callable[[], Any], alternatives: str = OFFLINE_ALTERNATIVES) -> Any:
    """Run a diffusers/transformers loader (their progress bars off) and turn its failures into one-line ModelLoadErrors."""
    try:
        with quiet_loading():
            return loader()
    except ModelLoadError:
        raise
    except Exception as exc:  # loaders raise many types; the user needs one sentence
        if is_offline_error(exc):
            raise ModelLoadError(f"cannot reach the Hugging Face Hub to get {what} '{spec.source}'; use {alternatives}") from exc
        if type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError"):
            raise ModelLoadError(f"the Hub has no accessible {what} named '{spec.source}'") from exc
        reason = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"could not load {what} from {spec.source}: {reason}") from exc


def load_motion_adapter(spec: MotionSpec, unet_config: Mapping[str, Any], backbone_name: str = ""):
    """The MotionAdapter a --motion-adapter spec names, loaded through `_load_from` (editing.motion reads it)."""
    if spec.kind == SHAPES_MOTION and backbone_name not in (SHAPES_MODEL, str(SHAPES_MODEL_DIR)):
        raise ConfigError("motion_adapter shapes was trained for the shapes model; use it with --model shapes")
    where = ModelSpec("hub" if spec.kind.startswith("hub") else "folder", str(spec))

    def load_from(loader: Callable[..., Any], alternatives: Sequence[str] | None = None):
        return _load_from(where, "motion adapter", loader, *(() if alternatives is None else (alternatives,)))

    return read_motion_adapter(spec, unet_config, load_from)


def _load_pretrained(spec: ModelSpec, device: torch.device, dtype: torch.dtype, config: str | None) -> Backbone:
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import StableDiffusionPipeline

    options = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    manifest = None
    if spec.kind == "single_file":
        if config:
            options["config"] = config

        def load():
            return StableDiffusionPipeline.from_single_file(spec.source, **options)
    else:
        source = str(spec.folder or spec.source)
        if spec.folder is not None:
            if not (spec.folder / "model_index.json").is_file():
                named = f" (the '{spec.source}' model)" if spec.source != source else ""
                raise ModelLoadError(f"model folder {spec.folder}{named} has no model_index.json: it is not a diffusers folder")
            manifest = read_manifest(spec.folder)
            if manifest is not None:
                options["tokenizer"] = manifest_tokenizer(spec.folder, manifest["tokenizer"])

        def load():
            return StableDiffusionPipeline.from_pretrained(source, **options)

    pipe = _load_from(spec, "model", load)
    scheduler_config = {**SD1_SCHEDULER, **{k: v for k, v in pipe.scheduler.config.items() if k in SD1_SCHEDULER}}
    backbone = _placed(
        Backbone(spec.source, pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler_config, device, dtype, False)
    )
    if manifest is not None and manifest["controlnets"]:
        backbone.extras["controlnets"] = {kind: str(spec.folder / sub) for kind, sub in manifest["controlnets"].items()}
    return backbone


def read_manifest(folder: Path) -> dict | None:
    """A model folder's manifest.json, checked, or None when it has none.

    {"tokenizer": "clip" (CLIP's BPE vocabulary, built by `clip_tokenizer`) or a subfolder with tokenizer
    files, "controlnets": {condition kind: subfolder holding that kind's ControlNet}}; the ControlNets
    become the folder's defaults for their kinds (`default_controlnet`).
    """
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(manifest, dict) or set(manifest) - {"tokenizer", "controlnets"}:
        raise ModelLoadError(f"{path} must be an object with the keys tokenizer and controlnets; got {manifest!r:.100}")
    manifest = {"tokenizer": manifest.get("tokenizer", "clip"), "controlnets": manifest.get("controlnets", {})}
    if not isinstance(manifest["tokenizer"], str) or not manifest["tokenizer"]:
        raise ModelLoadError(f"{path}: tokenizer must be one of {', '.join(BUILTIN_TOKENIZERS)} or a subfolder name")
    if not isinstance(manifest["controlnets"], dict):
        raise ModelLoadError(f"{path}: controlnets must map condition kinds to subfolders")
    for kind, sub in manifest["controlnets"].items():
        if not isinstance(sub, str) or not (folder / sub / "config.json").is_file():
            raise ModelLoadError(f"{path}: the {kind} ControlNet {sub!r} is not a subfolder holding a ControlNet (config.json)")
    return manifest


def manifest_tokenizer(folder: Path, name: str):
    """The tokenizer a manifest names: a built-in one, or the tokenizer files in a subfolder."""
    if name in BUILTIN_TOKENIZERS:  # "clip"
        return clip_tokenizer()
    # here, not at the top: transformers is heavy, and --help imports this module
    from transformers import CLIPTokenizer

    if not (folder / name).is_dir():
        raise ModelLoadError(
            f"{folder / MANIFEST}: tokenizer must be one of {', '.join(BUILTIN_TOKENIZERS)} or a subfolder; {name!r} is neither"
        )
    return _load_from(ModelSpec("folder", str(folder)), "tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / name))


def native_size(spec: str | None) -> int:
    """The image size (pixels) a model was trained at, read from configs without loading weights: the
    UNet's sample size times the VAE's downsampling. SD-1.x checkpoints and Hub ids: 512."""
    parsed = ModelSpec.parse(spec)
    if parsed.random_weights:
        configs = _builtin_configs(parsed.source)
        return _image_size(configs["unet"], configs["vae"])
    if parsed.folder is None:  # a Hub id or a single file: no configs to read before loading
        return 512
    try:
        return _image_size(*(json.loads((parsed.folder / part / "config.json").read_text()) for part in ("unet", "vae")))
    except (OSError, ValueError, KeyError):  # not a diffusers folder (loading will say so)
        return 512


def _image_size(unet: dict, vae: dict) -> int:
    """Pixels per side of the UNet's sample: its latent size times the VAE's downsampling."""
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


# ---------------------------------------------------------------- cache and entry points

_cache: OrderedDict[tuple, Backbone] = OrderedDict()
_cache_lock = threading.Lock()
OTHER_CACHES: list[dict] = []  # caches of loaded models kept by other modules (editing.clip_score), emptied by clear_cache


_imports_lock = threading.Lock()
_background_imports: threading.Thread | None = None


def import_in_background() -> threading.Thread:
    """Start importing what a model load needs (diffusers' Stable Diffusion pipeline, which brings transformers'
    CLIP) on a daemon thread, so that an app's first edit does not wait for it; `load_backbone` waits for that
    thread rather than importing beside it. Loads nothing."""
    global _background_imports
    with _imports_lock:
        if _background_imports is None:
            _background_imports = threading.Thread(target=_import_loaders, name="import-loaders", daemon=True)
            _background_imports.start()
        return _background_imports


def _import_loaders() -> None:
    try:
        # importing is this function's work (import_in_background runs it on a thread)
        from diffusers import StableDiffusionPipeline  # noqa: F401
    except Exception:  # the load that needs the import says what failed
        log.debug("importing diffusers in the background failed", exc_info=True)


def load_backbone(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    config: str | None = None,
    options: ModelOptions | None = None,
) -> Backbone:
    """Load (or fetch from the in-process cache) the model a spec names, on the chosen device and dtype.

    `config` is a diffusers folder or Hub id describing a single-file checkpoint's architecture.
    `options` (editing.lora.ModelOptions: LoRAs, fused or not, the autoencoder) give a backbone of its
    own, cached under its own key; the plain backbone it derives from is never changed.
    """
    if _background_imports is not None:
        _background_imports.join()
    if options is not None and not options.plain:
        return _load_with_options(spec, device, dtype, config, options)
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


def _load_with_options(
    spec: str | None, device: str | None, dtype: str | None, config: str | None, options: ModelOptions
) -> Backbone:
    """The backbone with LoRAs and/or another autoencoder: built on copies of the cached plain one's parts."""
    base = load_backbone(spec, device, dtype, config)
    key = (ModelSpec.parse(spec), str(base.device), str(base.dtype), config, options)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        backbone = derive_backbone(base, options)
        _cache[key] = backbone
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return backbone


def derive_backbone(base: Backbone, options: ModelOptions) -> Backbone:
    """A new backbone from `base` with `options` applied: LoRAs go into copies of the UNet (and the text
    encoder, when a LoRA adapts it), the tiny autoencoder replaces the VAE; untouched parts are shared."""

    unet, text_encoder, vae = base.unet, base.text_encoder, base.vae
    notes = list(base.extras.get("notes", ()))
    extras = {}
    if options.motion_adapter is not None:  # motion modules first, so LoRAs adapt the inflated UNet's spatial layers
        spec = MotionSpec.parse(options.motion_adapter)
        unet = small_map_convs(inflate(base.unet, load_motion_adapter(spec, base.unet.config, base.name)))
        extras["image_unet"] = base.unet  # what a random ControlNet is shaped from
        if spec.kind == RANDOM_MOTION:
            notes.append(RANDOM_MOTION_NOTE)
    if options.loras:
        unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(base.text_encoder)
        unet_names, text_names = apply_loras(unet, text_encoder, options.loras, options.fuse, read_lora)
        if not text_names:  # no LoRA adapts the text encoder: share the base's, not a copy
            text_encoder = base.text_encoder
        for module in (unet, text_encoder):
            module.requires_grad_(False).eval()
        if any(s.random for s in options.loras):
            notes.append(RANDOM_LORA_NOTE)
    if options.vae == "tiny":
        vae = tiny_vae(base)
    if options.compile:  # channels_last and the repeated blocks compiled, on a copy (editing.compile)
        unet = compiled_unet(unet, base.device)
    extras = {**base.extras, **extras, "notes": tuple(notes), "options": options}
    return dataclasses.replace(
        base, name=base.name + options.suffix(), text_encoder=text_encoder, unet=unet, vae=vae, extras=extras
    )


def read_lora(spec: LoraSpec, unet: torch.nn.Module) -> tuple[dict, dict | None]:
    """A LoRA's weights (editing.lora.LoraSpec) in diffusers' layout, read through diffusers'
    `lora_state_dict` (which converts kohya / A1111 files, whose per-layer alphas come back second);
    `random` builds a seeded random LoRA for `unet`. Refused in one sentence when the file holds no LoRA."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import StableDiffusionPipeline

    if spec.random:
        return random_lora_state_dict(unet), None
    kind, where, options = lora_location(spec)
    parsed = ModelSpec(kind, spec.source)
    state, alphas = _load_from(
        parsed, "LoRA", lambda: StableDiffusionPipeline.lora_state_dict(where, **options), LORA_OFFLINE_ALTERNATIVES
    )
    check_lora_state(state, Path(spec.source).name)
    return state, alphas or None


def tiny_vae(backbone: Backbone):
    """The tiny autoencoder (AutoencoderTiny) for a backbone: a seeded random one for the built-in random
    models, TAESD (`madebyollin/taesd`) for real SD-1.x models; the shapes model has its own latent space
    and is refused."""
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import AutoencoderTiny

    if backbone.random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            vae = AutoencoderTiny(**random_tiny_vae_config(backbone.name))
    elif backbone.latent_channels != 4:
        raise ModelLoadError(
            f"the tiny autoencoder (TAESD) makes SD-1.x's 4-channel latents; {backbone.name}'s autoencoder has {backbone.latent_channels}, use --vae model"
        )
    else:
        load = lambda: AutoencoderTiny.from_pretrained(TINY_VAE, torch_dtype=backbone.dtype)
        vae = _load_from(ModelSpec("hub", TINY_VAE), "tiny autoencoder", load, TINY_VAE_OFFLINE_ALTERNATIVES)
    if int(vae.config.latent_channels) != int(backbone.unet.config.in_channels):
        raise ModelLoadError(
            f"the tiny autoencoder has {vae.config.latent_channels} latent channels but the model's UNet takes {backbone.unet.config.in_channels}"
        )
    vae.requires_grad_(False).eval()
    return vae.to(backbone.device) if vae.dtype == backbone.dtype else vae.to(device=backbone.device, dtype=backbone.dtype)


def clear_cache() -> None:
    """Forget every loaded model (frees their memory once no edit holds them)."""
    with _cache_lock:
        _cache.clear()
        _controlnets.clear()
        _image_adapters.clear()
        for cache in OTHER_CACHES:
            cache.clear()


def default_controlnet(kind: str, backbone: Backbone) -> str:
    """The ControlNet for a condition kind: the backbone's own, a random one for built-in backbones, or the
    kind's registered default for the backbone's family (SD-1.5 ControlNet 1.1 for SD-1.x)."""
    if kind in backbone.extras.get("controlnets", {}):
        return backbone.extras["controlnets"][kind]
    registered = get_condition_kind(kind)
    return "random" if backbone.random_weights else registered.default_controlnet(backbone.family)


_controlnets: OrderedDict[tuple, torch.nn.Module] = OrderedDict()


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
    # here, not at the top: diffusers is heavy, and --help imports this module
    from diffusers import ControlNetModel

    if spec == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            controlnet = ControlNetModel.from_unet(backbone.extras.get("image_unet", backbone.unet), load_weights_from_unet=False)
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
    return small_map_convs(controlnet.requires_grad_(False).eval().to(device=backbone.device, dtype=backbone.dtype))


# ---------------------------------------------------------------- IP-Adapters (editing.reference)

_image_adapters: OrderedDict[tuple, Any] = OrderedDict()
IP_ADAPTER_SUFFIXES = (".safetensors", ".bin")
IP_ADAPTER_FILES = ("ip-adapter_sd15.safetensors", "ip-adapter_sd15.bin")


def load_image_adapter(spec: str, backbone: Backbone):
    """Load (or reuse) an IP-Adapter and its image encoder for a backbone (editing.reference.ImageAdapter):
    `random`, a Hub id (`owner/name` reads `models/ip-adapter_sd15.safetensors`; `owner/name/PATH` another
    file), a local .safetensors / .bin file, or a folder holding one; the image encoder is the
    `image_encoder` folder beside the adapter file, as in h94/IP-Adapter."""
    key = (spec, id(backbone), str(backbone.device), str(backbone.dtype))
    with _cache_lock:
        if key not in _image_adapters:
            _image_adapters[key] = _load_image_adapter(spec, backbone)
            while len(_image_adapters) > CACHE_SIZE:
                _image_adapters.popitem(last=False)
        return _image_adapters[key]


def _load_image_adapter(spec: str, backbone: Backbone):
    # here, not at the top: editing.reference loads PIL, which --help does not need
    from .reference import (
        ADAPTER_OFFLINE_ALTERNATIVES,
        DEFAULT_ADAPTER,
        build_image_adapter,
        check_adapter_state,
        random_adapter_state,
        random_image_encoder,
    )

    dtype = backbone.dtype
    if spec == "random":
        return build_image_adapter(
            "random", random_adapter_state(backbone.unet), random_image_encoder(), backbone, random_weights=True
        )
    # here, not at the top: transformers is heavy, and --help imports this module
    from transformers import CLIPVisionModelWithProjection

    path = Path(spec).expanduser()
    local = path.exists() or spec.startswith((".", "/", "~"))
    if local:
        weights = _adapter_file(path, spec)
        name = weights.name
        state = _read_adapter_state(weights)
        check_adapter_state(name, state, backbone.unet)  # before the (large) image encoder is read
        encoder_dir = weights.parent / "image_encoder"
        if not (encoder_dir / "config.json").is_file():
            raise ModelLoadError(f"IP-Adapter {name} needs its image encoder in an image_encoder folder beside it")
        where = ModelSpec("folder", str(encoder_dir))
        encoder = _load_from(
            where,
            "IP-Adapter image encoder",
            lambda: CLIPVisionModelWithProjection.from_pretrained(str(encoder_dir), torch_dtype=dtype),
        )
        return build_image_adapter(name, state, encoder, backbone)
    parts = spec.split("/")
    if len(parts) < 2 or not HUB_ID.fullmatch("/".join(parts[:2])):
        raise ModelLoadError(
            f"reference adapter '{spec}' is not a Hub id (owner/name[/file]), a local file or folder, or 'random'"
        )
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or DEFAULT_ADAPTER.split("/", 2)[2]
    if not filename.endswith(IP_ADAPTER_SUFFIXES):
        raise ModelLoadError(f"reference adapter file {filename} must be a .safetensors or .bin file")
    # here, not at the top: huggingface_hub is heavy, and --help imports this module
    from huggingface_hub import hf_hub_download

    hub = ModelSpec("hub", spec)
    weights = Path(_load_from(hub, "IP-Adapter", lambda: hf_hub_download(repo, filename), ADAPTER_OFFLINE_ALTERNATIVES))
    state = _read_adapter_state(weights)
    check_adapter_state(spec, state, backbone.unet)
    subfolder = "/".join([*filename.split("/")[:-1], "image_encoder"])
    load = lambda: CLIPVisionModelWithProjection.from_pretrained(repo, subfolder=subfolder, torch_dtype=dtype)
    encoder = _load_from(hub, "IP-Adapter image encoder", load, ADAPTER_OFFLINE_ALTERNATIVES)
    return build_image_adapter(spec, state, encoder, backbone)


def _adapter_file(path: Path, spec: str) -> Path:
    """The IP-Adapter weights a local spec names: the file itself, or the one adapter file in a folder (or its models/)."""
    if path.is_file():
        if path.suffix not in IP_ADAPTER_SUFFIXES:
            raise ModelLoadError(f"IP-Adapter {path.name} must be a .safetensors or .bin file")
        return path
    if not path.is_dir():
        raise ModelLoadError(f"IP-Adapter {Path(spec).name} does not exist")
    for folder in (path, path / "models"):
        for name in IP_ADAPTER_FILES:
            if (folder / name).is_file():
                return folder / name
    found = sorted(p for p in path.iterdir() if p.suffix in IP_ADAPTER_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise ModelLoadError(f"IP-Adapter folder {path.name} must hold one .safetensors or .bin adapter file, found {len(found)}")
    return found[0]


def _read_adapter_state(weights: Path) -> dict:
    """An IP-Adapter checkpoint as {"image_proj": {...}, "ip_adapter": {...}}: safetensors keys split on their
    first dot (as diffusers' load_ip_adapter does), a .bin read with torch.load(weights_only=True)."""
    try:
        if weights.suffix == ".safetensors":
            state: dict = {}
            for key, tensor in load_file(str(weights)).items():
                group, _, rest = key.partition(".")
                state.setdefault(group, {})[rest] = tensor
            return state
        return torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: one sentence
        raise ModelLoadError(f"IP-Adapter {weights.name} cannot be read ({type(exc).__name__})") from exc
