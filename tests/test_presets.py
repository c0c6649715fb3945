"""The tiny autoencoder (a random AutoencoderTiny from a config) through the same encode/decode stages,
previews that decode only the frames they show, and the speed presets: defaults that explicit options
override, 4 UNet evaluations per frame for `fast`, and a note that the random models' output means nothing."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch

from editing import sampling
from editing.errors import ConfigError, ModelLoadError
from editing.lora import model_options
from editing.models import load_backbone
from editing.presets import PRESET_ATTENTION, PRESETS, apply_preset, get_preset

FRAMES = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_vae_backbone(tiny):
    return load_backbone("tiny", device="cpu", options=model_options(vae="tiny"))


class ImageCounter:
    """Counts the images a module's forward passes see (its input's batch size), through a forward hook."""

    def __init__(self, module):
        self.images = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.images += int(args[0].shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# ---------------------------------------------------------------- the tiny autoencoder


def test_the_tiny_vae_is_an_autoencoder_tiny_that_shares_the_rest(tiny_vae_backbone):
    from diffusers import AutoencoderKL, AutoencoderTiny

    tiny = load_backbone("tiny", device="cpu")  # the cached one now (an earlier test's model may have evicted the fixture's)

    assert isinstance(tiny_vae_backbone.vae, AutoencoderTiny) and isinstance(
        tiny.vae, AutoencoderKL
    )  # the plain one keeps its VAE
    assert tiny_vae_backbone.unet is tiny.unet and tiny_vae_backbone.text_encoder is tiny.text_encoder
    assert tiny_vae_backbone.vae_scale_factor == tiny.vae_scale_factor == 8
    assert tiny_vae_backbone.name != tiny.name  # other latents, so other inversion cache keys


def test_encode_and_decode_stages_run_the_tiny_vae(tiny_vae_backbone):
    vae = tiny_vae_backbone.vae
    latents = sampling.encode_frames(tiny_vae_backbone, FRAMES, batch_size=2)
    assert latents.shape == (3, 4, 8, 12)
    with torch.inference_mode():
        direct = vae.encode(sampling.frames_to_tensor(FRAMES)).latents * vae.config.scaling_factor
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
    assert torch.allclose(latents, direct, atol=1e-5)  # AutoencoderTiny's `.latents`, not a posterior
    frames = sampling.decode_latents(tiny_vae_backbone, latents, batch_size=2)
    assert frames.shape == FRAMES.shape and frames.dtype == np.uint8
    assert np.array_equal(frames, sampling.tensor_to_frames(decoded))


def test_the_kl_vae_still_encodes_the_posterior_mean(tiny):
    latents = sampling.encode_frames(tiny, FRAMES[:1], batch_size=1)
    with torch.inference_mode():
        mean = tiny.vae.encode(sampling.frames_to_tensor(FRAMES[:1])).latent_dist.mean * tiny.vae.config.scaling_factor
    assert torch.allclose(latents, mean)


def test_the_tiny_vae_is_cheaper_than_the_kl_vae_of_the_same_backbone(tiny, tiny_vae_backbone):
    """Its share of the time: parameters as a proxy that does not depend on this shared CPU's load."""
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert count(tiny_vae_backbone.vae) < count(tiny.vae)


def test_the_tiny_vae_is_refused_for_the_shapes_model_and_offline_for_real_models():
    from types import SimpleNamespace

    from editing.models import tiny_vae

    shapes = SimpleNamespace(
        name="shapes", random_weights=False, extras={}, dtype=torch.float32, device=torch.device("cpu"), latent_channels=8
    )
    with pytest.raises(ModelLoadError, match="4-channel latents; shapes's autoencoder has 8"):
        tiny_vae(shapes)
    real = SimpleNamespace(
        name="owner/model", random_weights=False, extras={}, dtype=torch.float32, device=torch.device("cpu"), latent_channels=4
    )
    with pytest.raises(ModelLoadError) as caught:  # conftest sets HF_HUB_OFFLINE=1
        tiny_vae(real)
    assert str(caught.value).startswith("cannot reach the Hugging Face Hub to get tiny autoencoder 'madebyollin/taesd'")


# ---------------------------------------------------------------- previews decode only what they show


def test_decode_latents_decodes_only_the_asked_frames(tiny):
    latents = sampling.encode_frames(tiny, FRAMES, batch_size=3)
    with ImageCounter(tiny.vae.decoder) as some:
        one = sampling.decode_latents(tiny, latents, batch_size=3, indices=(1,))
    with ImageCounter(tiny.vae.decoder) as every:  # the control: without indices every frame is decoded
        full = sampling.decode_latents(tiny, latents, batch_size=3)
    assert (some.images, every.images) == (1, 3)
    assert np.abs(one[0].astype(int) - full[1]).max() <= 1  # the same frame (batch size changes float rounding)


