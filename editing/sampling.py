"""Stage functions of the one denoising loop: encode text and frames, noise, denoise, decode.

Every pipeline is composed from these; none copies the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import autoencoder
from .attention.anchor import AnchorCall, AnchorStore
from .attention.control import AttentionControl
from .attention.cross_frame import FrameLayout, cross_frame_attention, layer_kwargs, layout_for
from .attention.modes import get_attention_mode
from .attention.plan import FrameBatch
from .memo import current_memo, text_key
from .models import Backbone
from .motion import run_unet
from .samplers import sampler_of, set_timeline
from .stepcache import build_step_caches
from .windows import window_starts, window_weights

if TYPE_CHECKING:
    from diffusers import SchedulerMixin
    from transformers import PreTrainedTokenizerBase

    from .windows import ContextWindows

StepCallback = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class TextConditioning:
    """Prompt embeddings, each (1, tokens, width); `negative` is None when guidance is off."""

    positive: torch.Tensor
    negative: torch.Tensor | None


def encode_prompts(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """CLIP text-encoder hidden states for each prompt, padded to the tokenizer's 77 tokens; inside a
    session's `remembering` (editing.memo) prompts encoded before are not encoded again."""
    memo = current_memo()
    if memo is None:
        return _encode(backbone, prompts)
    keys = [text_key(backbone, p) for p in prompts]
    known = {p: memo.get(k) for p, k in zip(prompts, keys)}
    missing = list(dict.fromkeys(p for p in prompts if known[p] is None))
    if missing:
        for prompt, hidden in zip(missing, _encode(backbone, missing)):
            known[prompt] = hidden[None]
            memo.put(text_key(backbone, prompt), known[prompt])
    return torch.cat([known[p] for p in prompts])


