"""The anchor frame's self-attention keys and values, computed once per step and shared by every chunk."""

from __future__ import annotations

import contextlib

import pytest
import torch

from editing import sampling
from editing.attention.anchor import AnchorStore, anchor_nbytes
from editing.attention.bank import FeatureBankControl
from editing.config import FrameSelection
from editing.video_io import read_clip

from .conftest import ASSETS


@pytest.fixture(scope="module")
def latents16(tiny):
    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=16, stride=2, size=64))
    return sampling.encode_frames(tiny, clip.frames, batch_size=16)


@contextlib.contextmanager
def unet_batches(unet):
    """The batch size of every UNet forward made inside the block (a pre-hook, removed in `finally`)."""
    sizes = []

    def on_unet(module, args, kwargs):
        sizes.append((args[0] if args else kwargs["sample"]).shape[0])

    handle = unet.register_forward_pre_hook(on_unet, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def _denoise(tiny, latents, chunk, mode="first", share=True, guided=True, control=None, steps=2, anchors=(0,)):
    scheduler = tiny.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, steps, 1.0)
    guidance = sampling.Guidance(sampling.encode_text(tiny, "a car", "", guided=guided), 5.0 if guided else 1.0)
    plan = sampling.plan_frames(latents.shape[0], chunk, mode, anchors=anchors)
    with unet_batches(tiny.unet) as sizes:
        out = sampling.denoise(
            tiny,
            sampling.Schedule(scheduler, timesteps),
            latents,
            guidance,
            plan,
            sampling.LoopHooks(attention_control=control, share_anchors=share),
        )
    return out, sizes


@pytest.mark.parametrize("mode, guided", [("first", True), ("first", False), ("sparse-causal", True)])
def test_the_shared_anchor_gives_the_edit_that_recomputes_it(tiny, latents16, mode, guided):
    """The later chunks read the anchor's keys and values from the first chunk instead of recomputing the
    anchor from the same inputs. Measured bit for bit on this CPU with the tiny model; asserted within 1e-5,
    because the later chunks' UNet batches are one frame smaller, and some kernels may order their float
    operations by batch size on other machines or thread counts."""
    shared, _ = _denoise(tiny, latents16, 8, mode, share=True, guided=guided)
    recomputed, _ = _denoise(tiny, latents16, 8, mode, share=False, guided=guided)
    torch.testing.assert_close(shared, recomputed, atol=1e-5, rtol=1e-5)
    # control: the comparison sees the anchor: a later chunk attending to no anchor is far off
    plain, _ = _denoise(tiny, latents16, 8, "none", share=False, guided=guided)
    assert not torch.allclose(plain[8:], recomputed[8:], atol=1e-3)


def test_16_frames_at_chunk_8_cost_16_unet_images_per_step_not_17(tiny, latents16):
    _, shared = _denoise(tiny, latents16, 8, guided=False, steps=3)
    _, recomputed = _denoise(tiny, latents16, 8, guided=False, share=False, steps=3)
    assert shared == [8, 8] * 3 and sum(shared) == 16 * 3
    assert recomputed == [8, 9] * 3  # the anchor again in the second chunk
    _, guided = _denoise(tiny, latents16, 8, guided=True, steps=2)
    assert guided == [16, 16] * 2  # two guidance branches of 8 frames


def test_the_feature_bank_shares_the_anchor_and_leaves_it_out_of_the_bank(tiny, latents16):
    """With the bank the later chunks borrow the first chunk's anchor too (16 images per step). The first
    chunk is what it was. The later chunks now attend to the anchor the first chunk's frames saw, not to a
    copy recomputed in their own batch (which also attended to the bank), so they differ from recomputing
    it; with an empty bank (size 0) there is nothing for that copy to see, and the two are equal."""
    shared, sizes = _denoise(tiny, latents16, 8, guided=False, control=FeatureBankControl(8))
    recomputed, _ = _denoise(tiny, latents16, 8, guided=False, control=FeatureBankControl(8), share=False)
    assert sizes == [8, 8] * 2
    torch.testing.assert_close(shared[:8], recomputed[:8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shared[8:], recomputed[8:], atol=1e-4)
    empty_shared, _ = _denoise(tiny, latents16, 8, guided=False, control=FeatureBankControl(0))
    empty_recomputed, _ = _denoise(tiny, latents16, 8, guided=False, control=FeatureBankControl(0), share=False)
    torch.testing.assert_close(empty_shared, empty_recomputed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "mode, shares", [("first", True), ("sparse-causal", True), ("window", False), ("full", False), ("none", False)]
)
def test_only_modes_whose_anchor_attends_to_anchors_alone_share_it(mode, shares):
    plan = sampling.plan_frames(20, 8, mode, window=2)
    shared = plan.sharing_anchors()
    assert plan.shares_anchors() is shares
    if not shares:
        assert shared is plan
        return
    assert shared.batches[0] == plan.batches[0]
    for before, after in zip(plan.batches[1:], shared.batches[1:]):
        assert after.borrowed == (0,) and 0 not in after.ids and after.targets == before.targets
        assert set(after.ids) | {0} == set(before.ids)
        # every frame attends to the same frames, in the same order, as in the batch that held the anchor
        old, new = plan.layout(before), shared.layout(after)
        source = list(after.ids) + list(after.borrowed)
        for frame in after.ids:
            assert [before.ids[p] for p in old.kv_index[before.ids.index(frame)]] == [
                source[p] for p in new.kv_index[after.ids.index(frame)]
            ]


def test_a_sparse_causal_plan_with_a_later_anchor_recomputes_it():
    """Anchor 8 attends to frame 7 under sparse-causal, which only one chunk holds: not shared."""
    assert not sampling.plan_frames(24, 8, "sparse-causal", anchors=(0, 8)).shares_anchors()
    first = sampling.plan_frames(24, 8, "first", anchors=(0, 8)).sharing_anchors()
    assert [b.borrowed for b in first.batches] == [(), (0,), (0, 8)]  # batch 1 makes frame 8 itself


def test_the_store_is_bounded_and_holds_what_its_formula_states(tiny, latents16):
    """One anchor's keys and values per self-attention layer and guidance branch, overwritten each step."""
    store = AnchorStore()
    plan = sampling.plan_frames(16, 8, "first").sharing_anchors()
    text = sampling.encode_text(tiny, "a car", "", guided=True)
    layouts = [plan.layout(b) for b in plan.batches]
    calls = [sampling.anchor_call(store, plan.anchors, b) for b in plan.batches]
    from editing.attention.cross_frame import cross_frame_attention, layer_kwargs

    with cross_frame_attention(tiny.unet), torch.inference_mode():
        for step in range(2):
            for batch, layout, call in zip(plan.batches, layouts, calls):
                x = torch.cat([latents16[list(batch.ids)]] * 2)
                context = text.negative.expand(len(batch.ids), -1, -1).repeat(2, 1, 1)
                tiny.unet(x, 500 - step, encoder_hidden_states=context, cross_attention_kwargs=layer_kwargs(layout, call))
            layers = sum(1 for name in tiny.unet.attn_processors if ".attn1." in name)
            assert len(store.entries) == layers and all(frames == (0,) for frames, _, _ in store.entries.values())
            assert store.nbytes() == anchor_nbytes(tiny.unet.config, 8, 8, anchors=1, branches=2, bytes_per_value=4)
