"""Keyframe propagation (--attention tokenflow, after TokenFlow): properties that hold for any weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from editing import sampling
from editing.attention.cross_frame import layer_kwargs, layout_for
from editing.attention.tokenflow import (
    SourceFeatures,
    TokenFlowAttnProcessor,
    TokenFlowCall,
    TokenFlowControl,
    TokenFlowState,
    blend_weights,
    keyframes,
    nearest_tokens,
    recorded_layers,
    store_nbytes,
    upsample_matches,
)
from editing.errors import ConfigError
from editing.inversion import ddim_invert, inverse_schedule
from editing.pipeline import edit_video

from .conftest import small_edit
from .test_attention import DIM_HEAD, HEADS, explicit_attention

TOKENS, HEIGHT, WIDTH = 12, 3, 4  # one layer's 3x4 token grid


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    module = Attention(query_dim=HEADS * DIM_HEAD, heads=HEADS, dim_head=DIM_HEAD)
    module.set_processor(TokenFlowAttnProcessor("layer"))
    return module.eval()


def _state(num_frames: int, features: torch.Tensor, keys: tuple[int, ...]) -> TokenFlowState:
    """A state at denoising step 0 of a 1-step inversion, with the given source features (frames, tokens, dims)."""
    state = TokenFlowState(
        num_frames, HEIGHT, WIDTH, SourceFeatures(num_frames, {(0, TOKENS): features.half()}), inverted_steps=1
    )
    state.begin(0, keys)
    return state


def _run(attn, x: torch.Tensor, state: TokenFlowState, frames: tuple[int, ...], phase: str, branches: int = 1) -> torch.Tensor:
    return attn(x, **layer_kwargs(layout_for("tokenflow", list(frames)), tokenflow=TokenFlowCall(state, phase, frames)))


@torch.no_grad()
def test_keyframes_output_extended_attention_among_the_keyframes(attn):
    keys = (0, 2, 4)
    x = torch.randn(2 * len(keys), TOKENS, HEADS * DIM_HEAD, generator=torch.Generator().manual_seed(1))  # 2 guidance branches
    state = _state(5, torch.randn(5, TOKENS, 8), keys)
    out = _run(attn, x, state, keys, "keyframes")
    for branch in range(2):
        own = x[branch * 3 : branch * 3 + 3]
        for i in range(3):
            torch.testing.assert_close(out[branch * 3 + i], explicit_attention(attn, own[i], list(own)), atol=1e-5, rtol=1e-4)
    assert state.outputs["layer"].shape == (2, 3, HEADS, TOKENS, DIM_HEAD)


@torch.no_grad()
def test_propagated_frames_blend_their_keyframes_outputs_at_the_nearest_source_tokens(attn):
    keys = (0, 3)
    features = torch.randn(4, TOKENS, 8, generator=torch.Generator().manual_seed(2))
    features[1] = features[0][
        torch.randperm(TOKENS, generator=torch.Generator().manual_seed(3))
    ]  # frame 1 = frame 0's tokens, shuffled
    state = _state(4, features, keys)
    x = torch.randn(4, TOKENS, HEADS * DIM_HEAD, generator=torch.Generator().manual_seed(4))
    keyed = _run(attn, x[list(keys)], state, keys, "keyframes")
    out = _run(attn, torch.zeros_like(x), state, (0, 1, 2, 3), "propagate")  # no self-attention is computed: inputs do not matter
    torch.testing.assert_close(out[0], keyed[0], atol=1e-6, rtol=1e-5)  # keyframes keep their own outputs
    torch.testing.assert_close(out[3], keyed[1], atol=1e-6, rtol=1e-5)
    for frame in (1, 2):
        expected = sum(
            w * keyed[keys.index(k)][nearest_tokens(features[frame], features[k])] for k, w in blend_weights(frame, keys)
        )
        torch.testing.assert_close(out[frame], expected, atol=1e-5, rtol=1e-4)  # blending before to_out equals blending after it
    shuffled = nearest_tokens(features[1], features[0])
    assert torch.equal(features[0][shuffled], features[1])  # the correspondences follow the features


@torch.no_grad()
def test_a_frame_identical_to_its_only_keyframe_gets_that_keyframes_output(attn):
    features = torch.randn(3, TOKENS, 8, generator=torch.Generator().manual_seed(5))
    features[2] = features[1]  # frame 2 is after the last keyframe, and a copy of it
    state = _state(3, features, (1,))
    x = torch.randn(3, TOKENS, HEADS * DIM_HEAD, generator=torch.Generator().manual_seed(6))
    keyed = _run(attn, x[[1]], state, (1,), "keyframes")
    out = _run(attn, x, state, (0, 1, 2), "propagate")
    torch.testing.assert_close(out[2], keyed[0], atol=1e-6, rtol=1e-5)  # its nearest neighbour is itself, token by token
    assert not torch.allclose(out[0], keyed[0])  # a different frame takes other tokens


def test_blend_weights_follow_the_temporal_distance():
    keys = (0, 4, 8)
    assert blend_weights(4, keys) == [(4, 1.0)]
    assert blend_weights(1, keys) == [(0, 0.75), (4, 0.25)]
    assert blend_weights(2, keys) == [(0, 0.5), (4, 0.5)]
    assert blend_weights(7, keys) == [(4, 0.25), (8, 0.75)]
    assert blend_weights(9, keys) == [(8, 1.0)] and blend_weights(0, (2, 5)) == [(2, 1.0)]
    for frame in range(9):
        assert sum(w for _, w in blend_weights(frame, keys)) == pytest.approx(1.0)


def test_one_keyframe_per_window_at_a_seeded_offset_per_step():
    picks = [keyframes(10, 4, step) for step in range(8)]
    for keys in picks:
        assert (
            len(keys) == 3 and [k // 4 for k in keys] == [0, 1, 2] and keys[0] + 4 == keys[1]
        )  # same offset in every full window
    assert len(set(picks)) > 1 and picks == [keyframes(10, 4, step) for step in range(8)]  # varies with the step, reproducibly
    assert keyframes(3, 8, 0) in ((0,), (1,), (2,))


def test_wide_features_are_stored_projected_and_keep_their_correspondences():
    hidden = torch.randn(2, TOKENS, 256, generator=torch.Generator().manual_seed(8))
    order = torch.randperm(TOKENS, generator=torch.Generator().manual_seed(9))
    hidden[1] = hidden[0][order]
    store = SourceFeatures(2)
    store.put(0, (0, 1), hidden)
    stored = store.get(0, TOKENS)
    assert stored.shape == (2, TOKENS, 64) and stored.dtype == torch.float16 and store.nbytes() == 2 * TOKENS * 64 * 2
    assert torch.equal(nearest_tokens(stored[1], stored[0]), order)  # frame 1's token i is frame 0's token order[i]


def test_coarse_correspondences_upsample_to_finer_grids():
    identity = torch.arange(2 * 3)
    assert torch.equal(upsample_matches(identity, (2, 3), (4, 6)), torch.arange(24))
    swap = torch.tensor([1, 0])  # a 1x2 grid whose two halves swap
    fine = upsample_matches(swap, (1, 2), (2, 4)).view(2, 4)
    assert fine.tolist() == [[2, 3, 0, 1], [6, 7, 4, 5]]


def _invert(tiny, frames: int, steps: int, cap: int | None = None):
    clip = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    control = TokenFlowControl(frames, 8, 8, **({} if cap is None else {"cap": cap}))
    plan = sampling.plan_frames(frames, 8, "tokenflow", window=2)
    text = sampling.encode_text(tiny, "a car", "", guided=False)
    trajectory = ddim_invert(
        tiny, clip, inverse_schedule(tiny, steps, 1.0), text, plan, sampling.LoopHooks(attention_control=control)
    )
    return trajectory, control


def test_the_store_costs_what_its_formula_says_and_stays_under_its_cap(tiny):
    trajectory, control = _invert(tiny, frames=3, steps=2)
    config = tiny.unet.config
    assert (
        control.state.source.nbytes()
        == store_nbytes(config, (8, 8), 3, 2)
        == sum(t.numel() * 2 for t in trajectory.features.values())
    )
    assert control.state.source.steps() == 2 and len({tokens for _, tokens in control.state.source.features}) == len(
        recorded_layers(config)
    )
    finest = min(recorded_layers(config).values())
    cap = store_nbytes(config, (8, 8), 3, 2) - 1  # one byte too few: the finest resolution is dropped
    _, capped = _invert(tiny, frames=3, steps=2, cap=cap)
    kept = tuple(d for d in recorded_layers(config).values() if d != finest)
    assert capped.state.source.nbytes() == store_nbytes(config, (8, 8), 3, 2, downsamplings=kept) <= cap
    with pytest.raises(ConfigError, match="over its cap"):
        _invert(tiny, frames=3, steps=2, cap=10)


def _denoise(tiny, trajectory, frames: int, chunk: int, window: int) -> torch.Tensor:
    control = TokenFlowControl(frames, 8, 8)
    control.use_source(trajectory.features, len(trajectory.timesteps))
    scheduler = tiny.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
    guidance = sampling.Guidance(sampling.encode_text(tiny, "a red car", "", guided=True), 5.0)
    plan = sampling.plan_frames(frames, chunk, "tokenflow", window=window)
    return sampling.denoise(
        tiny,
        sampling.Schedule(scheduler, timesteps),
        trajectory.final,
        guidance,
        plan,
        sampling.LoopHooks(attention_control=control),
    )


def test_chunked_equals_one_batch_while_the_keyframes_fit_in_a_chunk(tiny):
    """Keyframes are chosen over the whole clip and run jointly in their own pass, and propagation reads only
    their outputs and the stored features, so the chunks change nothing while one chunk holds every keyframe;
    beyond that, keyframes attend jointly in groups of a chunk, and the result differs."""
    trajectory, _ = _invert(tiny, frames=5, steps=2)
    whole = _denoise(tiny, trajectory, 5, chunk=5, window=2)  # 3 keyframes
    torch.testing.assert_close(_denoise(tiny, trajectory, 5, chunk=3, window=2), whole, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_denoise(tiny, trajectory, 5, chunk=2, window=2), whole, atol=1e-3)


def test_an_edit_with_tokenflow_runs_end_to_end_and_reuses_the_cached_store(tmp_path):
    first = edit_video(small_edit(tmp_path, "first", frames=4, attention="first"))
    tokenflow = edit_video(small_edit(tmp_path, "tokenflow", frames=4, attention="tokenflow"))
    assert tokenflow.images.shape == first.images.shape and not np.array_equal(tokenflow.images, first.images)
    again = edit_video(small_edit(tmp_path, "again", frames=4, attention="tokenflow"))
    assert again.inversion_cached and not tokenflow.inversion_cached
    assert np.array_equal(again.images, tokenflow.images)  # the store came back with the inversion


def test_tokenflow_with_a_controlnet_from_the_cli(tmp_path, capsys):
    from editing.cli import main

    from .conftest import ASSETS

    out = tmp_path / "out.mp4"
    args = ["edit", str(ASSETS / "car-turn.mp4"), "--prompt", "a red car", "--out", str(out), "--model", "tiny", "--size", "64"]
    args += [
        "--frames",
        "3",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        "--attention",
        "tokenflow",
        "--control",
        "canny",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 3 and out.stat().st_size > 0


@pytest.mark.parametrize(
    "engine, attention_edit, message",
    [({"inversion": "none"}, False, "needs --inversion ddim"), ({}, True, "cannot be combined")],
)
def test_tokenflow_is_refused_where_it_cannot_work(tmp_path, engine, attention_edit, message):
    import dataclasses

    from editing.config import AttentionEditConfig

    with pytest.raises(ConfigError, match=message):  # refused when the request is made (editing.compat)
        request = small_edit(tmp_path, "refused", attention="tokenflow", **engine)
        if attention_edit:
            request = dataclasses.replace(request, attention_edit=AttentionEditConfig(source_prompt="a car"))
        edit_video(request)
    assert not (tmp_path / "refused.mp4").exists()


def test_a_longer_clip_keeps_the_unet_batch_and_attention_length_of_a_16_frame_one(tmp_path):
    """The keyframe pass runs in groups of at most one chunk (8 keyframes at --window 2 for 16 frames, 24 in
    three groups for 48), so memory does not grow with the clip."""
    from .test_engine import _measured_edit

    sixteen = _measured_edit(tmp_path, 16, 8, "tokenflow")
    longer = _measured_edit(tmp_path, 48, 8, "tokenflow")
    assert (longer["batch"], longer["keys"]) == (sixteen["batch"], sixteen["keys"]) and longer["unet_calls"] > sixteen[
        "unet_calls"
    ]
