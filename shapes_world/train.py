"""Train a small Stable-Diffusion-shaped model on the shapes world, from scratch, on the CPU.

Three stages, each resumable from its last checkpoint in the work directory:
  vae      AutoencoderKL reconstructing rendered scenes (MSE + a small KL term);
  unet     CLIPTextModel (real CLIP tokenizer) and UNet2DConditionModel learn to predict DDPM noise on the
           frozen VAE's latents, with captions dropped (replaced by "") for classifier-free guidance;
  decoder  the VAE's decoder alone, sharpened (L1 + MSE) on the frozen encoder's latents, so the latent space
           the UNet learnt stays the same (as SD's fine-tuned VAE decoders do); it may run alongside `unet`;
  control  a ControlNetModel (initialised from the UNet) on Canny edges, UNet and text encoder frozen.
Each step's data and noise come from generators seeded by (seed, stage, step), so a resumed run equals an
uninterrupted one. The result is a diffusers folder (fp16 safetensors) with its manifest.json (tokenizer and
ControlNets, see editing.models.read_manifest), loadable as `--model FOLDER`, plus training.json.

    python -m shapes_world.train --out DIR --work DIR [--vae-steps N --unet-steps N --decoder-steps N --control-steps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from editing.errors import EditingError
from editing.files import atomic_output

from .world import SceneSampler

log = logging.getLogger(__name__)
STAGES = ("vae", "unet", "decoder", "control")
STAGE_IDS = {"vae": 1, "unet": 2, "control": 3, "decoder": 4}  # seeds data; fixed when stages are added
LOGVAR_INIT = -8.0  # the VAE posterior's initial log-variance (std 0.018; see build_vae)


@dataclass(frozen=True)
class TrainConfig:
    """Sizes, optimisation settings and step counts of the three training stages."""

    seed: int = 0
    image_size: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)  # len - 1 downsamplings: (a, b, c) is factor 4
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 64)
    text_width: int = 32
    text_layers: int = 2
    vae_steps: int = 600
    unet_steps: int = 6000
    decoder_steps: int = 2000
    control_steps: int = 1000
    vae_batch: int = 8
    unet_batch: int = 32
    decoder_batch: int = 8
    control_batch: int = 8
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    decoder_lr: float = 5e-4
    control_lr: float = 2e-4
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    offset_noise: float = 0.2  # std of a per-channel constant added to the training noise (see noisy_latents)
    snr_gamma: float = 0.0  # Min-SNR loss weighting min(SNR, gamma) / SNR (see denoising_loss); 0 = plain MSE
    ema_decay: float = 0.999  # the saved UNet and text encoder are exponential moving averages of training
    decoder_edge_weight: float = 4.0  # extra loss weight near colour edges in the decoder stage (see edge_weights)
    warmup: int = 100
    checkpoint_every: int = 200
    threads: int = 1  # on a shared 2-core machine one thread was 2-3x faster per step than two

    def __post_init__(self):
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(
                f"image size {self.image_size} must be divisible by the VAE factor {2 ** (len(self.vae_channels) - 1)}"
            )
        if min(self.vae_steps, self.unet_steps, self.decoder_steps, self.control_steps) < 0:
            raise ValueError("step counts cannot be negative")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption dropout must be in [0, 1); got {self.caption_dropout}")
        if self.offset_noise < 0:
            raise ValueError(f"offset noise cannot be negative; got {self.offset_noise}")
        if self.snr_gamma < 0:
            raise ValueError(f"the Min-SNR gamma cannot be negative (0 = off); got {self.snr_gamma}")
        if self.decoder_edge_weight < 0:
            raise ValueError(f"decoder edge weight cannot be negative; got {self.decoder_edge_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1) (0 = no averaging); got {self.ema_decay}")
        if min(self.vae_batch, self.unet_batch, self.decoder_batch, self.control_batch, self.checkpoint_every) < 1:
            raise ValueError("batch sizes and checkpoint interval must be at least 1")

    def steps(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")


# ---------------------------------------------------------------- components


def text_config(config: TrainConfig):
    """CLIPTextConfig of the small text encoder (CLIP's vocabulary and 77 positions)."""
    from transformers import CLIPTextConfig

    width = config.text_width
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=config.text_layers,
        num_attention_heads=max(1, width // 16), projection_dim=width,
    )  # fmt: skip


def build_vae(config: TrainConfig):
    """A small AutoencoderKL of the SD-1.x family whose posterior starts narrow.

    The posterior's log-variance starts at LOGVAR_INIT instead of about 0: with the small KL weight the
    encoder has to shrink it anyway, and while it is near 0 the sampled latents are mostly noise and the
    reconstruction loss stalls (measured: about 200 steps of no progress).
    """
    from diffusers import AutoencoderKL

    blocks = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels, block_out_channels=config.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1, norm_num_groups=16, sample_size=config.image_size,
    )  # fmt: skip
    with torch.no_grad():
        vae.quant_conv.bias[config.latent_channels :] = LOGVAR_INIT  # the second half of the moments is the log-variance
    return vae


