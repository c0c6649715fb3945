"""Training the shapes model: each stage learns, resuming equals not stopping, the folder loads with diffusers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from shapes_world import train as T

from .conftest import ROOT

TINY = T.TrainConfig(
    image_size=32, vae_channels=(16, 16), unet_channels=(16, 32), text_width=16, text_layers=1,
    vae_steps=6, unet_steps=6, decoder_steps=6, control_steps=6, vae_batch=4, unet_batch=4, decoder_batch=4,
    control_batch=4, vae_lr=1e-3, unet_lr=3e-3, decoder_lr=3e-3, control_lr=3e-3, warmup=1, checkpoint_every=3,
)  # fmt: skip


def fixed_batch(config, count=4):
    """A batch never seen in training, with its own generator."""
    pixels, captions, images = T.scene_batch(config, np.random.default_rng([7, 7]), count)
    return pixels, captions, images


def weights(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Components after each stage, with fixed-batch losses measured before and after it."""
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("work")
    parts = T.fresh_components(TINY)
    pixels, captions, images = fixed_batch(TINY)
    ids = T.tokenize(parts.tokenizer, captions)
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(T.scheduler_config())

    def losses():
        with torch.no_grad():
            vae = T.vae_loss(parts.vae, pixels, torch.Generator().manual_seed(0), TINY.kl_weight)
            unet = T.unet_loss(
                (parts.vae, parts.text_encoder, parts.unet, T.Objective(scheduler, TINY.offset_noise, TINY.snr_gamma)),
                pixels,
                ids,
                torch.Generator().manual_seed(0),
            )
        return float(vae), float(unet)

    record = {"vae_before": losses()[0]}
    T.train_vae(TINY, parts, work, 0)
    record["vae_after"], record["unet_before"] = losses()
    T.train_unet(TINY, parts, work, 0)
    record["unet_after"] = losses()[1]
    with torch.no_grad():
        record["decoder_before"] = float(T.decoder_loss(parts.vae, pixels, torch.Generator().manual_seed(0)))
        record["latents_before"] = parts.vae.encode(pixels).latent_dist.mean
    T.train_decoder(TINY, parts, work, 0)
    with torch.no_grad():
        record["decoder_after"] = float(T.decoder_loss(parts.vae, pixels, torch.Generator().manual_seed(0)))
        record["latents_after"] = parts.vae.encode(pixels).latent_dist.mean
    record["frozen_before"] = {name: weights(getattr(parts, name)) for name in ("vae", "text_encoder", "unet")}
    T.train_control(TINY, parts, work, 0)
    return parts, record, work


def test_vae_stage_lowers_reconstruction_loss(trained):
    _, record, _ = trained
    assert record["vae_after"] < record["vae_before"]


def test_unet_stage_lowers_noise_prediction_loss(trained):
    _, record, _ = trained
    assert record["unet_after"] < record["unet_before"]


def test_decoder_stage_sharpens_without_moving_the_latent_space(trained):
    _, record, _ = trained
    assert record["decoder_after"] < record["decoder_before"]
    assert torch.equal(record["latents_before"], record["latents_after"])


def test_control_stage_trains_only_the_controlnet(trained, tmp_path):
    parts, record, work = trained
    assert all(same_weights(before, weights(getattr(parts, name))) for name, before in record["frozen_before"].items())
    checkpoint = torch.load(work / "control.ckpt", weights_only=True)
    assert set(checkpoint["modules"]) == {"controlnet"}
    losses = checkpoint["state"]["losses"]
    assert len(losses) == TINY.control_steps
    # The zero convolutions have left zero: the ControlNet now changes the UNet's input.
    assert any(float(block.weight.abs().max()) > 0 for block in parts.controlnet.controlnet_down_blocks)


def test_latent_scaling_factor_is_derived_from_the_latents(trained):
    parts, _, _ = trained
    pixels, _, _ = T.scene_batch(TINY, np.random.default_rng([TINY.seed, 99]), 64)
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.mean * parts.vae.config.scaling_factor
    assert abs(float(latents.std()) - 1.0) < 1e-3


