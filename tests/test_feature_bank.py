"""The bounded feature bank (StreamV2V): later chunks attend to earlier chunks' keys and values."""

from __future__ import annotations

import pytest
import torch

from editing import sampling
from editing.attention.bank import FeatureBankControl, bank_nbytes
from editing.config import EngineConfig
from editing.errors import ConfigError


def _run(tiny, chunk, bank=None, frames=4, steps=2):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((frames, tiny.latent_channels, 8, 8), generator=generator)
    text = sampling.encode_text(tiny, "a red car", "", guided=True)
    scheduler = tiny.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, steps, 1.0)
    plan = sampling.plan_frames(frames, chunk, "first")
    control = None if bank is None else FeatureBankControl(bank)
    out = sampling.denoise(
        tiny,
        sampling.Schedule(scheduler, timesteps),
        latents,
        sampling.Guidance(text, 3.0),
        plan,
        sampling.LoopHooks(attention_control=control),
    )
    return out, control


def test_one_chunk_with_a_bank_equals_no_bank(tiny):
    """Nothing comes before the first chunk, so a clip of one chunk is unchanged by the bank."""
    plain, _ = _run(tiny, chunk=4)
    banked, _ = _run(tiny, chunk=4, bank=4)
    assert torch.allclose(plain, banked, atol=1e-5)


def test_later_chunks_attend_to_the_bank_and_the_first_chunk_does_not(tiny):
    plain, _ = _run(tiny, chunk=2)
    banked, control = _run(tiny, chunk=2, bank=2)
    assert torch.allclose(plain[:2], banked[:2], atol=1e-5)  # chunk 1 saw an empty bank
    assert not torch.allclose(plain[2:], banked[2:], atol=1e-3)  # chunk 2 also attended to frames 0 and 1
    assert control.bank.step == 1  # emptied and refilled each step


def test_the_bank_is_bounded_and_its_bytes_are_what_the_formula_states(tiny):
    _, control = _run(tiny, chunk=1, bank=2, frames=5)
    layers = control.bank.entries
    assert layers and all(len(entries) == 2 for entries in layers.values())
    assert [frame for frame, _, _ in next(iter(layers.values()))] == [3, 4]  # the most recent frames
    stated = bank_nbytes(tiny.unet.config, 8, 8, frames=2, branches=2, bytes_per_value=4)
    assert control.bank.nbytes() == stated


def test_bank_settings_are_validated(tmp_path):
    from .conftest import small_edit

    with pytest.raises(ConfigError, match="feature_bank must be between 0 and 64"):
        EngineConfig(feature_bank=-1)
    with pytest.raises(ConfigError, match="feature_bank needs cross-frame attention"):
        small_edit(tmp_path, "refused", feature_bank=2, attention="none")


def test_an_edit_with_a_feature_bank_runs_end_to_end_and_inverts_with_it(tmp_path):
    from editing.pipeline import edit_video

    from .conftest import small_edit

    plain = edit_video(small_edit(tmp_path, "plain", frames=4, chunk=2))
    banked = edit_video(small_edit(tmp_path, "banked", frames=4, chunk=2, feature_bank=2))
    assert not banked.inversion_cached  # the bank changes the inversion, so it has its own cache entry
    assert not (plain.images == banked.images).all()
