"""One-shot tuning (Tune-A-Video, Wu et al. 2023): fit the inflated UNet to one clip, then edit with it.

Stages: decode the clip; load the frozen model; encode its frames to latents and the source prompt once;
inflate (editing.attention.tuned: tuned query copies, zero-output temporal layers); train only those
parameters with the denoising loss under sparse-causal attention; save them as a small `.safetensors`
with the settings, the base model's identity and the clip's hash in its metadata (and a `.json` beside
it for people). A tuning for the same base, clip and settings is found in the cache and reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import sampling, video_io
from .attention.cross_frame import layer_kwargs, layout_for
from .attention.tuned import InflatedWeights, TunedControl
from .cache import DEFAULT_CACHE_BYTES, cache_key, content_hash, default_cache_dir, evict_least_recent, touch
from .errors import ConfigError, TuningError
from .files import atomic_output
from .models import Backbone, ModelSpec, load_backbone
from .requests import TuneConfig, TuneRequest
from .tuned_file import FORMAT, JSON_FIELDS, TUNING_ATTENTION, read_metadata, tuned_attention  # noqa: F401

if TYPE_CHECKING:
    from .attention.cross_frame import FrameLayout

log = logging.getLogger(__name__)

TUNINGS_MAX_BYTES = DEFAULT_CACHE_BYTES  # the tunings cache keeps the most recently used files within this size
ProgressFn = Callable[[str, int, int], None]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class TuneResult:
    """What a tuning produced: the file, whether it was reused, the losses and the time per step."""

    path: str
    reused: bool
    losses: list[float]
    parameters: int
    seconds_per_step: float | None
    metadata: dict

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "reused": self.reused,
            "parameters": self.parameters,
            "bytes": os.path.getsize(self.path),
            "seconds_per_step": None if self.seconds_per_step is None else round(self.seconds_per_step, 4),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
        }


def base_identity(backbone: Backbone) -> str:
    """The base model a tuning belongs to: its name and a hash of its UNet architecture."""
    config = {k: v for k, v in dict(backbone.unet.config).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{backbone.name}#{digest}"


def inflate(backbone: Backbone, seed: int) -> InflatedWeights:
    """Untuned inflated weights (seeded temporal layers) for the backbone's UNet."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InflatedWeights.inflate(backbone.unet)


@contextlib.contextmanager
def gradient_checkpointing(unet: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Turn the UNet's gradient checkpointing on for a block, and off again after."""
    if not enabled:
        yield
        return
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    """Autocast for mixed-precision training on a GPU; refused on the CPU."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise ConfigError(f"mixed precision {mixed_precision} needs a CUDA GPU; use mixed precision 'no' on {device.type}")
    return torch.autocast("cuda", dtype=torch.float16 if mixed_precision == "fp16" else torch.bfloat16)


def denoising_loss(
    backbone: Backbone,
    latents: torch.Tensor,
    text: torch.Tensor,
    timestep: torch.Tensor,
    noise: torch.Tensor,
    layout: FrameLayout | None,
) -> torch.Tensor:
    """MSE between the noise added to the clip's latents at `timestep` and the inflated UNet's prediction."""
    noisy = backbone.scheduler().add_noise(latents, noise, timestep)
    frames = latents.shape[0]
    predicted = backbone.unet(
        noisy,
        timestep.to(latents.device),
        encoder_hidden_states=text.expand(frames, -1, -1),
        cross_attention_kwargs=layer_kwargs(layout),
    ).sample
    return F.mse_loss(predicted.float(), noise.float())


def training_draws(
    config: TuneConfig, shape: tuple[int, ...], train_timesteps: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded (timestep, noise) pairs, one per step: one timestep for the clip, independent noise per frame."""
    generator = torch.Generator("cpu").manual_seed(config.seed)
    for _ in range(config.steps):
        timestep = torch.randint(0, train_timesteps, (1,), generator=generator)
        yield timestep, torch.randn(shape, generator=generator)


def tune_weights(
    backbone: Backbone, latents: torch.Tensor, text: torch.Tensor, config: TuneConfig, progress: ProgressFn | None = None
) -> tuple[InflatedWeights, list[float]]:
    """Train the inflated weights on one clip's latents under its prompt; return them and each step's loss."""
    weights = inflate(backbone, config.seed)
    control = TunedControl(weights)
    parameters = [p for p in weights.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=needs_loss_scaling(backbone.dtype, config.mixed_precision))
    latents, text = latents.clone(), text.clone()  # out of inference mode, usable by autograd
    layout = layout_for(TUNING_ATTENTION, list(range(latents.shape[0])))
    train_timesteps = int(backbone.scheduler_config["num_train_timesteps"])
    losses = []
    weights.train()
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        control.processors(backbone.unet),
        gradient_checkpointing(backbone.unet, config.gradient_checkpointing),
    ):
        for step, (timestep, noise) in enumerate(training_draws(config, tuple(latents.shape), train_timesteps)):
            with autocast(backbone.device, config.mixed_precision):
                loss = denoising_loss(backbone, latents, text, timestep, noise.to(latents), layout)
            optimizer_step(loss, optimizer, scaler, parameters, config.max_grad_norm)
            losses.append(float(loss.detach()))
            log.debug("tuning step %d: loss %.4f", step, losses[-1])
            if progress is not None:
                progress("tune", step + 1, config.steps)
    weights.eval().requires_grad_(False)
    return weights, losses