def test_resuming_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    config = T.TrainConfig(**{**TINY.__dict__, "vae_steps": 4, "checkpoint_every": 2})
    straight = T.fresh_components(config)
    T.train_vae(config, straight, tmp_path / "straight", 0)
    halfway = T.TrainConfig(**{**config.__dict__, "vae_steps": 2})
    T.train_vae(halfway, T.fresh_components(halfway), tmp_path / "stopped", 0)
    resumed = T.fresh_components(config)  # a new process: fresh weights, then the checkpoint
    T.train_vae(config, resumed, tmp_path / "stopped", 0)
    assert same_weights(weights(straight.vae), weights(resumed.vae))
    assert not same_weights(weights(straight.vae), weights(T.fresh_components(config).vae))


def test_saved_folder_loads_with_diffusers_and_training_continues_from_it(tmp_path):
    torch.set_num_threads(1)
    config = T.TrainConfig(**{**TINY.__dict__, "vae_steps": 2, "unet_steps": 2, "decoder_steps": 2, "control_steps": 2})
    record = T.train(config, tmp_path / "model", tmp_path / "work")
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from editing.models import clip_tokenizer

    pipe = StableDiffusionPipeline.from_pretrained(
        tmp_path / "model", tokenizer=clip_tokenizer(), safety_checker=None, feature_extractor=None
    )
    assert pipe.unet.config.cross_attention_dim == config.text_width and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.vae.config.scaling_factor == pytest.approx(record["latent_scaling_factor"])
    ControlNetModel.from_pretrained(tmp_path / "model" / "controlnet-canny")
    saved = json.loads((tmp_path / "model" / "training.json").read_text())
    assert (
        saved["stages"]["unet"]["steps"] == 2
        and saved["last_invocation"]["seed"] == config.seed
        and saved["stages"]["unet"]["batch"] == config.unet_batch
    )
    more = T.TrainConfig(**{**config.__dict__, "vae_steps": 0, "unet_steps": 1, "decoder_steps": 0, "control_steps": 0})
    again = T.train(more, tmp_path / "model2", tmp_path / "work2", init=tmp_path / "model")
    assert again["stages"]["unet"]["steps"] == 3 and again["stages"]["unet"]["steps_this_run"] == 1
    assert again["latent_scaling_factor"] == record["latent_scaling_factor"]  # the UNet keeps its latent scale


def test_offset_noise_adds_one_constant_per_sample_and_channel(trained):
    parts, _, _ = trained
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(T.scheduler_config())
    pixels, _, _ = fixed_batch(TINY)
    _, plain, _ = T.noisy_latents(parts.vae, scheduler, pixels, torch.Generator().manual_seed(3))
    _, offset, _ = T.noisy_latents(parts.vae, scheduler, pixels, torch.Generator().manual_seed(3), offset=0.5)
    shift = offset - plain
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-6)  # constant over each latent plane
    assert float(shift[..., 0, 0].abs().min()) > 0  # and a different one per sample and channel
    assert len(set(shift[..., 0, 0].flatten().tolist())) == shift.shape[0] * shift.shape[1]


def test_min_snr_weights_cap_the_signal_to_noise_ratio_and_reweight_the_loss():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(T.scheduler_config())
    timesteps = torch.tensor([0, 10, 100, 300, 700, 999])
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    weights = T.snr_weights(scheduler, timesteps, 5.0)
    assert torch.allclose(weights * snr, torch.minimum(snr, torch.tensor(5.0)))  # the weighted SNR is capped at gamma
    assert weights[0] < weights[1] < weights[2] < 1 and torch.equal(weights[3:], torch.ones(3))  # only low-noise steps shrink
    assert torch.equal(T.snr_weights(scheduler, timesteps, 0.0), torch.ones(6))

    predicted, noise = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(6, 4, 8, 8)
    assert torch.isclose(
        T.denoising_loss(predicted, noise, timesteps, scheduler, 0.0), torch.nn.functional.mse_loss(predicted, noise)
    )
    per_sample = (predicted**2).mean(dim=(1, 2, 3))
    assert torch.isclose(T.denoising_loss(predicted, noise, timesteps, scheduler, 5.0), (weights * per_sample).mean())


def test_edge_weights_mark_only_the_outlines_of_objects():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.equal(T.edge_weights(flat, 4.0), torch.ones(1, 1, 16, 16))
    square = flat.clone()
    square[:, 0, 5:11, 5:11] = -0.8
    weights = T.edge_weights(square, 4.0)
    outline = torch.zeros(16, 16, dtype=torch.bool)
    outline[3:13, 3:13] = True
    outline[7:9, 7:9] = False  # two pixels or more inside the square's edge: not an outline
    outline[[3, 3, 12, 12], [3, 12, 3, 12]] = False  # diagonal to the square's corners: two pixels from any edge pixel
    assert set(weights.unique().tolist()) == {1.0, 5.0}
    assert torch.equal(weights[0, 0] > 1, outline)


