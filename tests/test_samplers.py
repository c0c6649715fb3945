"""Samplers as components: every registered sampler runs through the one loop; the scheduler steps once
per timestep on the whole clip, so a stateful sampler gives the same frames chunked as unchunked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from editing import sampling
from editing.config import EditConfig
from editing.errors import ConfigError
from editing.samplers import SAMPLERS, get_sampler, sampler_names

from .conftest import ASSETS

BUILT_IN = ("ddim", "dpm-solver++", "euler", "euler-ancestral", "lcm", "tcd")


def _start(tiny, frames=4):
    generator = torch.Generator().manual_seed(0)
    return torch.randn((frames, tiny.latent_channels, 8, 8), generator=generator)


def _sample(tiny, name, latents, chunk, steps=4, mode="first", strength=1.0):
    text = sampling.encode_text(tiny, "a red car", "", guided=True)
    scheduler = tiny.scheduler(name)
    timesteps = sampling.sampling_timesteps(scheduler, steps, strength)
    plan = sampling.plan_frames(latents.shape[0], chunk, mode)
    return sampling.denoise(
        tiny, sampling.Schedule(scheduler, timesteps), latents, sampling.Guidance(text, 3.0), plan, sampling.LoopHooks(seed=7)
    )


def test_the_six_samplers_are_registered():
    assert set(BUILT_IN) <= set(sampler_names())


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_sampler_runs_through_the_one_loop_on_ddim_timesteps(tiny, name):
    scheduler = tiny.scheduler(name)
    timesteps = sampling.sampling_timesteps(scheduler, 4, 1.0)
    reference = sampling.sampling_timesteps(tiny.scheduler("ddim"), 4, 1.0)
    assert [int(t) for t in timesteps] == [int(t) for t in reference]  # inversion's timeline, so an inverted clip samples back
    out = _sample(tiny, name, _start(tiny), chunk=4)
    assert out.shape == (4, tiny.latent_channels, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["dpm-solver++", "euler", "euler-ancestral", "lcm"])
def test_stateful_sampler_chunked_equals_unchunked(tiny, name):
    """`first` attention does not depend on the chunking (every chunk holds the anchor frame)."""
    latents = _start(tiny, frames=4)
    whole = _sample(tiny, name, latents, chunk=4)
    chunked = _sample(tiny, name, latents, chunk=2)
    assert torch.allclose(whole, chunked, atol=1e-4), (whole - chunked).abs().max()


@pytest.mark.parametrize("name", ["euler", "dpm-solver++"])
def test_stepping_each_chunk_separately_would_break_a_stateful_sampler(tiny, name):
    """Control for the test above: the old loop's per-chunk scheduler.step advances the sampler's step
    index once per chunk, so a two-chunk clip runs off the end of its schedule (Euler) or mixes chunks
    of different sizes in its history (DPM-Solver): never the unchunked result."""
    latents = _start(tiny, frames=4)
    text = sampling.encode_text(tiny, "a red car", "", guided=True)
    guidance = sampling.Guidance(text, 3.0)
    scheduler = tiny.scheduler(name)
    timesteps = sampling.sampling_timesteps(scheduler, 4, 1.0)
    plan = sampling.plan_frames(4, 2, "first")
    x = latents.clone() * sampling.vp_scale(scheduler, timesteps[0])
    try:
        with sampling.cross_frame_attention(tiny.unet):
            for t in timesteps:
                stepped = x.clone()
                for batch in plan.batches:
                    ids = list(batch.ids)
                    noise = sampling.guided_noise(
                        tiny, scheduler.scale_model_input(x[ids], t), t, guidance, sampling.UnetCall(plan.layout(batch), ids)
                    )
                    result = scheduler.step(noise, t, x[ids]).prev_sample
                    stepped[list(batch.targets)] = result[[ids.index(f) for f in batch.targets]]
                x = stepped
    except (IndexError, RuntimeError):
        return  # broke outright
    assert not torch.allclose(x, _sample(tiny, name, latents, chunk=4), atol=1e-3)


def test_strength_starts_every_sampler_part_way(tiny):
    for name in BUILT_IN:
        scheduler = tiny.scheduler(name)
        assert len(sampling.sampling_timesteps(scheduler, 10, 0.5)) == 5


def test_euler_from_an_inverted_clip_matches_ddim(tiny):
    """DDIM (eta 0) is Euler's method on the probability-flow ODE in sigma space, so on one timeline the
    two samplers started from the same DDIM-inverted latents agree: the loop converts the
    variance-preserving latents into Euler's x0 + sigma eps and back. Without the conversion they do not."""
    from editing.config import FrameSelection
    from editing.inversion import ddim_invert, inverse_schedule
    from editing.video_io import read_clip

    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=2, stride=4, size=64))
    clean = sampling.encode_frames(tiny, clip.frames, 2)
    text = sampling.encode_text(tiny, "", "", guided=False)
    plan = sampling.plan_frames(2, 2, "first")
    trajectory = ddim_invert(tiny, clean, inverse_schedule(tiny, 10, 1.0), text, plan)
    out = {}
    for name in ("ddim", "euler"):
        scheduler = tiny.scheduler(name)
        timesteps = sampling.sampling_timesteps(scheduler, 10, 1.0)
        out[name] = sampling.denoise(
            tiny, sampling.Schedule(scheduler, timesteps), trajectory.final, sampling.Guidance(text, 1.0), plan
        )
    gap = (out["euler"] - out["ddim"]).abs().max().item()
    scheduler = tiny.scheduler("euler")
    timesteps = sampling.sampling_timesteps(scheduler, 10, 1.0)
    unconverted = sampling.denoise(
        tiny,
        sampling.Schedule(scheduler, timesteps),
        trajectory.final / sampling.vp_scale(scheduler, timesteps[0]),
        sampling.Guidance(text, 1.0),
        plan,
    )
    assert gap < 0.1 * (unconverted - out["ddim"]).abs().max().item(), gap


def test_unknown_sampler_is_refused_in_one_sentence():
    with pytest.raises(ConfigError) as caught:
        EditConfig(prompt="a car", sampler="heun-3000")
    message = str(caught.value)
    assert message.startswith("sampler must be one of ddim") and "heun-3000" in message and "\n" not in message
    with pytest.raises(ConfigError, match="sampler must be one of"):
        get_sampler("heun-3000")


def test_unknown_sampler_through_the_cli_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "editing",
            "edit",
            str(ASSETS / "car-turn.mp4"),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.mp4"),
            "--model",
            "tiny",
            "--sampler",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # one usage line, one error line naming the option, where --help is
    error = next(line for line in lines if line.startswith("error:"))
    assert "Traceback" not in result.stderr and "--sampler" in error and "nope" in error, result.stderr


def test_a_sampler_registered_by_a_test_is_accepted(tiny):
    from editing.samplers import Sampler, register_sampler

    register_sampler(Sampler("test-ddim-again", "DDIMScheduler"))
    try:
        assert EditConfig(prompt="x", sampler="test-ddim-again").sampler == "test-ddim-again"
        out = _sample(tiny, "test-ddim-again", _start(tiny, 2), chunk=2, steps=2)
        assert torch.allclose(out, _sample(tiny, "ddim", _start(tiny, 2), chunk=2, steps=2))
        with pytest.raises(ValueError, match="already registered"):
            register_sampler(Sampler("ddim", "DDIMScheduler"))
    finally:
        SAMPLERS.pop("test-ddim-again", None)
