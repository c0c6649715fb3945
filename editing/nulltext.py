"""Null-text inversion (Mokady et al., 2022): per-step unconditional embeddings that make guided DDIM
sampling retrace the DDIM inversion trajectory.

For each sampling step t (from the inverted latent z_T down), starting from the previous step's
embedding, Adam minimises || z_{t-1}^inv - DDIM(z_t, e_u(o_t) + g (e_c - e_u(o_t))) ||^2 over the
unconditional embedding o_t (eq. 3 of the paper), with early stop; z_t then advances with the optimised
o_t. One embedding is shared by all frames of the clip (as in Video-P2P); chunks accumulate gradients.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

from .attention.cross_frame import cross_frame_attention
from .inversion import Trajectory
from .models import Backbone
from .sampling import FramePlan, attention_call_kwargs, sampling_timesteps

log = logging.getLogger(__name__)


def guided_step(backbone: Backbone, scheduler, latents, timestep, positive, negative, scale, layout, conditional=None):
    """One guided DDIM step x_t -> x_{t-1} of a batch (differentiable in `negative`)."""
    count = latents.shape[0]
    kwargs = attention_call_kwargs(layout, None)
    model_input = scheduler.scale_model_input(latents, timestep)
    if conditional is None:
        with torch.no_grad():
            conditional = backbone.unet(model_input, timestep, encoder_hidden_states=positive.expand(count, -1, -1), cross_attention_kwargs=kwargs).sample
    unconditional = backbone.unet(model_input, timestep, encoder_hidden_states=negative.expand(count, -1, -1), cross_attention_kwargs=kwargs).sample
    noise = unconditional + scale * (conditional - unconditional)
    return scheduler.step(noise, timestep, latents).prev_sample, conditional


def null_text_invert(
    backbone: Backbone,
    trajectory: Trajectory,
    positive: torch.Tensor,
    negative: torch.Tensor,
    scale: float,
    steps: int,
    strength: float,
    plan: FramePlan,
    iterations: int = 10,
    learning_rate: float = 1e-2,
    tolerance: float = 1e-5,
    progress=None,
) -> tuple[torch.Tensor, ...]:
    """Per-sampling-step unconditional embeddings (each (1, 77, width)) fitted to the trajectory."""
    scheduler = backbone.scheduler()
    timesteps = sampling_timesteps(scheduler, steps, strength)
    count = len(timesteps)
    if count != len(trajectory.timesteps):
        raise ValueError(f"the trajectory has {len(trajectory.timesteps)} steps, sampling {count}")
    attention = cross_frame_attention(backbone.unet) if plan.mode != "none" else contextlib.nullcontext()
    latents = trajectory.final.to(backbone.device, backbone.dtype)
    embedding = negative.detach().clone()
    embeddings = []
    with attention, torch.inference_mode(False):
        for index, timestep in enumerate(timesteps):
            target = trajectory.states[count - 1 - index].to(latents)
            embedding = embedding.detach().clone().requires_grad_(True)
            optimizer = torch.optim.Adam([embedding], lr=learning_rate * (1.0 - index / (count + 10)))
            conditionals = {}
            for _ in range(iterations):
                optimizer.zero_grad()
                total = 0.0
                for number, batch in enumerate(plan.batches):
                    ids, positions = list(batch.ids), [list(batch.ids).index(t) for t in batch.targets]
                    layout = plan.layout(batch) if plan.mode != "none" else None
                    stepped, conditionals[number] = guided_step(backbone, scheduler, latents[ids], timestep, positive, embedding, scale, layout, conditionals.get(number))
                    loss = F.mse_loss(stepped[positions], target[list(batch.targets)], reduction="sum") / target.numel()
                    loss.backward()
                    total += loss.item()
                optimizer.step()
                if total < tolerance:
                    break
            embedding = embedding.detach()
            embeddings.append(embedding.clone())
            with torch.no_grad():
                stepped = latents.clone()
                for number, batch in enumerate(plan.batches):
                    ids, positions = list(batch.ids), [list(batch.ids).index(t) for t in batch.targets]
                    layout = plan.layout(batch) if plan.mode != "none" else None
                    result, _ = guided_step(backbone, scheduler, latents[ids], timestep, positive, embedding, scale, layout, conditionals.get(number))
                    stepped[list(batch.targets)] = result[positions]
                latents = stepped
            log.debug("null-text step %d: loss %.3g", index, total)
            if progress is not None:
                progress(index + 1, count)
    return tuple(embeddings)
