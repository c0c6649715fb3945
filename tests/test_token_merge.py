"""Token merging across frames inside self-attention (VidToMe): properties that hold for any weights."""

from __future__ import annotations

import pytest
import torch

from editing.attention.cross_frame import LayerCall, layout_for
from editing.attention.merge import merge_context, merged_share
from editing.config import EngineConfig
from editing.errors import ConfigError

from .test_attention import DIM_HEAD, HEADS, attn  # noqa: F401 (the one small Attention module fixture)

TOKENS = 16


def _frames(count, identical=False):
    generator = torch.Generator().manual_seed(3)
    if identical:
        one = torch.randn(1, TOKENS, HEADS * DIM_HEAD, generator=generator)
        return one.repeat(count, 1, 1)
    return torch.randn(count, TOKENS, HEADS * DIM_HEAD, generator=generator)


@torch.no_grad()
def test_ratio_zero_is_no_merging(attn):
    x = _frames(3)
    assert torch.equal(
        attn(x, call=LayerCall(layout_for("full", [0, 1, 2], merge=0.0))), attn(x, call=LayerCall(layout_for("full", [0, 1, 2])))
    )


@torch.no_grad()
def test_merging_identical_frames_reproduces_unmerged_attention(attn):
    """Merged tokens stand for exact copies; proportional attention (log size) gives them their weight."""
    x = _frames(3, identical=True)
    plain = attn(x, call=LayerCall(layout_for("full", [0, 1, 2])))
    merged = attn(x, call=LayerCall(layout_for("full", [0, 1, 2], merge=0.75)))
    assert torch.allclose(plain, merged, atol=1e-5)


def test_without_the_size_bias_identical_frames_are_not_reproduced():
    """Control for the test above: dropping the log(size) bias changes the result, so the test sees it."""
    key = _frames(3, identical=True).reshape(1, 3 * TOKENS, -1)
    value = key.flip(-1)
    query = torch.randn(1, HEADS, TOKENS, DIM_HEAD, generator=torch.Generator().manual_seed(4))
    split = lambda t: t.view(1, -1, HEADS, DIM_HEAD).transpose(1, 2)  # noqa: E731
    full = torch.nn.functional.scaled_dot_product_attention(query, split(key), split(value))
    k, v, bias = merge_context(key, value, 3, 0.75)
    with_bias = torch.nn.functional.scaled_dot_product_attention(query, split(k), split(v), attn_mask=bias)
    without = torch.nn.functional.scaled_dot_product_attention(query, split(k), split(v))
    assert torch.allclose(full, with_bias, atol=1e-5)
    assert not torch.allclose(full, without, atol=1e-3)


def test_the_stated_share_of_keys_is_merged():
    key = _frames(4).reshape(2, 2 * TOKENS, -1)
    k, v, bias = merge_context(key, key, 2, 0.5)
    assert k.shape[1] == 2 * TOKENS - TOKENS // 2 == round(2 * TOKENS * (1 - merged_share(0.5, 2)))
    assert v.shape == k.shape and bias.shape == (2, 1, 1, k.shape[1])


@torch.no_grad()
def test_merging_different_frames_changes_attention_a_little(attn):
    x = _frames(3)
    plain = attn(x, call=LayerCall(layout_for("first", [0, 1, 2])))  # one context frame: nothing to merge
    assert torch.equal(plain, attn(x, call=LayerCall(layout_for("first", [0, 1, 2], merge=0.5))))
    full = attn(x, call=LayerCall(layout_for("full", [0, 1, 2])))
    merged = attn(x, call=LayerCall(layout_for("full", [0, 1, 2], merge=0.5)))
    assert not torch.allclose(full, merged, atol=1e-4)


def test_token_merge_is_validated():
    with pytest.raises(ConfigError, match="token_merge must be in"):
        EngineConfig(token_merge=1.0)
    with pytest.raises(ConfigError, match="token_merge must be in"):
        EngineConfig(token_merge=float("nan"))


def test_an_edit_with_token_merging_runs_end_to_end(tmp_path):
    import numpy as np

    from editing.pipeline import edit_video

    from .conftest import small_edit

    plain = edit_video(small_edit(tmp_path, "plain", attention="full"))
    merged = edit_video(small_edit(tmp_path, "merged", attention="full", token_merge=0.5))
    assert not merged.inversion_cached and not np.array_equal(plain.images, merged.images)
