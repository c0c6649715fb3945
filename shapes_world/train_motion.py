"""Train a small AnimateDiff MotionAdapter for the frozen `shapes` model on 16-frame shapes-world clips, on the CPU.

As AnimateDiff trained its motion modules: the backbone (VAE, text encoder, UNet) is frozen, the motion
modules start with a zero output projection (so the inflated UNet starts equal to the image model) and learn
to predict DDPM noise of whole clips, one timestep per clip. Clips move, turn and scale objects, pan the
camera, occlude one object by another, and carry stripes and gradients; their seeds start at CLIP_SEED_BASE,
far from the benchmark's (shapes_world.benchmark.BASE_SEED + clip index), which are refused.
Each step's data and noise are a function of (seed, step): a resumed run equals an uninterrupted one. The
result is a diffusers MotionAdapter folder (fp16 safetensors) with manifest.json and training.json, found by
`--motion-adapter shapes` when written to editing/assets/shapes-motion.

    python -m shapes_world.train_motion --out editing/assets/shapes-motion --work DIR [--steps N --minutes M]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from editing.errors import EditingError
from editing.motion import build_adapter

from .train import StageState, load_checkpoint, load_components, save_checkpoint, tokenize
from .world import kind_clip, random_clip

log = logging.getLogger(__name__)
CLIP_SEED_BASE = 10_000_000  # training clips' seeds start here; the benchmark's are BASE_SEED + index (1000 + a few)
CLIP_RECIPES = ("plain", "textured", "pan", "occlusion")
STAGE = "motion"


@dataclass(frozen=True)
class MotionTrainConfig:
    """Sizes and optimisation settings of the motion module's training."""

    seed: int = 0
    frames: int = 16
    motion_batch: int = 2  # clips per step (each `frames` images through the UNet)
    motion_steps: int = 3000
    minutes: float = 45.0  # stop (and save) after this much training time, whatever the steps
    lr: float = 3e-4
    warmup: int = 50
    heads: int = 8
    max_frames: int = 32  # positional embeddings: the longest window the module takes
    caption_dropout: float = 0.1
    offset_noise: float = 0.2  # as the backbone was trained (shapes_world.train.noisy_latents)
    ema_decay: float = 0.995
    checkpoint_every: int = 50
    threads: int = 1

    def __post_init__(self):
        if not 2 <= self.frames <= self.max_frames:
            raise ValueError(f"frames must be in [2, {self.max_frames}]; got {self.frames}")
        if min(self.motion_batch, self.checkpoint_every, self.heads) < 1 or self.motion_steps < 0:
            raise ValueError("batch, heads and checkpoint interval must be at least 1, steps at least 0")

    def steps(self, stage: str) -> int:
        return self.motion_steps


def clip_seed(config: MotionTrainConfig, step: int, index: int) -> int:
    """The seed of clip `index` of step `step`; never one of the benchmark's."""
    from .benchmark import BASE_SEED

    seed = CLIP_SEED_BASE + config.seed * 1_000_000 + step * config.motion_batch + index
    if BASE_SEED <= seed < BASE_SEED + 10_000:
        raise EditingError(f"training clip seed {seed} is in the benchmark's range")
    return seed


def training_clip(config: MotionTrainConfig, step: int, index: int, size: int):
    """One seeded 16-frame clip, its recipe cycling through plain (move/turn/scale), textured, pan and occlusion."""
    seed = clip_seed(config, step, index)
    recipe = CLIP_RECIPES[seed % len(CLIP_RECIPES)]
    if recipe == "plain":
        return random_clip(seed, config.frames, size, ("move", "turn", "scale"), split="train")
    return kind_clip(recipe, seed, config.frames, size)


def motion_parameters(unet) -> torch.nn.ModuleDict:
    """The motion modules of a UNetMotionModel, gathered (shared, not copied) in one module to train and save."""
    parts = {f"down{i}": block.motion_modules for i, block in enumerate(unet.down_blocks)}
    parts |= {f"up{i}": block.motion_modules for i, block in enumerate(unet.up_blocks)}
    if getattr(unet.mid_block, "motion_modules", None) is not None:
        parts["mid"] = unet.mid_block.motion_modules
    return torch.nn.ModuleDict(parts)


def clip_loss(config: MotionTrainConfig, parts, unet, scheduler, step: int) -> torch.Tensor:
    """The denoising loss of one step's clips: one timestep and one offset per clip, fresh noise per frame."""
    key = [config.seed, 7, step]
    rng = np.random.default_rng(key)
    generator = torch.Generator("cpu").manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
    size = parts.vae.config.sample_size
    clips = [training_clip(config, step, i, size) for i in range(config.motion_batch)]
    pixels = torch.from_numpy(np.concatenate([c.frames for c in clips])).permute(0, 3, 1, 2).float() / 127.5 - 1
    captions = ["" if rng.random() < config.caption_dropout else c.caption for c in clips]
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.sample(generator) * parts.vae.config.scaling_factor
        context = parts.text_encoder(tokenize(parts.tokenizer, captions))[0]
    batch, frames = config.motion_batch, config.frames
    latents = latents.view(batch, frames, *latents.shape[1:]).transpose(1, 2)  # (clips, C, frames, h, w)
    noise = torch.randn(latents.shape, generator=generator)
    if config.offset_noise > 0:
        noise = noise + config.offset_noise * torch.randn((batch, latents.shape[1], 1, 1, 1), generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)  # one timestep per clip, broadcast over its frames
    context = context.repeat_interleave(frames, dim=0)  # UNetMotionModel takes one text embedding per frame
    predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
    return ((predicted.float() - noise) ** 2).mean()


