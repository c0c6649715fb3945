"""Distil a few-step LCM-LoRA from the shapes model (latent consistency distillation, Luo et al. 2023).

The recipe of LCM-LoRA for SD-1.5, at the shapes model's size: the teacher is the frozen shapes UNet; the
student is the same UNet with a peft LoRA on its attention, feed-forward, resnet and sampling layers.
Each step:
  1. scenes and clip frames of the shapes world's training split, encoded by the frozen autoencoder;
  2. a timestep t_n+k of the 50-step DDIM grid (k = 20 training timesteps), the latents noised to it;
  3. the teacher's one DDIM step with classifier-free guidance (`guidance`, the shapes benchmark's) from
     t_n+k to t_n (the LCM paper's "augmented PF-ODE" solver, eq. 9);
  4. the student's consistency function f(x, t) = c_skip(t) x + c_out(t) x0(x, t) (eq. 4, with diffusers'
     LCMScheduler boundary scalings) at t_n+k, against the same function of the student without gradient
     at the teacher's x_t_n (LCM-LoRA keeps no separate EMA target), in a pseudo-Huber loss.
A share of the captions is swapped for another sample's, so the student also learns what the teacher
does when the prompt disagrees with the latents: the SDEdit regime of the fast preset.

Resumable: the LoRA, optimiser, step and loss history are checkpointed to WORK every `checkpoint_every`
steps (and every `checkpoint_minutes` of wall time); `minutes` stops a run early, saved; and each step's data
and noise come from generators seeded by (seed, step), so a resumed run equals
an uninterrupted one. The result is one fp16 `pytorch_lora_weights.safetensors` in diffusers' LoRA layout
plus manifest.json (steps, seconds, teacher, command).

    python -m shapes_world.train_lcm --out editing/assets/shapes-lcm-lora --work WORK [--steps N]
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

from editing.errors import EditingError
from editing.files import atomic_output

from .train import scene_batch, tokenize
from .world import random_clip

log = logging.getLogger(__name__)
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: a folder holding it loads as `--lora FOLDER`
LCM_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)  # fmt: skip  (LCM-LoRA's targets for SD-1.5: every linear and 3x3 conv of the blocks)
STEP_SEED_ID = 5  # seeds data apart from shapes_world.train's stages (1-4)


@dataclass(frozen=True)
class LcmConfig:
    """Settings of the distillation run."""

    teacher: str = "editing/assets/shapes-model"
    seed: int = 0
    steps: int = 1000
    batch: int = 12
    lr: float = 5e-4
    rank: int = 16
    guidance: float = 5.0  # classifier-free guidance folded into the student (the shapes benchmark's)
    ddim_steps: int = 50  # the teacher solver's grid: k = 1000 / ddim_steps training timesteps per hop
    huber_c: float = 0.001
    timestep_scaling: float = 10.0  # LCMScheduler's default: boundary scalings at t * 10
    low_share: float = 0.7  # share of samples drawn from the grid's lower half (the presets run t <= 376)
    swap_share: float = 0.25  # share of captions replaced by another sample's (edit prompts)
    clip_share: float = 0.5  # share of the batch taken from frames of moving clips
    warmup: int = 50
    checkpoint_every: int = 100
    checkpoint_minutes: float = 5.0  # also checkpoint after this much wall time since the last (a busy shared machine)
    minutes: float = 0.0  # stop (checkpointed and saved, resumable) after this much wall time in this run; 0 = no limit
    threads: int = 1
    init: str = ""  # a saved LoRA folder to start from when WORK has no checkpoint: its weights and step count

    def __post_init__(self):
        if self.steps < 0 or self.batch < 2 or self.rank < 1 or self.checkpoint_every < 1:
            raise ValueError("steps must be >= 0, batch >= 2, rank and checkpoint interval >= 1")
        if not (0 <= self.low_share <= 1 and 0 <= self.swap_share <= 1 and 0 <= self.clip_share <= 1):
            raise ValueError("low, swap and clip shares must be in [0, 1]")
        if self.guidance < 1 or 1000 % self.ddim_steps:
            raise ValueError("guidance must be >= 1 and ddim_steps must divide 1000")


def boundary_scalings(timesteps: torch.Tensor, scaling: float, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency function at `timesteps` (LCM eq. 4; LCMScheduler's form)."""
    t = timesteps.float() * scaling
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def predicted_x0(latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x0 from an epsilon prediction (DDIM eq. 12's 'predicted x0')."""
    a = expand(alpha_bar, latents)
    return (latents - (1 - a).sqrt() * eps) / a.sqrt()


def consistency(
    latents: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, alpha_bar: torch.Tensor, scaling: float
) -> torch.Tensor:
    """f(x, t) = c_skip x + c_out x0(x, t)."""
    c_skip, c_out = boundary_scalings(timesteps, scaling)
    return expand(c_skip, latents) * latents + expand(c_out, latents) * predicted_x0(latents, eps, alpha_bar)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt((a - b)^2 + c^2) - c, averaged (the LCM-LoRA script's loss)."""
    return (((a.float() - b.float()) ** 2 + c**2).sqrt() - c).mean()


# ---------------------------------------------------------------- data


def step_rng(config: LcmConfig, step: int) -> tuple[np.random.Generator, torch.Generator]:
    key = [config.seed, STEP_SEED_ID, step]
    return np.random.default_rng(key), torch.Generator("cpu").manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


def batch_images(config: LcmConfig, rng: np.random.Generator) -> tuple[torch.Tensor, list[str]]:
    """Pixels in [-1, 1] and captions: training scenes and frames of training-split moving clips."""
    clips = int(round(config.batch * config.clip_share))
    pixels, captions, _ = scene_batch_config(rng, config.batch - clips)
    images, clip_captions = [], []
    for _ in range(clips):
        clip = random_clip(int(rng.integers(2**31)), frames=4, split="train")
        images.append(clip.frames[int(rng.integers(len(clip.frames)))])
        clip_captions.append(clip.caption)
    if images:
        frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        pixels = torch.cat([pixels, frames])
        captions = captions + clip_captions
    return pixels, captions


def scene_batch_config(rng: np.random.Generator, count: int):
    from .train import TrainConfig

    if count == 0:
        return torch.zeros(0, 3, 64, 64), [], None
    return scene_batch(TrainConfig(), rng, count)


def edit_captions(captions: list[str], rng: np.random.Generator, share: float) -> list[str]:
    """Captions with a share replaced by another sample's (a prompt that disagrees with the latents)."""
    out = list(captions)
    for i in np.flatnonzero(rng.random(len(out)) < share):
        out[i] = captions[(i + 1 + int(rng.integers(len(out) - 1))) % len(out)]
    return out


def grid_timesteps(config: LcmConfig, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_n+k, t_n) on the DDIM grid t = (i + 1) k - 1; t_n = -1 stands for the clean end (alpha_bar 1)."""
    k = 1000 // config.ddim_steps
    half = config.ddim_steps // 2
    low = rng.random(count) < config.low_share
    index = np.where(low, rng.integers(0, half, count), rng.integers(0, config.ddim_steps, count))
    start = torch.from_numpy((index + 1) * k - 1).long()
    return start, start - k


# ---------------------------------------------------------------- models


@dataclass
class Parts:
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    teacher: torch.nn.Module
    student: torch.nn.Module
    tokenizer: object
    alphas: torch.Tensor = field(repr=False)


def load_parts(config: LcmConfig) -> Parts:
    """The frozen teacher (autoencoder, text encoder, UNet) and the student: the UNet plus a fresh LoRA."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel

    from editing.models import clip_tokenizer

    folder = Path(config.teacher)
    if not (folder / "model_index.json").is_file():
        raise EditingError(f"teacher {folder} is not a saved shapes model folder (no model_index.json)")
    fp32 = dict(torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **fp32).eval().requires_grad_(False)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32).eval().requires_grad_(False)
    teacher = UNet2DConditionModel.from_pretrained(folder / "unet", **fp32).eval().requires_grad_(False)
    student = UNet2DConditionModel.from_pretrained(folder / "unet", **fp32).requires_grad_(False)
    torch.manual_seed(config.seed)
    student.add_adapter(
        LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=list(LCM_TARGETS), init_lora_weights="gaussian")
    )
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    return Parts(vae, text, teacher, student, clip_tokenizer(), scheduler.alphas_cumprod.float())


def lora_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n]