def build_unet(config: TrainConfig):
    """A small UNet2DConditionModel with cross-attention in its coarser levels (none at full latent size: 2x faster)."""
    from diffusers import UNet2DConditionModel

    levels = len(config.unet_channels)
    return UNet2DConditionModel(
        sample_size=config.image_size // 2 ** (len(config.vae_channels) - 1), in_channels=config.latent_channels,
        out_channels=config.latent_channels, layers_per_block=1, block_out_channels=config.unet_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_width, attention_head_dim=4, norm_num_groups=16,
    )  # fmt: skip


def build_controlnet(unet, config: TrainConfig):
    """A ControlNetModel copying the UNet's encoder; its condition embedding downsamples by the VAE factor."""
    from diffusers import ControlNetModel

    factor_levels = len(config.vae_channels) - 1
    embedding = tuple(16 * 2**i for i in range(factor_levels + 1))
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding, load_weights_from_unet=True)


def scheduler_config() -> dict:
    """The SD-1.x noise schedule: the product samples with DDIM on it."""
    from editing.models import SD1_SCHEDULER

    return dict(SD1_SCHEDULER)


# ---------------------------------------------------------------- data


def step_rng(config: TrainConfig, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step: a function of (seed, stage, step) only."""
    key = [config.seed, STAGE_IDS[stage], step]
    seed = int(np.random.SeedSequence(key).generate_state(1)[0])
    return np.random.default_rng(key), torch.Generator("cpu").manual_seed(seed)


def scene_batch(config: TrainConfig, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """Training scenes (never a held-out pair): pixels in [-1, 1], captions, uint8 images."""
    sampler = SceneSampler(size=config.image_size, split="train")
    samples = [sampler.sample(rng) for _ in range(count)]
    images = np.stack([s.image for s in samples])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, [s.caption for s in samples], images


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to 77, exactly as the product encodes prompts."""
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def drop_captions(captions: list[str], rng: np.random.Generator, rate: float) -> list[str]:
    """Replace a share `rate` of captions with "" (the unconditional prompt of classifier-free guidance)."""
    keep = rng.random(len(captions)) >= rate
    return [c if k else "" for c, k in zip(captions, keep)]


# ---------------------------------------------------------------- losses


def vae_loss(vae, pixels: torch.Tensor, generator: torch.Generator, kl_weight: float) -> torch.Tensor:
    """Reconstruction L1 + MSE of a posterior sample (L1 keeps edges sharp) plus a small KL to the standard normal."""
    posterior = vae.encode(pixels).latent_dist
    reconstruction = vae.decode(posterior.sample(generator)).sample
    return reconstruction_loss(reconstruction, pixels) + kl_weight * posterior.kl().mean()


def reconstruction_loss(reconstruction: torch.Tensor, pixels: torch.Tensor, edge_weight: float = 0.0) -> torch.Tensor:
    """Mean L1 + squared error (L1 keeps edges sharp), weighted up near the target's edges by `edge_weight`."""
    error = (reconstruction - pixels).abs() + (reconstruction - pixels) ** 2
    return (error * edge_weights(pixels, edge_weight)).mean() if edge_weight > 0 else error.mean()


def edge_weights(pixels: torch.Tensor, weight: float) -> torch.Tensor:
    """(N, 1, H, W): 1 + `weight` within a pixel of a colour edge of the target images, else 1.

    Outlines are a sliver of the pixels but all of a shape's identity (a small star's points are a few
    pixels each), so an unweighted loss learns them last."""
    step_x = (pixels[..., :, 1:] - pixels[..., :, :-1]).abs().amax(dim=1, keepdim=True) > 0.1
    step_y = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().amax(dim=1, keepdim=True) > 0.1
    edges = torch.zeros_like(pixels[:, :1])
    edges[..., :, 1:] += step_x
    edges[..., :, :-1] += step_x
    edges[..., 1:, :] += step_y
    edges[..., :-1, :] += step_y
    near = F.max_pool2d((edges > 0).float(), kernel_size=3, stride=1, padding=1)
    return 1 + weight * near


def decoder_loss(vae, pixels: torch.Tensor, generator: torch.Generator, edge_weight: float = 0.0) -> torch.Tensor:
    """The reconstruction loss of a posterior sample of the frozen encoder (see reconstruction_loss)."""
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator)
    return reconstruction_loss(vae.decode(latents).sample, pixels, edge_weight)