def _encode(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    tokens = backbone.tokenizer(
        prompts,
        padding="max_length",
        max_length=backbone.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        hidden = backbone.text_encoder(tokens.input_ids.to(backbone.device))[0]
    return hidden.to(backbone.dtype)


def prompt_cut(tokenizer: PreTrainedTokenizerBase, prompt: str, name: str = "prompt") -> str | None:
    """One sentence saying where a prompt longer than the text encoder's window is cut, or None when it fits."""
    limit = tokenizer.model_max_length  # 77 for CLIP: 75 text tokens between the start and end tokens
    quiet = logging.getLogger("transformers.tokenization_utils_base")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # transformers' own warning about the length says it less clearly
    try:
        ids = tokenizer(prompt, truncation=False).input_ids
    finally:
        quiet.setLevel(level)
    if len(ids) <= limit:
        return None
    kept = tokenizer.decode(ids[1 : limit - 1]).strip()
    dropped = tokenizer.decode(ids[limit - 1 : -1]).strip()
    tail = " ".join(kept.split()[-4:])
    return f"the {name} is longer than the text encoder's {limit - 2} tokens: it was cut after '...{tail}', dropping '{dropped}'"


def encode_text(backbone: Backbone, prompt: str, negative_prompt: str, guided: bool) -> TextConditioning:
    """Embeddings of the prompt and, for classifier-free guidance, of the negative prompt."""
    if not guided:
        return TextConditioning(encode_prompts(backbone, [prompt]), None)
    negative, positive = encode_prompts(backbone, [negative_prompt, prompt]).chunk(2)
    return TextConditioning(positive, negative)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB to (N, 3, H, W) floats in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_frames(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] to (N, H, W, 3) uint8 RGB."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def encode_frames(backbone: Backbone, frames: np.ndarray, batch_size: int) -> torch.Tensor:
    """VAE latents of RGB frames, times the scaling factor: the posterior's mean for AutoencoderKL, the
    encoder's output for AutoencoderTiny (whose latents are already on SD's scale: factor 1)."""
    latents = []
    for start in range(0, len(frames), batch_size):
        images = frames_to_tensor(frames[start : start + batch_size]).to(backbone.device)
        latents.append(autoencoder.encode(backbone.vae, images).to(backbone.dtype) * backbone.vae.config.scaling_factor)
    return torch.cat(latents)


@torch.inference_mode()
def decode_latents(
    backbone: Backbone, latents: torch.Tensor, batch_size: int, indices: tuple[int, ...] | None = None
) -> np.ndarray:
    """RGB uint8 frames from latents, decoded a batch at a time (AutoencoderKL or AutoencoderTiny: both
    decode `latents / scaling_factor` to [-1, 1]); `indices` decodes only those frames."""
    if indices is not None:
        latents = latents[list(indices)]
    frames = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size].to(backbone.dtype) / backbone.vae.config.scaling_factor
        frames.append(tensor_to_frames(autoencoder.decode(backbone.vae, chunk)))
    return np.concatenate(frames)


def sampling_timesteps(scheduler: SchedulerMixin, steps: int, strength: float) -> torch.Tensor:
    """The timesteps left after skipping the first (1 - strength) share of a `steps`-step DDIM schedule,
    with `scheduler` set to step along exactly those (every sampler shares DDIM inversion's timeline)."""
    from diffusers import DDIMScheduler  # diffusers loads with the first model, not with the option schema

    timeline = DDIMScheduler.from_config(scheduler.config)
    timeline.set_timesteps(steps)
    skip = steps - max(1, round(steps * strength))
    kept = [int(t) for t in timeline.timesteps[skip:]]
    sampler = sampler_of(scheduler)
    if isinstance(scheduler, DDIMScheduler) or (sampler is not None and sampler.settings.get("timestep_spacing") == "trailing"):
        scheduler.set_timesteps(steps)  # DDIM's own timeline, or a trailing sampler's (which DDIM inversion does not walk)
        return scheduler.timesteps[skip:]
    set_timeline(scheduler, kept, steps)
    return scheduler.timesteps[len(scheduler.timesteps) - len(kept) :]


def alpha_bar(scheduler: SchedulerMixin, timestep: torch.Tensor | float) -> float:
    """The scheduler's cumulative alpha (the signal's share of the variance) at `timestep`, rounded to its table."""
    return float(scheduler.alphas_cumprod[int(round(float(timestep)))])


def vp_scale(scheduler: SchedulerMixin, timestep: torch.Tensor | float) -> float:
    """x_sampler / x_vp at `timestep`: sqrt(1 + sigma_t^2) = 1 / sqrt(alpha_bar_t) for sigma-space samplers
    (Euler: x = x0 + sigma eps), 1 for samplers on variance-preserving latents (DDIM, DPM-Solver, LCM)."""
    sampler = sampler_of(scheduler)
    if sampler is None or not sampler.sigma_space or timestep is None:
        return 1.0
    return alpha_bar(scheduler, timestep) ** -0.5


def step_generator(scheduler: SchedulerMixin, seed: int, frames: int):
    """Seeded noise for stochastic samplers: one generator per frame, all with the same seed, so every
    frame gets the same fresh noise (as `shared_noise` does for the start); None for deterministic ones."""
    sampler = sampler_of(scheduler)
    if sampler is None or not sampler.stochastic:
        return None
    return [torch.Generator("cpu").manual_seed(seed + 1) for _ in range(frames)]


def scheduler_step(
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    timestep: torch.Tensor | float,
    latents: torch.Tensor,
    generator: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """One scheduler update of the whole clip's latents."""
    extra = (
        {} if generator is None or "generator" not in inspect.signature(scheduler.step).parameters else {"generator": generator}
    )
    return scheduler.step(noise, timestep, latents, **extra).prev_sample


def shared_noise(shape: tuple[int, ...], seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One seeded noise image (drawn on the CPU, so every device gets the same) repeated for each frame."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, *shape[1:]), generator=generator, dtype=torch.float32)
    return noise.expand(shape).to(device=device, dtype=dtype).contiguous()


def noise_to_timestep(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor | float
) -> torch.Tensor:
    """Forward-diffuse clean latents to `timestep` (SDEdit): sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    return scheduler.add_noise(latents, noise, torch.as_tensor([int(round(float(timestep)))]))  # Euler's timesteps are floats


@dataclass(frozen=True)
class ControlSignal:
    """One ControlNet and its condition images, with a strength and the share of steps it acts on."""

    model: torch.nn.Module
    images: torch.Tensor  # (frames, 3, H, W) in [0, 1], image resolution
    scale: float = 1.0
    start: float = 0.0  # fraction of the steps where it starts acting
    end: float = 1.0  # fraction of the steps where it stops

    def active(self, fraction: float) -> bool:
        return self.scale != 0 and self.start <= fraction <= self.end


@dataclass(frozen=True)
class Guidance:
    """Everything that steers the UNet: text (with classifier-free guidance scale), ControlNets and a
    reference image (editing.reference.ImagePrompt: IP-Adapter image embeddings per guidance branch)."""

    text: TextConditioning
    scale: float
    controls: tuple[ControlSignal, ...] = ()
    negatives: tuple[torch.Tensor, ...] | None = None  # per-step unconditional embeddings (null-text inversion)
    reference: object = None  # editing.reference.ImagePrompt, or None

    def at_step(self, index: int) -> Guidance:
        """The guidance of step `index`: its own unconditional embedding when per-step ones are given."""
        if self.negatives is None or self.text.negative is None:
            return self
        text = TextConditioning(self.text.positive, self.negatives[min(index, len(self.negatives) - 1)])
        return dataclasses.replace(self, text=text, negatives=None)


@dataclass(frozen=True)
class FramePlan:
    """How a clip's frames are split into UNet calls and which frames each frame attends to."""

    mode: str
    batches: tuple[FrameBatch, ...]
    anchors: tuple[int, ...] = (0,)
    window: int = 2
    merge: float = 0.0  # token merging ratio inside self-attention (editing.attention.merge)
    context: object = None  # editing.windows.ContextWindows: the batches are overlapping windows, blended (may move per step)
    num_frames: int = 0
    step_cache: tuple = ()  # editing.stepcache specs the loop installs on the UNet (not while inverting)

    def at_step(self, index: int) -> FramePlan:
        """The plan of denoising step `index`: the same plan, or with context windows that step's windows."""
        if self.context is None or index == 0:
            return self
        return dataclasses.replace(
            self, batches=window_batches(self.num_frames, self.context, self.mode, self.window, self.anchors, index)
        )

    def with_calls(self, merge: float = 0.0, step_cache: tuple = ()) -> FramePlan:
        """This plan with token merging inside self-attention (`merge`: the ratio) and step caches on the UNet."""
        return dataclasses.replace(self, merge=merge, step_cache=step_cache)

    def layout(self, batch: FrameBatch) -> FrameLayout:
        return layout_for(self.mode, batch.ids, self.anchors, self.window, self.merge, batch.borrowed)

    def sharing_anchors(self) -> FramePlan:
        """This plan with the anchors computed once per step: the first batch keeps their self-attention
        keys and values (editing.attention.anchor) and the later batches, which no longer hold the anchors
        they do not produce, borrow them. The plan itself where that would change what any frame computes:
        one batch, a mode without cross-frame attention, or anchors whose own attention differs between
        batches or names frames other than anchors (window and full attention, a sparse-causal anchor
        after frame 0)."""
        if not self.shares_anchors():
            return self
        batches = [self.batches[0]]
        for batch in self.batches[1:]:
            borrowed = tuple(a for a in self.anchors if a not in batch.targets)
            batches.append(dataclasses.replace(batch, ids=tuple(f for f in batch.ids if f not in borrowed), borrowed=borrowed))
        return dataclasses.replace(self, batches=tuple(batches))

    def shares_anchors(self) -> bool:
        """Whether every batch holds every anchor and each anchor attends to the same anchors in every batch
        (so an anchor is computed from the same inputs wherever it is)."""
        rule = get_attention_mode(self.mode)
        anchors = set(self.anchors)
        if not rule.cross_frame or len(self.batches) < 2 or any(batch.borrowed for batch in self.batches):
            return False
        seen = None
        for batch in self.batches:
            ids = list(batch.ids)
            if not anchors <= set(ids):
                return False
            position = {frame: i for i, frame in enumerate(ids)}
            rows = rule.rows(ids, [position[a] for a in self.anchors], self.window)
            attended = {a: frozenset(ids[p] for p in rows[position[a]]) for a in self.anchors}
            if any(not row <= anchors for row in attended.values()) or seen not in (None, attended):
                return False
            seen = attended
        return True


def plan_frames(
    num_frames: int,
    chunk: int,
    mode: str = "none",
    window: int = 2,
    anchors: tuple[int, ...] = (0,),
    context: ContextWindows | None = None,
) -> FramePlan:
    """Split frames into chunks of `chunk` targets; each call also holds the context its mode needs.

    The context is the mode's registered rule (editing.attention.modes): the shared anchor frames for
    every cross-frame mode (so chunks of a long clip stay consistent with each other), the previous
    frame for `sparse-causal`, `window` neighbours on each side for `window`. Peak memory is that of
    one chunk plus its context, whatever the clip length.

    With `context` (editing.windows.ContextWindows) the calls are overlapping windows instead, each
    frame's noise the pyramid-weighted blend of its windows' (`window_batches`); `chunk` is not used.
    Token merging and step caches are set on the plan after (`FramePlan.with_calls`).
    """
    rule = get_attention_mode(mode)
    anchors = tuple(a for a in anchors if a < num_frames) or (0,)
    if context is not None:
        return FramePlan(
            mode,
            window_batches(num_frames, context, mode, window, anchors, 0),
            anchors,
            window,
            context=context,
            num_frames=num_frames,
        )
    batches = []
    for start in range(0, num_frames, chunk):
        targets = range(start, min(start + chunk, num_frames))
        context = {f for f in rule.context(targets, num_frames, anchors, window) if 0 <= f < num_frames}
        batches.append(FrameBatch(tuple(sorted(context | set(targets))), tuple(targets)))
    return FramePlan(mode, tuple(batches), anchors, window)


def window_batches(
    num_frames: int, context: ContextWindows, mode: str, window: int, anchors: tuple[int, ...], step: int
) -> tuple[FrameBatch, ...]:
    """One UNet call per context window of step `step` (editing.windows): the window's frames are its
    targets, weighted, plus the context the attention mode needs."""
    rule = get_attention_mode(mode)
    starts = window_starts(num_frames, context, step)
    length = min(context.length, num_frames)
    batches = []
    for start, weights in zip(starts, window_weights(num_frames, starts, length)):
        targets = range(start, start + length)
        extra = {f for f in rule.context(targets, num_frames, anchors, window) if 0 <= f < num_frames}
        batches.append(FrameBatch(tuple(sorted(extra | set(targets))), tuple(targets), weights=tuple(weights)))
    return tuple(batches)


@dataclass(frozen=True)
class UnetCall:
    """What one UNet call is about besides its inputs: the frames' cross-frame layout, their indices in the
    clip (None: 0 to n - 1), the share of the steps done (which ControlNets act), the attention
    control's per-call state and the anchor store's call (anchors shared across chunks)."""

    layout: FrameLayout | None = None
    frame_ids: list[int] | None = None
    fraction: float = 0.0
    control: dict | None = None
    anchor_kv: AnchorCall | None = None

    def of(self, model_input: torch.Tensor) -> UnetCall:
        """This call with its frame indices filled in for a batch of model inputs."""
        if self.frame_ids:
            return self
        return dataclasses.replace(self, frame_ids=list(range(model_input.shape[0])))


@dataclass(frozen=True)
class Branches:
    """Guidance branches stacked in one UNet batch: each branch's text embedding ((branches, tokens, width),
    broadcast over its frames) and, with a reference, its IP-Adapter image embedding ((branches, images, width))."""

    text: torch.Tensor
    image: torch.Tensor | None = None
    count: int = 1


def guided_noise(
    backbone: Backbone,
    model_input: torch.Tensor,
    timestep: torch.Tensor | float,
    guidance: Guidance,
    call: UnetCall | None = None,
) -> torch.Tensor:
    """Classifier-free guidance e_u + g (e_c - e_u) (Ho and Salimans, 2022) of a batch of model inputs,
    ControlNet residuals added to the UNet's skip connections; both branches run as one batch."""
    text, image = guidance.text, guidance.reference  # the reference's unconditional branch is zero image embeddings
    call = (call or UnetCall()).of(model_input)
    if text.negative is None:
        with torch.inference_mode():
            return branch_noise(
                backbone, model_input, timestep, Branches(text.positive, image and image.positive), guidance.controls, call
            )
    both = torch.cat([model_input, model_input])
    context = torch.cat([text.negative, text.positive])
    images = None if image is None else torch.cat([image.negative, image.positive])
    with torch.inference_mode():
        unconditional, conditional = branch_noise(
            backbone, both, timestep, Branches(context, images, 2), guidance.controls, call
        ).chunk(2)
    return unconditional + guidance.scale * (conditional - unconditional)


def fitted_noise(
    backbone: Backbone,
    model_input: torch.Tensor,
    timestep: torch.Tensor | float,
    guidance: Guidance,
    call: UnetCall | None = None,
    conditional: torch.Tensor | None = None,
) -> torch.Tensor:
    """`guided_noise` with the branches run apart, the unconditional one with gradients (null-text
    inversion fits its embedding); a given `conditional` prediction is reused."""
    text, image = guidance.text, guidance.reference
    call = (call or UnetCall()).of(model_input)
    if text.negative is None:
        return guided_noise(backbone, model_input, timestep, guidance, call)
    if conditional is None:
        with torch.no_grad():
            branch = Branches(text.positive, image and image.positive)
            conditional = branch_noise(backbone, model_input, timestep, branch, guidance.controls, call)
    branch = Branches(text.negative, image and image.negative)
    unconditional = branch_noise(backbone, model_input, timestep, branch, guidance.controls, call)
    return unconditional + guidance.scale * (conditional - unconditional)


def branch_noise(
    backbone: Backbone,
    model_input: torch.Tensor,
    timestep: torch.Tensor | float,
    branches: Branches,
    controls: tuple[ControlSignal, ...],
    call: UnetCall,
) -> torch.Tensor:
    """The UNet's noise prediction for guidance branches stacked in the batch, with the active ControlNets
    and, with a reference, each branch's IP-Adapter image embedding (as `added_cond_kwargs`; the
    ControlNets see the text only, as in diffusers' ControlNet pipelines)."""
    text, image, count = branches.text, branches.image, model_input.shape[0] // branches.count
    context = (
        text.repeat_interleave(count, dim=0) if text.shape[0] == branches.count else text.expand(model_input.shape[0], -1, -1)
    )
    residuals = controlnet_residuals(controls, model_input, timestep, context, call, branches.count)
    extra = (
        {}
        if residuals is None
        else dict(down_block_additional_residuals=residuals[0], mid_block_additional_residual=residuals[1])
    )
    if image is not None:
        extra["added_cond_kwargs"] = {"image_embeds": [image.to(model_input.dtype).repeat_interleave(count, dim=0)]}
    return run_unet(
        backbone.unet,
        model_input,
        timestep,
        branches.count,
        context,
        cross_attention_kwargs=attention_call_kwargs(call),
        **extra,
    )


def attention_call_kwargs(call: UnetCall) -> dict | None:
    """The UNet's cross_attention_kwargs: one LayerCall with the frame layout, the anchor store's call and
    any attention-control state (None when there is none of these)."""
    if call.layout is None and call.anchor_kv is None and not call.control:
        return None
    return layer_kwargs(call.layout, call.anchor_kv, **(call.control or {}))


def controlnet_residuals(
    controls: tuple[ControlSignal, ...],
    model_input: torch.Tensor,
    timestep: torch.Tensor | float,
    context: torch.Tensor,
    call: UnetCall,
    branches: int,
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """Sum of the active ControlNets' residuals for this batch, or None when none is active."""
    total = None
    for controlnet in controls:
        if not controlnet.active(call.fraction):
            continue
        images = controlnet.images[call.frame_ids].to(model_input.device, model_input.dtype).repeat(branches, 1, 1, 1)
        down, mid = controlnet.model(
            model_input,
            timestep,
            encoder_hidden_states=context,
            controlnet_cond=images,
            conditioning_scale=controlnet.scale,
            return_dict=False,
        )
        if total is None:
            total = (list(down), mid)
        else:
            total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
    return total


@dataclass(frozen=True)
class StepContext:
    """What a before-step hook (null-text inversion) sees: the step, the clip's latents (sampler space)
    and the model input, and how to predict one planned batch's noise."""

    backbone: Backbone
    scheduler: object
    plan: FramePlan
    index: int
    timestep: object
    latents: torch.Tensor
    model_input: torch.Tensor
    fraction: float
    attention_control: AttentionControl | None = None
    seed: int = 0  # the edit's seed (TokenFlow's keyframe offsets)

    def batch_noise(
        self, batch: FrameBatch, guidance: Guidance, conditional: torch.Tensor | None = None, differentiable: bool = False
    ) -> torch.Tensor:
        """Guided noise of one planned batch's frames (all of them, context included); `differentiable`: as
        `fitted_noise`, reusing a given `conditional` prediction."""
        ids = list(batch.ids)
        layout = self.plan.layout(batch) if get_attention_mode(self.plan.mode).cross_frame else None
        call = UnetCall(layout, ids, self.fraction, attention_control_call(self.attention_control, self.index, batch))
        if differentiable:
            return fitted_noise(self.backbone, self.model_input[ids], self.timestep, guidance, call, conditional)
        return guided_noise(self.backbone, self.model_input[ids], self.timestep, guidance, call)


def attention_control_call(attention_control: AttentionControl | None, index: int, batch: FrameBatch) -> dict | None:
    """The attention control's per-call state for one batch (None without a control); a batch that
    borrows anchors tells the control which (the feature bank leaves them out of what it adds)."""
    if attention_control is None:
        return None
    return attention_control.call(index, batch.ids, batch.targets, batch.borrowed)


def anchor_call(store: AnchorStore, anchors: tuple[int, ...], batch: FrameBatch) -> AnchorCall:
    """What one batch does with the anchor store: keep the anchors it holds (the first batch) or borrow the others."""
    if batch.borrowed:
        return AnchorCall(store, borrows=batch.borrowed)
    return AnchorCall(store, keeps=tuple((a, batch.ids.index(a)) for a in anchors if a in batch.ids))


def inverting(timesteps: torch.Tensor) -> bool:
    """Whether a loop over `timesteps` inverts (ascending timesteps, DDIMInverseScheduler's)."""
    return len(timesteps) > 1 and float(timesteps[0]) < float(timesteps[-1])


# before_step(context, guidance) -> the guidance to step with (or None to keep it)
BeforeStep = Callable[[StepContext, Guidance], "Guidance | None"]


@dataclass(frozen=True)
class Schedule:
    """A sampler and the timesteps it runs, in order (ascending with DDIMInverseScheduler, which inverts)."""

    scheduler: SchedulerMixin
    timesteps: torch.Tensor


@dataclass(frozen=True)
class LoopHooks:
    """What the denoising loop runs besides the UNet: the after-step callback, the before-step hook, the
    attention control, the seed of the sampler's noise and whether batches share the anchor frames."""

    callback: StepCallback | None = None
    attention_control: AttentionControl | None = None
    seed: int = 0
    before_step: BeforeStep | None = None
    share_anchors: bool = True


NO_HOOKS = LoopHooks()


def denoise(
    backbone: Backbone,
    schedule: Schedule,
    latents: torch.Tensor,
    guidance: Guidance,
    plan: FramePlan,
    hooks: LoopHooks = NO_HOOKS,
) -> torch.Tensor:
    """The one denoising loop: each step runs every planned batch through the UNet, then steps the
    scheduler once on the whole clip's latents (so multistep and stateful samplers see one step per
    timestep, however the clip is chunked).

    `latents` are variance-preserving (sqrt(a) x0 + sqrt(1 - a) eps, as DDIM inversion and SDEdit make
    them) and so is the result; sigma-space samplers (Euler) are converted in and out. With
    DDIMInverseScheduler (and ascending timesteps) the loop inverts. `callback(step_index, timestep,
    latents)` runs after each step on variance-preserving latents; it may return replacement latents
    (blending, smoothing) or raise to cancel. `before_step` may replace a step's guidance (null-text
    inversion fits its unconditional embedding there). An `attention_control` (editing.attention.control)
    installs its processors and is told each call's step and frames. A reference image in `guidance`
    (editing.reference) has its IP-Adapter installed in the UNet for the loop, under the attention processors.

    With `hooks.share_anchors` the anchor frames are computed once per step, by the first batch, and the other
    batches read their self-attention keys and values (`FramePlan.sharing_anchors`, editing.attention.anchor):
    with the plain cross-frame processor and with controls that say they can (`shares_anchors`, the feature bank).
    """
    scheduler, timesteps = schedule.scheduler, schedule.timesteps
    callback, attention_control, seed, before_step = hooks.callback, hooks.attention_control, hooks.seed, hooks.before_step
    cross_frame = get_attention_mode(plan.mode).cross_frame
    batches = plan.batches
    if hooks.share_anchors and cross_frame and (attention_control is None or attention_control.shares_anchors):
        batches = plan.sharing_anchors().batches
    sharing = batches is not plan.batches  # the anchors are computed once per step (so in every step's windows too)
    store = AnchorStore() if any(batch.borrowed for batch in batches) else None
    attention = cross_frame_attention(backbone.unet) if cross_frame else contextlib.nullcontext()
    if attention_control is not None:
        attention = attention_control.processors(backbone.unet)
    # a reference image's IP-Adapter goes in first, so the attention processors swapped in over it keep it
    adapter = contextlib.nullcontext() if guidance.reference is None else guidance.reference.installed(backbone.unet)
    generator = step_generator(scheduler, seed, latents.shape[0])
    following = [*timesteps[1:], None]
    x = latents * vp_scale(scheduler, timesteps[0]) if len(timesteps) else latents
    caches = build_step_caches(() if inverting(timesteps) else plan.step_cache)  # installed over the attention processors
    with adapter, attention, caches.installed(backbone.unet):
        for index, timestep in enumerate(timesteps):
            fraction = index / max(1, len(timesteps) - 1)
            model_input = scheduler.scale_model_input(x, timestep)
            step_guidance = guidance.at_step(index)
            if before_step is not None:
                context = StepContext(backbone, scheduler, plan, index, timestep, x, model_input, fraction, attention_control)
                step_guidance = before_step(context, step_guidance) or step_guidance
            if attention_control is not None:  # a pass of the control's own first (TokenFlow's keyframes)
                context = StepContext(
                    backbone, scheduler, plan, index, timestep, x, model_input, fraction, attention_control, seed
                )
                attention_control.begin_step(context, step_guidance)
            if plan.context is not None:  # context windows (editing.windows): this step's, their shares summed into zeros
                step_plan = plan.at_step(index)
                batches = step_plan.sharing_anchors().batches if sharing else step_plan.batches
            noise = torch.empty_like(x) if plan.context is None else torch.zeros_like(x)
            for batch in batches:
                ids = list(batch.ids)
                layout = plan.layout(batch) if cross_frame else None
                control = attention_control_call(attention_control, index, batch)
                anchor_kv = None if store is None else anchor_call(store, plan.anchors, batch)
                caches.begin_call(index, (batch.ids, batch.borrowed))
                call = UnetCall(layout, ids, fraction, control, anchor_kv)
                predicted = guided_noise(backbone, model_input[ids], timestep, step_guidance, call)
                produced = predicted[[ids.index(t) for t in batch.targets]].to(noise.dtype)
                if batch.weights is None:
                    noise[list(batch.targets)] = produced
                else:  # a context window's pyramid-weighted share of its frames' noise
                    noise[list(batch.targets)] += (
                        torch.tensor(batch.weights, dtype=noise.dtype, device=noise.device).view(-1, 1, 1, 1) * produced
                    )
            x = scheduler_step(scheduler, noise, timestep, x, generator)
            if callback is not None:
                scale = vp_scale(scheduler, following[index])
                replacement = callback(index, int(timestep), x / scale if scale != 1.0 else x)
                if replacement is not None:
                    x = replacement * scale
    return x  # the last step ends at sigma 0 (x0), where every sampler's latents are the same