def test_averaged_stage_ends_with_the_moving_average_of_its_weights(tmp_path):
    torch.manual_seed(0)
    config = T.TrainConfig(**{**TINY.__dict__, "unet_steps": 5, "ema_decay": 0.6, "checkpoint_every": 100})
    layer = torch.nn.Linear(3, 2)
    trajectory = []

    def loss(step):
        trajectory.append([p.detach().clone() for p in layer.parameters()])  # the weights before this step
        return (layer(torch.ones(4, 3) * (step + 1)) ** 2).mean()

    T.run_stage(config, "unet", tmp_path, {"layer": layer}, loss, 0.1, average=True)
    raw = torch.load(tmp_path / "unet.ckpt", weights_only=True)["modules"]["layer"]
    trajectory.append([raw["weight"], raw["bias"]])
    average = trajectory[0]
    for k, weights_after in enumerate(trajectory[1:]):
        rate = 1 - min(0.6, (1 + k) / (10 + k))
        average = [a + rate * (w - a) for a, w in zip(average, weights_after)]
    assert all(torch.allclose(p, a, atol=1e-6) for p, a in zip(layer.parameters(), average))
    assert not torch.allclose(layer.weight, raw["weight"])  # the average, not the last step's weights


def test_vae_from_takes_a_decoder_trained_alongside_and_refuses_another_encoder(tmp_path):
    torch.set_num_threads(1)
    base = T.TrainConfig(**{**TINY.__dict__, "vae_steps": 2, "unet_steps": 0, "decoder_steps": 0, "control_steps": 0})
    T.train(base, tmp_path / "vae", tmp_path / "w0")
    unet_only = T.TrainConfig(**{**base.__dict__, "vae_steps": 0, "unet_steps": 2})
    T.train(unet_only, tmp_path / "unet", tmp_path / "w1", init=tmp_path / "vae")
    decoder_only = T.TrainConfig(**{**base.__dict__, "vae_steps": 0, "decoder_steps": 2})
    T.train(decoder_only, tmp_path / "decoder", tmp_path / "w2", init=tmp_path / "vae")
    finish = T.TrainConfig(**{**base.__dict__, "vae_steps": 0, "control_steps": 2})
    record = T.train(finish, tmp_path / "model", tmp_path / "w3", init=tmp_path / "unet", vae_from=tmp_path / "decoder")
    assert (
        record["stages"]["unet"]["steps"] == 2
        and record["stages"]["decoder"]["steps"] == 2
        and record["stages"]["vae"]["steps"] == 2
    )
    from diffusers import AutoencoderKL, UNet2DConditionModel

    assert not (tmp_path / "vae" / "controlnet-canny").exists()  # no ControlNet from an untrained UNet
    assert (tmp_path / "model" / "controlnet-canny").is_dir()
    saved, sharpened = (AutoencoderKL.from_pretrained(tmp_path / d / "vae") for d in ("model", "decoder"))
    assert same_weights(saved.state_dict(), sharpened.state_dict())
    assert same_weights(
        UNet2DConditionModel.from_pretrained(tmp_path / "model" / "unet").state_dict(),
        UNet2DConditionModel.from_pretrained(tmp_path / "unet" / "unet").state_dict(),
    )
    other = T.TrainConfig(**{**base.__dict__, "seed": 1})
    T.train(other, tmp_path / "other", tmp_path / "w4")
    with pytest.raises(T.EditingError, match="encoder"):
        T.train(finish, tmp_path / "bad", tmp_path / "w5", init=tmp_path / "unet", vae_from=tmp_path / "other")


def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shapes_world.train", "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--init", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and "not a saved shapes model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"snr_gamma": -1.0}, "Min-SNR"),
        ({"offset_noise": -0.1}, "offset noise"),
        ({"ema_decay": 1.0}, "EMA"),
        ({"unet_batch": 0}, "batch"),
        ({"image_size": 31}, "divisible"),
    ],
)
def test_a_bad_training_setting_is_refused_with_its_reason(change, message):
    with pytest.raises(ValueError, match=message):
        T.TrainConfig(**{**TINY.__dict__, **change})