def noisy_latents(vae, scheduler, pixels, generator, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, noise, timesteps) for the DDPM objective on the frozen VAE's scaled latents.

    `offset` adds a per-sample, per-channel constant of that std to the noise ("offset noise"). The SD-1
    schedule leaves sqrt(alpha_bar_T) = 0.068 of the image in its noisiest step, so on 16x16 latents the
    latent's mean colour is about as visible as the noise's own mean: without the offset the model learns to
    read the background colour from the starting noise and then ignores the caption's colour words.
    """
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    return scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction, min(SNR(t), gamma) / SNR(t) (Hang et al. 2023).

    Plain epsilon MSE is dominated by the least noisy steps (measured on the committed model: 0.85 at
    t=10, 0.35 at t=100, under 0.09 from t=300 on), whose errors are a few hundredths in the latent and
    do not change the decoded picture; the weights move the gradient to the noisier steps that lay out
    the shapes. gamma = 0: all ones."""
    if gamma <= 0:
        return torch.ones(len(timesteps))
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    return snr.clamp(max=gamma) / snr


def denoising_loss(
    predicted: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, scheduler, gamma: float
) -> torch.Tensor:
    """Epsilon-prediction MSE (Ho et al. 2020, eq. 14), per sample weighted by snr_weights."""
    per_sample = ((predicted.float() - noise) ** 2).mean(dim=tuple(range(1, noise.ndim)))
    return (snr_weights(scheduler, timesteps, gamma) * per_sample).mean()


@dataclass(frozen=True)
class Objective:
    """What the UNet and ControlNet stages share: the DDPM noising (with offset noise) and its loss weighting."""

    scheduler: object
    offset: float = 0.0
    gamma: float = 0.0

    @classmethod
    def of(cls, config: TrainConfig) -> Objective:
        from diffusers import DDPMScheduler

        return cls(DDPMScheduler.from_config(scheduler_config()), config.offset_noise, config.snr_gamma)

    def noisy(self, vae, pixels, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return noisy_latents(vae, self.scheduler, pixels, generator, self.offset)

    def loss(self, predicted, noise, timesteps) -> torch.Tensor:
        return denoising_loss(predicted, noise, timesteps, self.scheduler, self.gamma)


def unet_loss(models, pixels, ids, generator) -> torch.Tensor:
    """The denoising loss of the UNet conditioned on the text encoder's hidden states."""
    vae, text_encoder, unet, objective = models
    noisy, noise, timesteps = objective.noisy(vae, pixels, generator)
    context = text_encoder(ids)[0]
    return objective.loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, noise, timesteps)


