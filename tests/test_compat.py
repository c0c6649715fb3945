"""One control protocol and one compatibility check: a mode registered here with its own attention
processor gets every combination check, the default keyframes and the batch's split rule from its
registration alone, and runs an edit through the loop's hooks."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest

from editing.attention.bank import FeatureBankControl
from editing.attention.control import AttentionControl
from editing.attention.cross_frame import CrossFrameAttnProcessor, attention_processors
from editing.attention.flow import FlowControl
from editing.attention.modes import AttentionMode, _first_rows, register_attention_mode, unregister_attention_mode
from editing.attention.p2p import PromptControl
from editing.attention.tokenflow import TokenFlowControl
from editing.attention.tuned import TunedControl
from editing.compat import features_of, refusal, sequential_reason
from editing.config import AttentionEditConfig, default_keyframes
from editing.errors import ConfigError
from editing.pipeline import edit_video

from .conftest import small_edit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingProcessor(CrossFrameAttnProcessor):
    """Cross-frame attention that counts the calls carrying its control's per-call state."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, call=None):
        if call is not None and "counted" in call.extra:
            call.extra["counted"]["calls"] += 1
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call)


class CountingControl(AttentionControl):
    """Overrides two hooks; the loop and the inversion call the others' no-op defaults."""

    made: list[CountingControl] = []

    def __init__(self):
        self.counted = {"calls": 0}
        CountingControl.made.append(self)

    def call(self, step, frames, targets, borrowed=()):
        return {"counted": self.counted}

    @contextlib.contextmanager
    def processors(self, unet):
        with attention_processors(unet, CountingProcessor()):
            yield


@pytest.fixture
def counting_mode():
    def make(frames, latent_height, latent_width):
        return CountingControl()

    needs = (("ddim-inversion", "it reads the inversion"),)
    register_attention_mode(AttentionMode("test-counting", _first_rows, make_control=make, needs=needs, default_keyframes=False))
    CountingControl.made.clear()
    yield "test-counting"
    unregister_attention_mode("test-counting")


def test_every_built_in_control_follows_the_one_protocol():
    for control in (FeatureBankControl, FlowControl, TokenFlowControl, TunedControl, PromptControl):
        assert issubclass(control, AttentionControl), control


def test_a_mode_with_its_own_processor_gets_the_checks_from_its_registration(tmp_path, counting_mode):
    request = small_edit(tmp_path, "plain", frames=2, attention=counting_mode)
    assert refusal(features_of(request)) is None
    refusals = {
        "feature bank": dict(engine=dataclasses.replace(request.engine, feature_bank=2)),
        "tuned": dict(tuned="weights.safetensors"),
        "attention edit": dict(attention_edit=AttentionEditConfig(source_prompt="a car")),
    }
    for name, change in refusals.items():
        with pytest.raises(ConfigError, match="attention test-counting cannot be combined with") as refused:
            dataclasses.replace(request, **change)
        assert "\n" not in str(refused.value), name
    with pytest.raises(ConfigError, match="attention test-counting needs --inversion ddim: it reads the inversion"):
        small_edit(tmp_path, "sdedit", frames=2, attention=counting_mode, inversion="none")
    assert default_keyframes({"attention": counting_mode}) is None and default_keyframes({"attention": "first"}) is not None
    assert sequential_reason(request) == "attention test-counting needs the context of neighbouring chunks"


def test_a_mode_with_its_own_processor_edits_through_the_loops_hooks(tmp_path, counting_mode):
    result = edit_video(small_edit(tmp_path, "counted", frames=2, attention=counting_mode))
    assert result.images.shape[0] == 2 and result.images.dtype == np.uint8
    inverting, sampling = CountingControl.made  # one for the inversion, one for sampling
    assert inverting.counted["calls"] > 0 and sampling.counted["calls"] > 0


def test_the_base_control_is_the_plain_cross_frame_attention(tmp_path, tiny):
    from editing import sampling

    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    latents = sampling.encode_frames(tiny, frames, 3)
    text = sampling.encode_text(tiny, "a car", "", guided=False)
    plan = sampling.plan_frames(3, 2, "first")

    def denoise(hooks: sampling.LoopHooks = sampling.NO_HOOKS):
        scheduler = tiny.scheduler("ddim")
        timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
        return sampling.denoise(tiny, sampling.Schedule(scheduler, timesteps), latents, sampling.Guidance(text, 1.0), plan, hooks)

    plain = denoise()
    based = denoise(sampling.LoopHooks(attention_control=AttentionControl()))
    assert plain.shape == based.shape and not plain.isnan().any()
    # the base control does not share anchors across chunks, so compare against the same plan unshared
    unshared = denoise(sampling.LoopHooks(share_anchors=False))
    assert (based == unshared).all()