def test_the_first_frame_preview_decodes_only_the_frame_it_shows(skiing, tmp_path):
    tiny = load_backbone("tiny", device="cpu")  # the one the backend will fetch from the cache
    from editing.config import EditConfig, FrameSelection
    from editing.pipeline import EditRequest
    from ui.backend import PREVIEW_FRAMES, Backend

    request = EditRequest(
        str(skiing),
        str(tmp_path / "out.mp4"),
        EditConfig(prompt="a red car", steps=1),
        FrameSelection(max_frames=8, size=64),
        model="tiny",
        device="cpu",
    )
    with ImageCounter(tiny.vae.decoder) as decoded:
        image = Backend(output_root=tmp_path).preview_first_frame(request, lambda *a: None)
    assert image.shape == (64, 64, 3) and PREVIEW_FRAMES > 1
    assert decoded.images == 1


def test_decode_frames_out_of_range_is_refused_in_one_sentence(tiny):
    from editing.core import decoded_indices

    assert decoded_indices(None, 3) is None and decoded_indices((0, 2), 3) == (0, 2)
    with pytest.raises(ConfigError, match="decode_frames must name frames 0 to 2"):
        decoded_indices((3,), 3)


# ---------------------------------------------------------------- presets


def _parse(*argv: str) -> argparse.Namespace:
    from editing.cli import build_parser
    from editing.requests import explicit_options

    parser = build_parser()
    full = ["edit", "clip.mp4", "--prompt", "x", "--out", "o.mp4", *argv]
    args = parser.parse_args(full)
    args.given_options = explicit_options("edit", full[1:])
    return args


def _apply(args: argparse.Namespace) -> argparse.Namespace:
    from editing.requests import defaults

    return argparse.Namespace(**apply_preset(vars(args), defaults("edit")))


def test_presets_are_registered_with_their_samplers_and_one_attention_setting():
    assert {"fast", "tcd", "hyper-sd-1", "hyper-sd-2", "hyper-sd-4", "hyper-sd-8"} <= set(PRESETS)
    assert (get_preset("fast").lora, get_preset("fast").sampler) == ("latent-consistency/lcm-lora-sdv1-5", "lcm")
    assert (get_preset("tcd").lora, get_preset("tcd").sampler) == ("h1t/TCD-SD15-LoRA", "tcd")
    assert get_preset("hyper-sd-4").lora == "ByteDance/Hyper-SD/Hyper-SD15-4steps-lora.safetensors"
    assert all(p.attention == PRESET_ATTENTION for p in PRESETS.values())
    assert all(p.steps_run <= 4 for p in (get_preset("fast"), get_preset("tcd"), get_preset("hyper-sd-4")))


def test_a_preset_sets_defaults_that_explicit_options_override():
    from editing.cli import edit_request

    fast = _apply(_parse("--preset", "fast", "--model", "tiny"))
    assert (fast.sampler, fast.steps, fast.strength, fast.guidance, fast.inversion, fast.vae) == (
        "lcm",
        8,
        0.5,
        1.0,
        "none",
        "tiny",
    )
    assert fast.lora == ["random:1"] and fast.lora_fuse  # the built-in random model gets the random LoRA
    real = _apply(_parse("--preset", "fast", "--model", "owner/model"))
    assert real.lora == ["latent-consistency/lcm-lora-sdv1-5:1"]
    mine = _apply(_parse("--preset", "fast", "--model", "tiny", "--steps", "20", "--strength", "0.8", "--vae", "model"))
    assert (mine.steps, mine.strength, mine.vae, mine.sampler) == (20, 0.8, "model", "lcm")
    # an explicit value equal to the default still wins (the CLI records what was given)
    same = _apply(_parse("--preset", "fast", "--model", "tiny", "--steps", "20"))
    assert same.steps == 20
    request = edit_request(_parse("--preset", "fast", "--model", "tiny", "--size", "64"))
    assert request.edit.sampler == "lcm" and request.model_options.vae == "tiny" and request.engine.inversion == "none"


def test_without_a_record_of_given_options_values_off_the_default_count_as_given():
    args = _parse("--preset", "fast", "--model", "tiny", "--steps", "3")
    del args.given_options  # as from the app's form or an eval spec
    resolved = _apply(args)
    assert resolved.steps == 3 and resolved.sampler == "lcm"


def test_preset_timelines():
    """fast: the last 4 of 8 DDIM steps; hyper-sd-4: the trailing schedule's last 4 of 8."""
    from editing.models import SD1_SCHEDULER
    from editing.samplers import make_scheduler

    for name, expected in (("fast", [376, 251, 126, 1]), ("tcd", [376, 251, 126, 1]), ("hyper-sd-4", [499, 374, 249, 124])):
        preset = get_preset(name)
        scheduler = make_scheduler(preset.sampler, SD1_SCHEDULER)
        assert [int(t) for t in sampling.sampling_timesteps(scheduler, preset.steps, preset.strength)] == expected, name