def control_loss(models, pixels, ids, edges, generator) -> torch.Tensor:
    """The denoising loss with the ControlNet's residuals added to the frozen UNet."""
    vae, text_encoder, unet, objective, controlnet = models
    noisy, noise, timesteps = objective.noisy(vae, pixels, generator)
    with torch.no_grad():
        context = text_encoder(ids)[0]
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=edges, return_dict=False)
    predicted = unet(
        noisy, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down, mid_block_additional_residual=mid
    ).sample
    return objective.loss(predicted, noise, timesteps)


def canny_edges(images: np.ndarray) -> torch.Tensor:
    """The product's Canny condition images, (N, 3, H, W) in [0, 1]."""
    from editing.control.extractors import canny

    return torch.from_numpy(canny(images)).permute(0, 3, 1, 2).float() / 255.0


# ---------------------------------------------------------------- the training loop


@dataclass
class StageState:
    """What a stage checkpoint holds: trained modules' weights, optimiser state, step, loss history."""

    step: int = 0
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    batch: int = 0  # the batch size of the last step taken


def learning_rate(config: TrainConfig, base: float, step: int) -> float:
    """Linear warm-up to the base rate, then constant (so training can always be continued)."""
    return base * min(1.0, (step + 1) / config.warmup)


def checkpoint_path(work: Path, stage: str) -> Path:
    return work / f"{stage}.ckpt"


def save_checkpoint(work: Path, stage: str, modules: dict, optimizer, state: StageState, ema: list | None = None) -> None:
    """Atomically write a stage checkpoint (with the moving averages of the parameters when kept)."""
    path = checkpoint_path(work, stage)
    payload = {
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "ema": ema,
    }
    with atomic_output(path) as partial:
        torch.save(payload, partial)


def load_checkpoint(config: TrainConfig, work: Path, stage: str, modules: dict, optimizer) -> tuple[StageState, list | None]:
    """Restore a stage checkpoint into modules and optimiser; return its state and the moving averages it
    kept (None when it kept none); a fresh state when there is no checkpoint."""
    path = checkpoint_path(work, stage)
    if not path.is_file():
        return StageState(), None
    payload = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only: no code runs
    for name, module in modules.items():
        module.load_state_dict(payload["modules"][name])
    optimizer.load_state_dict(payload["optimizer"])
    state = {"batch": getattr(config, f"{stage}_batch"), **payload["state"]}  # checkpoints from before `batch` was kept
    return StageState(**state), payload.get("ema")


def ema_decay(config: TrainConfig, steps_done: int) -> float:
    """The averaging rate after `steps_done` steps: ramps up so early averages are not stuck at the initial weights."""
    return min(config.ema_decay, (1 + steps_done) / (10 + steps_done))