def distillation_loss(config: LcmConfig, parts: Parts, step: int) -> torch.Tensor:
    """One step's consistency-distillation loss (see the module docstring)."""
    rng, generator = step_rng(config, step)
    pixels, captions = batch_images(config, rng)
    prompts = edit_captions(captions, rng, config.swap_share)
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.sample(generator) * parts.vae.config.scaling_factor
        context = parts.text_encoder(tokenize(parts.tokenizer, prompts))[0]
        empty = parts.text_encoder(tokenize(parts.tokenizer, [""] * len(prompts)))[0]
    start, end = grid_timesteps(config, rng, len(latents))
    noise = torch.randn(latents.shape, generator=generator)
    a_start = parts.alphas[start]
    a_end = torch.where(end >= 0, parts.alphas[end.clamp(min=0)], torch.ones_like(a_start))
    noisy = expand(a_start, latents).sqrt() * latents + expand(1 - a_start, latents).sqrt() * noise
    with torch.no_grad():  # the teacher's guided DDIM hop t_n+k -> t_n
        both = parts.teacher(
            torch.cat([noisy, noisy]), torch.cat([start, start]), encoder_hidden_states=torch.cat([context, empty])
        ).sample
        cond, uncond = both.chunk(2)
        eps = uncond + config.guidance * (cond - uncond)
        x0 = predicted_x0(noisy, eps, a_start)
        previous = expand(a_end, x0).sqrt() * x0 + expand(1 - a_end, x0).sqrt() * eps
        target_eps = parts.student(previous, end.clamp(min=0), encoder_hidden_states=context).sample
        target = consistency(previous, target_eps, end.clamp(min=0), a_end, config.timestep_scaling)
        target = torch.where(expand(end < 0, x0), previous, target)  # f(x, t) = x at the clean end
    online = consistency(
        noisy, parts.student(noisy, start, encoder_hidden_states=context).sample, start, a_start, config.timestep_scaling
    )
    return pseudo_huber(online, target, config.huber_c)


