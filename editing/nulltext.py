"""Null-text inversion (Mokady et al., 2022): per-step unconditional embeddings that make guided DDIM
sampling retrace the DDIM inversion trajectory.

It runs through the one denoising loop (`sampling.denoise`) as a before-step hook: at sampling step t
(from the inverted latent z_T down), starting from the previous step's embedding, Adam minimises
|| z_{t-1}^inv - DDIM(z_t, e_u(o_t) + g (e_c - e_u(o_t))) ||^2 over the unconditional embedding o_t
(eq. 3 of the paper), with early stop; the loop then steps with the optimised o_t. The noise
predictions are the loop's own, ControlNet residuals of the request included, so the embeddings are
fitted to the model that samples. One embedding is shared by all frames of the clip (as in Video-P2P);
chunks accumulate gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import sampling
from .inversion import Trajectory
from .models import Backbone

log = logging.getLogger(__name__)


@dataclass
class NullTextFit:
    """The before-step hook: fits step k's unconditional embedding to the inversion's state z_{t-1}."""

    trajectory: Trajectory
    iterations: int = 10
    learning_rate: float = 1e-2
    tolerance: float = 1e-5
    progress: Callable[[int, int], None] | None = None  # progress(steps fitted, steps)
    embeddings: list[torch.Tensor] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def __call__(self, step: sampling.StepContext, guidance: sampling.Guidance) -> sampling.Guidance:
        count = len(self.trajectory.timesteps)
        index = step.index
        target = self.trajectory.states[count - 1 - index].to(step.latents)
        start = (self.embeddings[-1] if self.embeddings else guidance.text.negative).detach().clone()
        embedding = start.requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=self.learning_rate * (1.0 - index / (count + 10)))
        conditionals: dict[int, torch.Tensor] = {}  # e_c of each batch: it does not depend on the embedding
        positive = sampling.Guidance(sampling.TextConditioning(guidance.text.positive, None), 1.0, guidance.controls)
        total = float("nan")
        with torch.inference_mode(False), torch.enable_grad():
            for _ in range(self.iterations):
                optimizer.zero_grad()
                total = 0.0
                trial = sampling.Guidance(
                    sampling.TextConditioning(guidance.text.positive, embedding), guidance.scale, guidance.controls
                )
                for number, batch in enumerate(step.plan.batches):
                    ids = list(batch.ids)
                    if number not in conditionals:
                        with torch.no_grad():
                            conditionals[number] = step.batch_noise(batch, positive)
                    noise = step.batch_noise(batch, trial, conditional=conditionals[number], differentiable=True)
                    positions = [ids.index(t) for t in batch.targets]
                    stepped = step.scheduler.step(noise[positions], step.timestep, step.latents[list(batch.targets)]).prev_sample
                    loss = F.mse_loss(stepped, target[list(batch.targets)], reduction="sum") / target.numel()
                    loss.backward()
                    total += loss.item()
                optimizer.step()
                if total < self.tolerance:
                    break
        fitted = embedding.detach()
        self.embeddings.append(fitted.clone())
        self.losses.append(total)
        log.debug("null-text step %d: loss %.3g", index, total)
        if self.progress is not None:
            self.progress(index + 1, count)
        return sampling.Guidance(sampling.TextConditioning(guidance.text.positive, fitted), guidance.scale, guidance.controls)


def null_text_invert(
    backbone: Backbone,
    fit: NullTextFit,
    guidance: sampling.Guidance,
    steps: int,
    strength: float,
    plan: sampling.FramePlan,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Per-sampling-step unconditional embeddings (each (1, 77, width)) fitted (`fit`: to its trajectory,
    with its iterations, learning rate and tolerance), and the clip the guided DDIM loop reconstructs with
    them. `guidance` holds the source prompt, its plain negative (the starting point), the scale and the
    request's ControlNets."""
    trajectory = fit.trajectory
    scheduler = backbone.scheduler("ddim")
    timesteps = sampling.sampling_timesteps(scheduler, steps, strength)
    if len(timesteps) != len(trajectory.timesteps):
        raise ValueError(f"the trajectory has {len(trajectory.timesteps)} steps, sampling {len(timesteps)}")
    start = trajectory.final.to(backbone.device, backbone.dtype)
    reconstruction = sampling.denoise(
        backbone, sampling.Schedule(scheduler, timesteps), start, guidance, plan, sampling.LoopHooks(before_step=fit)
    )
    return tuple(fit.embeddings), reconstruction