def run_stage(
    config: TrainConfig, stage: str, work: Path, modules: dict, loss_fn, base_lr: float, start: int = 0, average: bool = False
) -> StageState:
    """Train `modules` for the stage's steps (from its checkpoint if any), checkpointing as it goes.

    `loss_fn(step)` returns the step's loss; step numbers start at `start` (steps already done by the
    weights this run started from), so continued training sees fresh data. With `average` (and a
    config.ema_decay above 0) the modules end holding the exponential moving average of their weights.
    """
    work.mkdir(parents=True, exist_ok=True)
    parameters = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=base_lr, weight_decay=0.0)
    state, saved_ema = load_checkpoint(config, work, stage, modules, optimizer)
    weights = [p.detach() for p in parameters]  # views: they follow the optimiser's updates
    ema = None
    if average and config.ema_decay > 0:
        ema = saved_ema or [w.clone() for w in weights]  # none kept: start from the (loaded) weights
    if state.step == 0:
        state.step = start
    end = start + config.steps(stage)
    for module in modules.values():
        module.train().requires_grad_(True)
    while state.step < end:
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, base_lr, state.step - start)
        loss = loss_fn(state.step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if ema is not None:
            rate = 1 - ema_decay(config, state.step - start)
            with torch.no_grad():
                torch._foreach_lerp_(ema, weights, rate)
        state.step += 1
        state.batch = getattr(config, f"{stage}_batch")
        state.losses.append(round(loss.item(), 6))
        state.seconds += time.perf_counter() - began
        if state.step % config.checkpoint_every == 0 or state.step == end:
            save_checkpoint(work, stage, modules, optimizer, state, ema)
            log.info(
                "%s step %d/%d loss %.5f (%.2f s/step)",
                stage,
                state.step,
                end,
                np.mean(state.losses[-50:]),
                state.seconds / max(1, state.step - start),
            )
    for module in modules.values():
        module.eval().requires_grad_(False)
    if ema is not None:
        with torch.no_grad():
            torch._foreach_copy_(weights, ema)
    return state


@dataclass
class Components:
    """The model being trained, stage by stage."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    controlnet: torch.nn.Module | None
    tokenizer: object
    scaled: bool = False  # the VAE's scaling factor is already derived (loaded from a saved folder)


def fresh_components(config: TrainConfig) -> Components:
    """Seeded random initialisation of every component (the ControlNet is made from the trained UNet later)."""
    from transformers import CLIPTextModel

    from editing.models import clip_tokenizer

    torch.manual_seed(config.seed)
    vae = build_vae(config)
    torch.manual_seed(config.seed + 1)
    text_encoder = CLIPTextModel(text_config(config))
    torch.manual_seed(config.seed + 2)
    unet = build_unet(config)
    return Components(vae, text_encoder, unet, None, clip_tokenizer())


def load_components(folder: Path) -> Components:
    """Components from a saved shapes folder (weights in fp32), to continue training."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    from editing.models import clip_tokenizer

    dtype = dict(torch_dtype=torch.float32)
    controlnet = (
        ControlNetModel.from_pretrained(folder / "controlnet-canny", **dtype) if (folder / "controlnet-canny").is_dir() else None
    )
    return Components(
        AutoencoderKL.from_pretrained(folder / "vae", **dtype),
        CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32),
        UNet2DConditionModel.from_pretrained(folder / "unet", **dtype),
        controlnet,
        clip_tokenizer(),
        scaled=True,
    )


def latent_scale(vae, config: TrainConfig, count: int = 64) -> float:
    """1 / std of the VAE's latents on seeded training scenes (SD's scaling_factor, derived the same way)."""
    rng = np.random.default_rng([config.seed, 99])
    pixels, _, _ = scene_batch(config, rng, count)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    return float(1.0 / latents.std())


def train_vae(config: TrainConfig, parts: Components, work: Path, start: int) -> StageState:
    """Stage 1: the autoencoder."""

    def loss(step):
        rng, generator = step_rng(config, "vae", step)
        pixels, _, _ = scene_batch(config, rng, config.vae_batch)
        return vae_loss(parts.vae, pixels, generator, config.kl_weight)

    state = run_stage(config, "vae", work, {"vae": parts.vae}, loss, config.vae_lr, start)
    if config.vae_steps > 0 or not parts.scaled:  # a VAE that did not change keeps the scale its UNet learnt on
        parts.vae.register_to_config(scaling_factor=latent_scale(parts.vae, config))
        parts.scaled = True
    return state


def train_unet(config: TrainConfig, parts: Components, work: Path, start: int) -> StageState:
    """Stage 2: text encoder and UNet, with caption dropout."""
    models = (parts.vae, parts.text_encoder, parts.unet, Objective.of(config))

    def loss(step):
        rng, generator = step_rng(config, "unet", step)
        pixels, captions, _ = scene_batch(config, rng, config.unet_batch)
        ids = tokenize(parts.tokenizer, drop_captions(captions, rng, config.caption_dropout))
        return unet_loss(models, pixels, ids, generator)

    return run_stage(
        config, "unet", work, {"text_encoder": parts.text_encoder, "unet": parts.unet}, loss, config.unet_lr, start, average=True
    )