def test_the_shapes_model_without_its_own_lora_and_trailing_ddim_after_an_inversion_are_refused():
    from editing.cli import edit_request

    with pytest.raises(ConfigError, match="shapes model has no distilled LoRA for it"):
        _apply(_parse("--preset", "hyper-sd-4", "--model", "shapes"))
    with pytest.raises(ConfigError, match="use --inversion none"):
        edit_request(_parse("--preset", "hyper-sd-4", "--model", "tiny", "--inversion", "ddim"))


def test_the_fast_preset_runs_four_unet_evaluations_per_frame_and_notes_its_output_means_nothing(skiing, tmp_path):
    from editing.cli import edit_request
    from editing.pipeline import edit_video

    fast = edit_request(_parse("--preset", "fast", "--model", "tiny", "--device", "cpu", "--size", "64", "--frames", "3"))
    fast = dataclasses.replace(fast, video=str(skiing), output=str(tmp_path / "fast.zip"))
    backbone = load_backbone("tiny", device="cpu", options=fast.model_options)
    with ImageCounter(backbone.unet) as evaluations:
        result = edit_video(fast, lambda *a: None)
    assert result.frames == 3 and evaluations.images == 4 * 3
    assert any("means nothing" in note for note in result.notes) and "lora=random" in result.model and "vae=tiny" in result.model
    default = edit_request(
        _parse("--model", "tiny", "--device", "cpu", "--size", "64", "--frames", "3", "--steps", "4", "--keyframes", "off")
    )
    default = dataclasses.replace(default, video=str(skiing), output=str(tmp_path / "default.zip"))
    with ImageCounter(
        load_backbone("tiny", device="cpu").unet
    ) as control:  # the control: DDIM inversion plus guided steps on every frame
        edit_video(default, lambda *a: None)
    assert control.images == (4 + 2 * 4) * 3


def test_the_cli_prints_the_presets_note(skiing, tmp_path):
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "editing",
            "edit",
            str(skiing),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.zip"),
            "--model",
            "tiny",
            "--frames",
            "2",
            "--size",
            "64",
            "--preset",
            "fast",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "preset fast on the built-in random model 'tiny'" in run.stderr and "means nothing" in run.stderr


def test_the_fast_preset_propagates_keyframes_without_re_diffusing_unless_asked(skiing, tmp_path):
    """With --keyframes a preset runs the keyframes alone (its refine share is 0: the default share of its
    8-step schedule is the step at t = 1, too little noise to change anything); --keyframe-refine still
    re-diffuses what no keyframe sees."""
    from editing.cli import edit_request
    from editing.pipeline import edit_video

    common = ("--preset", "fast", "--model", "tiny", "--device", "cpu", "--size", "64", "--frames", "6", "--keyframes", "4")
    assert _apply(_parse(*common)).keyframe_refine == 0.0
    assert _apply(_parse(*common, "--keyframe-refine", "0.25")).keyframe_refine == 0.25
    counts = {}
    for name, extra in (("off", ()), ("on", ("--keyframe-refine", "0.25"))):
        request = dataclasses.replace(
            edit_request(_parse(*common, *extra)), video=str(skiing), output=str(tmp_path / f"{name}.zip")
        )
        backbone = load_backbone("tiny", device="cpu", options=request.model_options)
        with ImageCounter(backbone.unet) as evaluations:
            result = edit_video(request, lambda *a: None)
        assert result.frames == 6
        counts[name] = evaluations.images
    assert counts["off"] == 4 * 2  # keyframes 0 and 4, 4 steps each, guidance 1
    assert counts["on"] > counts["off"]  # the skiing clip's camera moves: every propagated frame has unseen pixels


def test_the_fast_preset_on_the_shapes_model_loads_its_shipped_lcm_lora_and_keeps_its_autoencoder():
    """`--preset fast --model shapes` finds editing/assets/shapes-lcm-lora by name, with the model's own
    autoencoder; the fused LoRA changes the UNet's weights."""
    from editing.cli import edit_request
    from editing.presets import shapes_lora

    assert shapes_lora(get_preset("fast")) is not None and shapes_lora(get_preset("hyper-sd-4")) is None
    resolved = _apply(_parse("--preset", "fast", "--model", "shapes"))
    assert resolved.lora == ["shapes-lcm-lora:1"] and resolved.vae == "model" and resolved.sampler == "lcm"
    request = edit_request(_parse("--preset", "fast", "--model", "shapes", "--device", "cpu", "--size", "64", "--frames", "2"))
    plain = load_backbone("shapes", device="cpu")
    fast = load_backbone("shapes", device="cpu", options=request.model_options)
    assert "lora=shapes-lcm-lora" in fast.name and not fast.random_weights
    latents = torch.randn(1, plain.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 77, plain.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = [b.unet(latents, 500, encoder_hidden_states=text).sample for b in (plain, fast)]
    assert not torch.equal(*outputs)  # the fused LoRA moved the weights