# ---------------------------------------------------------------- the loop, checkpoints, saving


def save_checkpoint(path: Path, parts: Parts, optimizer, state: dict) -> None:
    from peft.utils import get_peft_model_state_dict

    payload = {"lora": get_peft_model_state_dict(parts.student), "optimizer": optimizer.state_dict(), "state": state}
    with atomic_output(path) as partial:
        torch.save(payload, partial)


def load_checkpoint(path: Path, parts: Parts, optimizer, init: str = "") -> dict:
    """The run's state from WORK's checkpoint, else from `init` (a saved LoRA folder: its weights, step count
    and seconds; the optimiser and its warm-up start afresh), else a fresh start."""
    from peft.utils import set_peft_model_state_dict

    if not path.is_file():
        return init_state(Path(init), parts) if init else {"step": 0, "losses": [], "seconds": 0.0}
    payload = torch.load(path, map_location="cpu", weights_only=True)
    set_peft_model_state_dict(parts.student, payload["lora"])
    optimizer.load_state_dict(payload["optimizer"])
    return payload["state"]


def init_state(folder: Path, parts: Parts) -> dict:
    """Load a saved LoRA folder's weights into the student; the state continues its step count."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    manifest = json.loads((folder / "manifest.json").read_text())
    weights = {k.removeprefix("unet."): v.float() for k, v in load_file(folder / LORA_FILE).items()}
    try:
        result = set_peft_model_state_dict(parts.student, weights)
    except RuntimeError:  # a shape mismatch: another rank
        result = None
    if result is None or result.unexpected_keys:
        raise EditingError(f"init {folder} is not a LoRA of this run's rank and layers")
    step = int(manifest["steps"])
    return {"step": step, "losses": [], "seconds": float(manifest["seconds"]), "warm_from": step, "init": str(folder)}


def distil(config: LcmConfig, work: Path) -> tuple[Parts, dict]:
    """Train the LoRA for config.steps steps in all, resuming from WORK's checkpoint."""
    torch.set_num_threads(config.threads)
    work.mkdir(parents=True, exist_ok=True)
    parts = load_parts(config)
    parameters = lora_parameters(parts.student)
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    path = work / "lcm.ckpt"
    state = load_checkpoint(path, parts, optimizer, config.init)
    if state["step"]:
        log.info("resumed at step %d (%.0f s so far)", state["step"], state["seconds"])
    parts.student.train()
    run_began = last_saved = time.monotonic()
    while state["step"] < config.steps:
        if config.minutes and time.monotonic() - run_began > 60 * config.minutes:
            log.info("stopping at step %d after %.0f minutes (run again to continue)", state["step"], config.minutes)
            save_checkpoint(path, parts, optimizer, state)
            break
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (state["step"] + 1 - state.get("warm_from", 0)) / config.warmup)
        loss = distillation_loss(config, parts, state["step"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        seconds = time.perf_counter() - began
        state["step"] += 1
        state["losses"].append(round(loss.item(), 6))
        state["seconds"] += seconds
        log.info("step %d/%d loss %.5f %.2f s/step", state["step"], config.steps, loss.item(), seconds)
        due = time.monotonic() - last_saved > 60 * config.checkpoint_minutes
        if state["step"] % config.checkpoint_every == 0 or state["step"] == config.steps or due:
            save_checkpoint(path, parts, optimizer, state)
            last_saved = time.monotonic()
            log.info(
                "checkpoint at step %d: mean loss of the last 50 %.5f, %.2f s/step on average",
                state["step"],
                np.mean(state["losses"][-50:]),
                state["seconds"] / state["step"],
            )
    parts.student.eval()
    return parts, state


def save_lora_folder(config: LcmConfig, parts: Parts, state: dict, out: Path, command: str) -> Path:
    """Write the LoRA (fp16, diffusers' layout) and its manifest.json into `out`."""
    from peft.utils import get_peft_model_state_dict

    from editing.lora import save_lora

    out.mkdir(parents=True, exist_ok=True)
    weights = {f"unet.{k}": v.detach().to(torch.float16) for k, v in get_peft_model_state_dict(parts.student).items()}
    save_lora(out / LORA_FILE, weights)
    losses = state["losses"]
    manifest = {
        "kind": "lcm-lora",
        "teacher": "shapes",
        "teacher_folder": config.teacher,
        "sampler": "lcm",
        "steps": state["step"],
        "seconds": round(state["seconds"], 1),
        "seconds_per_step": round(state["seconds"] / max(1, state["step"]), 3),
        "loss_first50": float(np.mean(losses[:50])) if losses else None,
        "loss_last50": float(np.mean(losses[-50:])) if losses else None,
        "command": command,
        "config": asdict(config),
    }
    if "init" in state:  # started from a saved LoRA: the losses above are this run's only
        manifest |= {"init": state["init"], "init_steps": state["warm_from"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes_world.train_lcm", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the LoRA and manifest.json to")
    parser.add_argument("--work", type=Path, required=True, help="where the checkpoint is kept (resumed from)")
    for f in fields(LcmConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        config = LcmConfig(**{f.name: getattr(args, f.name) for f in fields(LcmConfig)})
        parts, state = distil(config, args.work)
        command = "python -m shapes_world.train_lcm " + " ".join(sys.argv[1:] if argv is None else argv)
        save_lora_folder(config, parts, state, args.out, command)
    except (ValueError, EditingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