def train_decoder(config: TrainConfig, parts: Components, work: Path, start: int) -> StageState:
    """Stage 3: sharpen the decoder; the encoder (so the latent space and its scale) stays as it is."""
    decoder = torch.nn.ModuleDict({"decoder": parts.vae.decoder, "post_quant_conv": parts.vae.post_quant_conv})

    def loss(step):
        rng, generator = step_rng(config, "decoder", step)
        pixels, _, _ = scene_batch(config, rng, config.decoder_batch)
        return decoder_loss(parts.vae, pixels, generator, config.decoder_edge_weight)

    state = run_stage(config, "decoder", work, {"decoder": decoder}, loss, config.decoder_lr, start)
    parts.vae.eval().requires_grad_(False)
    return state


def train_control(config: TrainConfig, parts: Components, work: Path, start: int) -> StageState:
    """Stage 3: a Canny-edge ControlNet on the frozen model."""
    if parts.controlnet is None:
        if config.control_steps == 0:  # none yet and none asked for: a later run makes it from the trained UNet
            return StageState(step=start)
        torch.manual_seed(config.seed + 3)
        parts.controlnet = build_controlnet(parts.unet, config)
    models = (parts.vae, parts.text_encoder, parts.unet, Objective.of(config), parts.controlnet)

    def loss(step):
        rng, generator = step_rng(config, "control", step)
        pixels, captions, images = scene_batch(config, rng, config.control_batch)
        ids = tokenize(parts.tokenizer, drop_captions(captions, rng, config.caption_dropout))
        return control_loss(models, pixels, ids, canny_edges(images), generator)

    return run_stage(config, "control", work, {"controlnet": parts.controlnet}, loss, config.control_lr, start)


# ---------------------------------------------------------------- saving