def needs_loss_scaling(dtype: torch.dtype, mixed_precision: str) -> bool:
    """Whether gradients pass through fp16 (an fp16 model or fp16 autocast): tiny gradients then need loss scaling."""
    return dtype == torch.float16 or mixed_precision == "fp16"


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: list[torch.nn.Parameter],
    max_grad_norm: float,
) -> None:
    """Backpropagate the (scaled) loss, clip the gradients' norm and step the optimiser."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()


# ---------------------------------------------------------------- files


def save_tuned(path: str | os.PathLike, weights: InflatedWeights, metadata: dict) -> None:
    """Write the tuned parameters and their metadata (strings, the settings as JSON) atomically."""
    path = Path(path)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.state_dict().items()}
    with atomic_output(path) as partial:
        save_file(tensors, str(partial), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    with atomic_output(path.with_suffix(".json")) as partial_json:
        partial_json.write_text(json.dumps(metadata, indent=2) + "\n")


def check_base(path: str | os.PathLike, model: str) -> dict:
    """The file's metadata, refusing early (before the model is loaded) a file tuned on a model of another name."""
    metadata = read_metadata(path)
    source = ModelSpec.parse(model).source
    if metadata.get("base_name") != source:
        raise TuningError(
            f"{Path(path).name} was tuned on model '{metadata.get('base_name')}', not on '{source}'; edit with --model {metadata.get('base_name')}"
        )
    return metadata


def load_tuned(path: str | os.PathLike, backbone: Backbone) -> TunedControl:
    """Tuned weights from a file, on the backbone's device; refused when they were tuned on another base."""
    metadata = read_metadata(path)
    name, identity = Path(path).name, base_identity(backbone)
    if metadata.get("base") != identity:
        raise TuningError(
            f"{name} was tuned on model '{metadata.get('base_name')}' ({metadata['base']}), not on '{backbone.name}' ({identity}); edit with --model {metadata.get('base_name')}"
        )
    weights = inflate(backbone, seed=0)  # every parameter is then overwritten from the file
    try:
        weights.load_state_dict(load_file(str(path), device=str(backbone.device)))
    except RuntimeError as exc:
        raise TuningError(f"{name} does not fit the model's attention layers: {' '.join(str(exc).split())[:160]}") from exc
    return TunedControl(weights.eval().requires_grad_(False))


