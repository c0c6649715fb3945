"""Cross-frame attention processors, tested on one small diffusers Attention module and on the UNet."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from editing.attention.cross_frame import (
    CrossFrameAttnProcessor,
    FrameLayout,
    LayerCall,
    cross_frame_attention,
    layer_kwargs,
    layout_for,
)

HEADS, DIM_HEAD, TOKENS = 2, 8, 12


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    module = Attention(query_dim=HEADS * DIM_HEAD, heads=HEADS, dim_head=DIM_HEAD)
    module.set_processor(CrossFrameAttnProcessor())
    return module.eval()


def explicit_attention(attn: Attention, query_frame: torch.Tensor, kv_frames: list[torch.Tensor]) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V over the concatenated tokens of kv_frames, written out by hand."""
    keys_in = torch.cat(kv_frames)
    q, k, v = attn.to_q(query_frame), attn.to_k(keys_in), attn.to_v(keys_in)

    def split(t):
        return t.view(t.shape[0], HEADS, DIM_HEAD).transpose(0, 1)

    weights = torch.softmax(split(q) @ split(k).transpose(1, 2) / DIM_HEAD**0.5, dim=-1)
    out = (weights @ split(v)).transpose(0, 1).reshape(query_frame.shape[0], HEADS * DIM_HEAD)
    return attn.to_out[0](out)


def frames(count: int, branches: int = 1) -> torch.Tensor:
    return torch.randn(branches * count, TOKENS, HEADS * DIM_HEAD, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_none_equals_diffusers_default(attn):
    x = frames(3, branches=2)
    ours = attn(x, call=LayerCall(layout_for("none", [0, 1, 2])))
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(ours, attn(x), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_first_frame_equals_explicit_keys_values_of_frame_0(attn):
    x = frames(4)
    out = attn(x, call=LayerCall(layout_for("first", [0, 1, 2, 3])))
    for f in range(4):
        torch.testing.assert_close(out[f], explicit_attention(attn, x[f], [x[0]]), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_sparse_causal_full_and_window_equal_explicit_computation(attn):
    x = frames(5)
    ids = [0, 1, 2, 3, 4]
    sparse = attn(x, call=LayerCall(layout_for("sparse-causal", ids)))
    full = attn(x, call=LayerCall(layout_for("full", ids)))
    window = attn(x, call=LayerCall(layout_for("window", ids, anchors=(0,), window=1)))
    for f in ids:
        torch.testing.assert_close(sparse[f], explicit_attention(attn, x[f], [x[0], x[max(f - 1, 0)]]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(full[f], explicit_attention(attn, x[f], [x[i] for i in ids]), atol=1e-5, rtol=1e-4)
        neighbours = sorted({0} | {i for i in ids if abs(i - f) <= 1})  # uneven counts: masked padding
        torch.testing.assert_close(window[f], explicit_attention(attn, x[f], [x[i] for i in neighbours]), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_keys_and_values_are_projected_only_for_the_frames_attended_to(attn):
    """`first` projects one frame's keys and values per guidance branch, sparse-causal the frames its rows
    name; the output equals projecting every frame (the feature bank and TokenFlow still project all)."""
    rows = []
    original = attn.to_k.forward
    attn.to_k.forward = lambda x: rows.append(x.shape[0]) or original(x)
    x = frames(4, branches=2)
    first = attn(x, call=LayerCall(layout_for("first", [0, 1, 2, 3])))
    causal = attn(x, call=LayerCall(layout_for("sparse-causal", [0, 1, 2, 3])))
    assert rows == [2, 6]  # first: frame 0 of each branch; sparse-causal: frames 0, 1 and 2 (no frame attends to frame 3)
    attn.set_processor(type("EveryFrame", (CrossFrameAttnProcessor,), {"every_frame_kv": True})())
    torch.testing.assert_close(first, attn(x, call=LayerCall(layout_for("first", [0, 1, 2, 3]))), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(causal, attn(x, call=LayerCall(layout_for("sparse-causal", [0, 1, 2, 3]))), atol=1e-6, rtol=1e-5)
    assert rows[2:] == [8, 8]


@torch.no_grad()
def test_guidance_branches_attend_within_their_own_branch(attn):
    x = frames(3, branches=2)
    layout = layout_for("full", [0, 1, 2])
    both = attn(x, call=LayerCall(layout))
    torch.testing.assert_close(both[:3], attn(x[:3], call=LayerCall(layout)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both[3:], attn(x[3:], call=LayerCall(layout)), atol=1e-6, rtol=1e-5)


def test_frame_count_is_explicit_and_checked(attn):
    with pytest.raises(ValueError, match="cannot hold whole guidance branches"):
        attn(frames(5), call=LayerCall(layout_for("first", [0, 1])))
    with pytest.raises(ValueError, match="rows"):
        FrameLayout(3, torch.zeros(2, 1, dtype=torch.long))


@torch.no_grad()
def test_identical_frames_give_identical_outputs_under_first(tiny):
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(4, 1, 1, 1)
    text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)).repeat(4, 1, 1)
    with cross_frame_attention(tiny.unet):
        out = tiny.unet(
            latent, 500, encoder_hidden_states=text, cross_attention_kwargs=layer_kwargs(layout_for("first", [0, 1, 2, 3]))
        ).sample
    for f in range(1, 4):
        assert torch.equal(out[f], out[0])


def test_processors_are_restored_after_an_exception(tiny):
    before = dict(tiny.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with cross_frame_attention(tiny.unet):
            assert all(isinstance(p, CrossFrameAttnProcessor) for p in tiny.unet.attn_processors.values())
            raise RuntimeError("boom")
    after = tiny.unet.attn_processors
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