def learning_rate(config: MotionTrainConfig, step: int) -> float:
    """Linear warm-up, then constant."""
    return config.lr * min(1.0, (step + 1) / config.warmup)


def train(config: MotionTrainConfig, backbone: Path, out: Path, work: Path) -> dict:
    """Train (resuming from `work`) and save the adapter to `out`."""
    from diffusers import UNetMotionModel

    torch.set_num_threads(config.threads)
    work.mkdir(parents=True, exist_ok=True)
    parts = load_components(backbone)
    for module in (parts.vae, parts.text_encoder, parts.unet):
        module.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    adapter = build_adapter(dict(parts.unet.config), config.heads, config.max_frames)
    unet = UNetMotionModel.from_unet2d(parts.unet, adapter).eval().requires_grad_(False)
    trained = motion_parameters(unet)
    trained.train().requires_grad_(True)
    parameters = list(trained.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    state, ema = load_checkpoint(config, work, STAGE, {"motion": trained}, optimizer)
    weights = [p.detach() for p in parameters]
    ema = ema or [w.clone() for w in weights]
    scheduler = ddpm_scheduler()
    began_run = time.perf_counter()
    while state.step < config.motion_steps and (time.perf_counter() - began_run) < config.minutes * 60:
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, state.step)
        loss = clip_loss(config, parts, unet, scheduler, state.step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, weights, 1 - min(config.ema_decay, (1 + state.step) / (10 + state.step)))
        state.step += 1
        state.batch = config.motion_batch
        state.losses.append(round(loss.item(), 6))
        state.seconds += time.perf_counter() - began
        if state.step % config.checkpoint_every == 0:
            save_checkpoint(work, STAGE, {"motion": trained}, optimizer, state, ema)
            log.info(
                "motion step %d/%d loss %.5f (%.2f s/step)",
                state.step,
                config.motion_steps,
                np.mean(state.losses[-50:]),
                state.seconds / max(1, state.step),
            )
    save_checkpoint(work, STAGE, {"motion": trained}, optimizer, state, ema)
    with torch.no_grad():
        torch._foreach_copy_(weights, ema)
    record = summary(config, state)
    save_adapter(unet, out, record)
    return record


def ddpm_scheduler():
    """The backbone's training noise schedule."""
    from diffusers import DDPMScheduler

    from .train import scheduler_config

    return DDPMScheduler.from_config(scheduler_config())


def summary(config: MotionTrainConfig, state: StageState) -> dict:
    """What training.json records: settings, steps, loss at the start and end (means of 50 steps), seconds per step."""
    from .benchmark import BASE_SEED

    losses = state.losses
    return {
        "config": asdict(config),
        "steps": state.step,
        "clips_seen": state.step * config.motion_batch,
        "clip_seeds": f"{CLIP_SEED_BASE + config.seed * 1_000_000} onwards (benchmark clips use {BASE_SEED} + index: excluded)",
        "loss_first50": float(np.mean(losses[:50])) if losses else None,
        "loss_last50": float(np.mean(losses[-50:])) if losses else None,
        "seconds_per_step": state.seconds / state.step if state.step else None,
        "seconds": state.seconds,
        "machine": f"CPU, torch threads {config.threads}, shared 2-core machine, nice 19",
    }


def save_adapter(unet, out: Path, record: dict) -> None:
    """Write the MotionAdapter folder (fp16 safetensors), its manifest and training.json."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels), motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=unet.config.motion_num_attention_heads, motion_norm_num_groups=unet.config.norm_num_groups,
        motion_max_seq_length=unet.config.motion_max_seq_length, use_motion_mid_block=unet.config.use_motion_mid_block,
    )  # fmt: skip
    for mine, theirs in zip(adapter.down_blocks, unet.down_blocks):
        mine.motion_modules.load_state_dict(theirs.motion_modules.state_dict())
    for mine, theirs in zip(adapter.up_blocks, unet.up_blocks):
        mine.motion_modules.load_state_dict(theirs.motion_modules.state_dict())
    adapter.mid_block.motion_modules.load_state_dict(unet.mid_block.motion_modules.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    adapter.to(torch.float16).save_pretrained(out, safe_serialization=True)
    manifest = {
        "kind": "motion-adapter",
        "backbone": "shapes",
        "frames": record["config"]["frames"],
        "max_frames": record["config"]["max_frames"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from editing.models import SHAPES_MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m shapes_world.train_motion", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the MotionAdapter folder to write")
    parser.add_argument("--work", type=Path, required=True, help="where the checkpoint is kept (resumed from)")
    parser.add_argument("--backbone", type=Path, default=SHAPES_MODEL_DIR, help="the frozen shapes model folder")
    for name, value in asdict(MotionTrainConfig()).items():
        parser.add_argument(f"--{name.removeprefix('motion_').replace('_', '-')}", dest=name, type=type(value), default=value)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = MotionTrainConfig(**{name: getattr(args, name) for name in asdict(MotionTrainConfig())})
        train(config, args.backbone, args.out, args.work)
    except (ValueError, EditingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
