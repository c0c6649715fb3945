"""The fp16 autoencoder path (editing.autoencoder), run in fp16 on the CPU: it matches fp32 within a stated
tolerance, honours `force_upcast`, and falls back to fp32 for a batch that overflows fp16.

The product refuses fp16 on the CPU (models.pick_dtype); these tests build fp16 autoencoders by hand, which
torch's CPU kernels run."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch

from editing import autoencoder, sampling
from editing.models import _placed, load_backbone

from .conftest import ASSETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# fp16 against fp32, measured on two frames at 64 px: latents differ by <= 1e-3 of their largest value,
# decoded frames by <= 2 levels of 255 (tiny: random weights; shapes: trained).
LATENT_TOLERANCE = 0.005  # of the largest latent value
FRAME_LEVELS = 3  # of 255, for any pixel
FRAME_MEAN_LEVELS = 0.5


def _frames(path, count: int = 2, size: int = 64) -> np.ndarray:
    from editing.config import FrameSelection
    from editing.video_io import read_clip

    return read_clip(str(path), FrameSelection(max_frames=count, size=size)).frames


def _fp16(backbone, force_upcast: bool):
    """`backbone` with an fp16 copy of its autoencoder (the UNet and text encoder are not used here)."""
    vae = copy.deepcopy(backbone.vae).half()
    inherited = [k for k in vae.config.get("_use_default_values", ()) if k != "force_upcast"]
    vae.register_to_config(force_upcast=force_upcast, _use_default_values=inherited)  # as if its config set it
    return dataclasses.replace(backbone, vae=vae, dtype=torch.float16)


def _record_dtypes(vae, seen: list):
    """Record the dtype the decoder and encoder run in, on `vae` and on its fp32 copy."""
    hook = lambda module, inputs: seen.append(inputs[0].dtype)  # noqa: E731
    for model in {id(m): m for m in (vae, autoencoder.fp32_copy(vae))}.values():
        model.decoder.conv_in.register_forward_pre_hook(hook)
        model.encoder.conv_in.register_forward_pre_hook(hook)


@pytest.mark.parametrize("model, clip", [("tiny", "car-turn.mp4"), ("shapes", "shapes-clip1.mp4")])
def test_the_fp16_path_matches_fp32_within_tolerance(model, clip):
    base = load_backbone(model, device="cpu")
    half = _fp16(base, force_upcast=False)
    seen = []
    _record_dtypes(half.vae, seen)
    frames = _frames(ASSETS / clip)
    latents = sampling.encode_frames(base, frames, 2)
    latents16 = sampling.encode_frames(half, frames, 2)
    decoded = sampling.decode_latents(base, latents, 2).astype(int)
    decoded16 = sampling.decode_latents(half, latents.half(), 2).astype(int)
    assert seen and set(seen) == {torch.float16}  # ran in fp16, not upcast
    assert latents16.dtype == torch.float16
    assert float((latents16.float() - latents).abs().max()) <= LATENT_TOLERANCE * float(latents.abs().max())
    assert np.abs(decoded16 - decoded).max() <= FRAME_LEVELS
    assert np.abs(decoded16 - decoded).mean() <= FRAME_MEAN_LEVELS


def test_force_upcast_runs_the_autoencoder_in_fp32(tiny):
    assert tiny.vae.config.force_upcast  # AutoencoderKL's default, inherited: SD-1.5's config predates the flag
    inherited = dataclasses.replace(tiny, vae=copy.deepcopy(tiny.vae).half(), dtype=torch.float16)
    assert not autoencoder.needs_upcast(inherited.vae, torch.float16)  # runs in fp16, as diffusers' SD pipeline does
    flagged, unflagged = _fp16(tiny, force_upcast=True), _fp16(tiny, force_upcast=False)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    for backbone, expected in ((flagged, torch.float32), (unflagged, torch.float16)):
        seen = []
        _record_dtypes(backbone.vae, seen)
        sampling.decode_latents(backbone, latents, 1)
        sampling.encode_frames(backbone, _frames(ASSETS / "car-turn.mp4")[:1], 1)
        assert seen and set(seen) == {expected}
    assert flagged.vae.dtype == torch.float16  # the fp32 copy runs; the shared module is never cast
    assert autoencoder.placed_dtype(tiny.vae, torch.bfloat16) == torch.bfloat16  # bf16 has fp32's range


def test_a_model_in_fp16_places_a_flagged_autoencoder_in_fp32(tiny):
    parts = {name: copy.deepcopy(getattr(tiny, name)) for name in ("text_encoder", "vae", "unet")}
    assert _placed(dataclasses.replace(tiny, dtype=torch.float16, **parts)).vae.dtype == torch.float16  # flag inherited
    parts["vae"] = _fp16(tiny, force_upcast=True).vae.float()
    placed = _placed(dataclasses.replace(tiny, dtype=torch.float16, **parts))
    assert placed.unet.dtype == placed.text_encoder.dtype == torch.float16
    assert placed.vae.dtype == torch.float32
    parts["vae"].register_to_config(force_upcast=False)
    assert _placed(dataclasses.replace(tiny, dtype=torch.float16, **parts)).vae.dtype == torch.float16


def test_an_overflowing_fp16_batch_is_run_again_in_fp32(tiny, caplog):
    overflowing = copy.deepcopy(tiny.vae)
    with torch.no_grad():  # two offsets that fp16 holds add up past its largest value (65504); fp32 norms them away
        for coder in (overflowing.decoder, overflowing.encoder):
            for resnet in coder.mid_block.resnets:
                resnet.conv2.bias.add_(4e4)
    half = _fp16(dataclasses.replace(tiny, vae=overflowing), force_upcast=False)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert not torch.isfinite(half.vae.decode(latents).sample).all()  # plain fp16 overflows
        assert not torch.isfinite(half.vae.encode(images.half()).latent_dist.mean).all()
    with caplog.at_level(logging.WARNING, logger="editing.autoencoder"):
        decoded = autoencoder.decode(half.vae, latents)
        encoded = autoencoder.encode(half.vae, images)
    assert decoded.dtype == encoded.dtype == torch.float32
    assert torch.isfinite(decoded).all() and torch.isfinite(encoded).all()
    reference = autoencoder.fp32_copy(half.vae)
    with torch.no_grad():
        torch.testing.assert_close(decoded, reference.decode(latents.float()).sample)
    assert len([r for r in caplog.records if "non-finite" in r.message]) == 2
    frames = sampling.decode_latents(half, latents * half.vae.config.scaling_factor, 1)
    assert frames.dtype == np.uint8 and frames.shape == (1, 64, 64, 3)


def test_the_fp32_copy_is_made_once_from_the_config_and_weights(tiny):
    half = copy.deepcopy(tiny.vae).half()
    half.decode = lambda *args, **kwargs: None  # set on the module itself, as a timer or a test does: not copied
    copied = autoencoder.fp32_copy(half)
    assert autoencoder.fp32_copy(half) is copied and copied.dtype == torch.float32 and "decode" not in vars(copied)
    for name, weight in half.state_dict().items():
        torch.testing.assert_close(copied.state_dict()[name], weight.float(), rtol=0, atol=0)
    assert autoencoder.fp32_copy(tiny.vae) is tiny.vae  # already fp32