# ---------------------------------------------------------------- the library call


def tuning_key(identity: str, dtype: torch.dtype, clip: dict, config: TuneConfig) -> str:
    """The cache key of a tuning: base model, dtype, clip (content and frames) and the settings that change the weights."""
    settings = config.to_dict() | {"gradient_checkpointing": None}  # memory for time: the same weights either way
    return cache_key(kind="tuning", format=FORMAT, base=identity, dtype=str(dtype), clip=clip, settings=settings)


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def tune_video(request: TuneRequest, progress: ProgressFn = _no_progress) -> TuneResult:
    """Tune on a clip (or reuse a tuning of the same base, clip and settings) and write the weights."""
    config = request.config
    progress("decode", 0, 1)
    clip = video_io.read_clip(request.video, config.selection, request.limits)
    progress("load_model", 0, 1)
    backbone = load_backbone(request.model, request.device, request.dtype)
    autocast(backbone.device, config.mixed_precision)  # refuse mixed precision on the CPU before any work
    identity = base_identity(backbone)
    source = {"content": content_hash(request.video), "indices": list(clip.indices), "width": clip.width, "height": clip.height}
    key = tuning_key(identity, backbone.dtype, source, config)
    cached = Path(request.cache_dir or default_cache_dir()) / "tunings" / f"{key}.safetensors"
    for candidate in (Path(request.output) if request.output else None, cached):
        if candidate is not None and candidate.is_file() and _has_key(candidate, key):
            log.info("reusing tuning %s", candidate)
            if candidate == cached:
                touch(cached)  # recently used: evicted last
            return _finish(request, candidate, True, [], None)
    progress("encode", 0, 1)
    latents = sampling.encode_frames(backbone, clip.frames, batch_size=8)
    text = sampling.encode_prompts(backbone, [config.prompt])
    begin = time.perf_counter()
    weights, losses = tune_weights(backbone, latents, text, config, progress)
    seconds = (time.perf_counter() - begin) / config.steps
    progress("save", 0, 1)
    save_tuned(cached, weights, tuning_metadata(backbone, identity, key, source, config, losses))
    evict_tunings(cached.parent, TUNINGS_MAX_BYTES)
    return _finish(request, cached, False, losses, seconds)


def evict_tunings(folder: Path, max_bytes: int) -> None:
    """Delete the least recently used cached tunings (and their JSON) beyond `max_bytes`; the newest always stays."""
    evict_least_recent(list(folder.glob("*.safetensors")), max_bytes, keep_newest=True, companions=(".json",))


def tuning_metadata(backbone: Backbone, identity: str, key: str, source: dict, config: TuneConfig, losses: list[float]) -> dict:
    """What a tuned file says about itself: format, base model, clip, cache key, settings and losses."""
    return {
        "format": FORMAT,
        "base": identity,
        "base_name": backbone.name,
        "clip": source["content"],
        "key": key,
        "settings": config.to_dict() | {"dtype": str(backbone.dtype), "attention": TUNING_ATTENTION},
        "source": source,
        "losses": [round(v, 6) for v in losses],
    }


def _has_key(path: Path, key: str) -> bool:
    try:
        return read_metadata(path).get("key") == key
    except TuningError:
        return False


def _finish(request: TuneRequest, path: Path, reused: bool, losses: list[float], seconds: float | None) -> TuneResult:
    """Copy the weights (and their JSON) to the requested output, and describe them."""
    target = Path(request.output) if request.output else path
    if target.resolve() != path.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        for source, destination in ((path, target), (path.with_suffix(".json"), target.with_suffix(".json"))):
            with atomic_output(destination) as partial:
                shutil.copyfile(source, partial)
    metadata = read_metadata(target)
    if not losses:
        losses = list(metadata.get("losses", []))

    with safe_open(str(target), framework="pt") as handle:
        parameters = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return TuneResult(str(target), reused, losses, parameters, seconds, metadata)