def save_folder(parts: Components, out: Path, record: dict) -> None:
    """Write the diffusers folder (fp16 safetensors, model_index.json, DDIM scheduler), its manifest and training.json.

    The tokenizer is not saved (3.5 MB): it is CLIP's, built offline by editing.models.clip_tokenizer(), and
    the manifest says so; it also names the Canny ControlNet's subfolder, the folder's default for canny."""
    from diffusers import DDIMScheduler

    from editing.models import MANIFEST

    out.mkdir(parents=True, exist_ok=True)
    for name in ("vae", "text_encoder", "unet", "controlnet"):
        module = getattr(parts, name)
        if module is not None:
            folder = out / ("controlnet-canny" if name == "controlnet" else name)
            module.to(torch.float16).save_pretrained(folder, safe_serialization=True)
            module.to(torch.float32)
    DDIMScheduler.from_config(scheduler_config()).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }  # fmt: skip
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    controlnets = {"canny": "controlnet-canny"} if parts.controlnet is not None else {}
    (out / MANIFEST).write_text(json.dumps({"tokenizer": "clip", "controlnets": controlnets}, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def previous_record(folder: Path | None) -> dict:
    """training.json of the folder training continues from (empty when starting from scratch)."""
    if folder is None:
        return {}
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(config: TrainConfig, name: str, state: StageState, start: int, before: dict) -> dict:
    """A stage's record: steps, loss at the start and end (means of 50 steps), seconds per step, batch."""
    losses, done = state.losses, state.step - start
    return {
        "steps": state.step,
        "steps_this_run": done,
        "batch": state.batch,
        "loss_first50": float(np.mean(losses[:50])) if losses else None,
        "loss_last50": float(np.mean(losses[-50:])) if losses else None,
        "seconds_per_step": state.seconds / done if done else None,
        "earlier_runs": before or None,
    }


def take_vae(parts: Components, folder: Path, previous: dict) -> None:
    """Use the VAE of another saved folder whose encoder is this model's (only its decoder was trained on,
    e.g. by a decoder stage run alongside the UNet stage); its vae and decoder records come with it."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    mine, theirs = parts.vae.state_dict(), vae.state_dict()
    encoder = [k for k in mine if k.startswith(("encoder.", "quant_conv."))]
    if set(mine) != set(theirs) or any(not torch.equal(mine[k], theirs[k]) for k in encoder):
        raise EditingError(
            f"the VAE in {folder} does not have this model's encoder: its latents would not be the ones the UNet learnt"
        )
    vae.register_to_config(scaling_factor=parts.vae.config.scaling_factor)
    parts.vae = vae.eval().requires_grad_(False)
    record = previous_record(folder)
    for stage in ("vae", "decoder"):
        taken = record.get("stages", {}).get(stage)
        if taken:
            previous.setdefault("stages", {})[stage] = taken


def train(config: TrainConfig, out: Path, work: Path, init: Path | None = None, vae_from: Path | None = None) -> dict:
    """Run the stages (resuming from `work`, or continuing from the saved folder `init`, optionally with the
    VAE of the folder `vae_from`) and save to `out`."""
    torch.set_num_threads(config.threads)
    work.mkdir(parents=True, exist_ok=True)
    previous = previous_record(init)
    parts = load_components(init) if init is not None else fresh_components(config)
    if vae_from is not None:
        if init is None:
            raise EditingError("--vae-from needs --init: the VAE must match the encoder of the model being continued")
        take_vae(parts, vae_from, previous)
    record = {
        "last_invocation": asdict(config),
        "continued_from": str(init) if init else None,
        "vae_from": str(vae_from) if vae_from else None,
        "stages": {},
    }
    stages = {"vae": train_vae, "unet": train_unet, "decoder": train_decoder, "control": train_control}
    for name, run in stages.items():
        before = previous.get("stages", {}).get(name, {})
        start = int(before.get("steps", 0))
        state = run(config, parts, work, start)
        record["stages"][name] = summarise(config, name, state, start, before)
        log.info("stage %s done: %s", name, record["stages"][name])
    record["latent_scaling_factor"] = float(parts.vae.config.scaling_factor)
    save_folder(parts, out, record)
    return record


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes_world.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the diffusers folder to write")
    parser.add_argument("--work", type=Path, required=True, help="where stage checkpoints are kept (resumed from)")
    parser.add_argument("--init", type=Path, help="a saved shapes folder to continue training from (optimiser reset)")
    parser.add_argument(
        "--vae-from",
        type=Path,
        help="with --init: take the VAE of this saved folder (same encoder, e.g. a decoder stage run alongside)",
    )
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    sizes = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    parser.add_argument(
        "--vae-channels", type=sizes, default=TrainConfig.vae_channels, help="e.g. 32,64,64 (len - 1 downsamplings)"
    )
    parser.add_argument("--latent-channels", type=int, default=TrainConfig.latent_channels)
    parser.add_argument("--unet-channels", type=sizes, default=TrainConfig.unet_channels, help="e.g. 64,128,128")
    parser.add_argument("--text-width", type=int, default=TrainConfig.text_width)
    parser.add_argument("--offset-noise", type=float, default=TrainConfig.offset_noise)
    parser.add_argument("--snr-gamma", type=float, default=TrainConfig.snr_gamma, help="Min-SNR loss weighting (0 = plain MSE)")
    parser.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    parser.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    parser.add_argument("--decoder-steps", type=int, default=TrainConfig.decoder_steps)
    parser.add_argument("--control-steps", type=int, default=TrainConfig.control_steps)
    parser.add_argument("--unet-lr", type=float, default=TrainConfig.unet_lr, help="the UNet stage's learning rate after warm-up")
    parser.add_argument("--vae-batch", type=int, default=TrainConfig.vae_batch)
    parser.add_argument("--unet-batch", type=int, default=TrainConfig.unet_batch)
    parser.add_argument("--decoder-batch", type=int, default=TrainConfig.decoder_batch)
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
        if args.init is not None and not (args.init / "model_index.json").is_file():
            raise EditingError(f"{args.init} is not a saved shapes model folder (no model_index.json)")
        train(config, args.out, args.work, args.init, args.vae_from)
    except (ValueError, EditingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
