"""Step caches (editing.stepcache): DeepCache's deep-feature reuse and ToMe's token merging, through the
one denoising loop with the tiny model. Properties that hold for any weights: interval 1 and ratio 0
change nothing; the shallow path over features kept at a step reproduces that step's full output; a
cached run calls the deep blocks fewer times; merged tokens unmerge to their own positions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editing import sampling
from editing.errors import ConfigError
from editing.stepcache import StepCacheKind, build_step_caches, parse_step_caches, register_step_cache, step_cache_names
from editing.stepcache.deepcache import DeepCache, UnetInputs, shallow_forward
from editing.stepcache.tome import TokenMerge, finest_self_attention, merge_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FRAMES, STEPS = 3, 6


class Counter:
    """Counts a module's forward calls."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


def _run(tiny, step_cache: str | None, mode: str = "first", chunk: int = 8):
    """A 6-step DDIM denoise of 3 seeded 8x8 latent frames with `step_cache`; (latents, mid-block calls)."""
    from editing.samplers import make_scheduler

    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    timesteps = sampling.sampling_timesteps(scheduler, STEPS, 1.0)
    latents = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = sampling.encode_text(tiny, "a red car", "", guided=True)
    plan = sampling.plan_frames(FRAMES, chunk, mode).with_calls(step_cache=parse_step_caches(step_cache))
    counter = Counter(tiny.unet.mid_block)
    try:
        out = sampling.denoise(tiny, sampling.Schedule(scheduler, timesteps), latents, sampling.Guidance(text, 3.0), plan)
    finally:
        counter.handle.remove()
    return out, counter.calls


def test_interval_one_and_ratio_zero_equal_no_cache_exactly(tiny):
    plain, calls = _run(tiny, None)
    for spec in ("deepcache:1", "tome:0", "deepcache:1,tome:0"):
        cached, cached_calls = _run(tiny, spec)
        assert torch.equal(cached, plain), spec
        assert cached_calls == calls == STEPS


def test_a_cached_run_calls_the_deep_blocks_fewer_times_and_stays_close(tiny):
    plain, calls = _run(tiny, None, chunk=2)  # two calls per step (frames 0-1, then 2 with the anchor)
    cached, cached_calls = _run(tiny, "deepcache:3", chunk=2)
    assert calls == 2 * STEPS and cached_calls == 2 * 2  # full passes at steps 0 and 3 only
    assert not torch.equal(cached, plain)
    assert (cached - plain).abs().mean() < (plain - torch.zeros_like(plain)).abs().mean()


def test_the_shallow_path_over_features_kept_at_a_step_reproduces_that_step(tiny):
    unet = tiny.unet
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    cache = DeepCache(interval=3)
    with torch.inference_mode(), cache.installed(unet):
        cache.begin_call(0, ("frames",))
        full = unet(sample, 500, encoder_hidden_states=text).sample
        (deep,) = cache.store.values()
        again = shallow_forward(unet, deep, 1, UnetInputs(sample, 500, text)).sample
        cache.begin_call(1, ("frames",))
        reused = unet(sample, 500, encoder_hidden_states=text).sample
    torch.testing.assert_close(again, full)
    torch.testing.assert_close(reused, full)
    assert (cache.full_calls, cache.shallow_calls) == (1, 1)
    assert "forward" not in unet.__dict__ and not cache.store  # restored and emptied


def test_merged_tokens_unmerge_to_their_positions():
    tokens = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(3))
    tokens[:, 1] = tokens[:, 0]  # a duplicate is the most similar source to its original's cell
    merge, unmerge = merge_plan(tokens, 8, 8, 0.5)
    merged = merge(tokens)
    assert merged.shape == (2, 64 - 32, 16)
    restored = unmerge(merged)
    kept = (restored == tokens).all(dim=-1)  # sources left alone and destinations nothing merged into
    assert kept.float().mean() >= 0.25 and torch.equal(restored[:, 0], restored[:, 1])
    same, unchanged = merge_plan(tokens, 8, 8, 0.0)
    assert torch.equal(unchanged(same(tokens)), tokens)


def test_token_merging_runs_inside_the_cross_frame_processors_at_the_finest_level(tiny):
    names = finest_self_attention(tiny.unet.attn_processors, len(tiny.unet.up_blocks))
    assert names and all(".attn1." in n and (n.startswith("down_blocks.0") or n.startswith("up_blocks.2")) for n in names)
    merging = TokenMerge(0.5)
    original = dict(tiny.unet.attn_processors)
    with merging.installed(tiny.unet):
        wrapped = tiny.unet.attn_processors
        assert all(type(wrapped[n]).__name__.startswith("TokenMerged") for n in names)
    assert tiny.unet.attn_processors == original
    plain, _ = _run(tiny, None)
    merged, _ = _run(tiny, "tome:0.5")
    both, calls = _run(tiny, "deepcache:2,tome:0.5", mode="sparse-causal")
    assert not torch.equal(merged, plain) and torch.isfinite(both).all() and calls == STEPS // 2


def test_step_cache_specs_are_parsed_and_refused_in_one_sentence():
    assert [str(s) for s in parse_step_caches("deepcache:4,tome:0.25")] == ["deepcache:4", "tome:0.25"]
    assert parse_step_caches("none") == () and parse_step_caches(None) == ()
    assert [str(s) for s in parse_step_caches("deepcache")] == ["deepcache:3"]
    for bad, words in (
        ("deepcache:0", "interval"),
        ("deepcache:2.5", "interval"),
        ("tome:1", "ratio"),
        ("fast", "kinds among"),
        ("tome:x", "not a number"),
        ("tome,tome", "once"),
    ):
        with pytest.raises(ConfigError, match=words) as caught:
            parse_step_caches(bad)
        assert str(caught.value).startswith("step_cache")
    from editing.config import EngineConfig

    with pytest.raises(ConfigError, match="step_cache"):
        EngineConfig(step_cache="deepcache:0")
    assert {"deepcache", "tome"} <= set(step_cache_names())
    with pytest.raises(ValueError, match="already registered"):
        register_step_cache(StepCacheKind("tome", "x:y", 0.5, lambda v: None))
    from editing.requests import build_request

    base = {"video": "v.mp4", "out": "o.mp4", "prompt": "x", "model": "tiny"}
    assert build_request("edit", base | {"step_cache": "deepcache:3,tome:0.5"}).engine.step_cache == "deepcache:3,tome:0.5"
    with pytest.raises(
        ConfigError, match="^step_cache deepcache cannot be combined with --motion-adapter"
    ):  # declared in its registration (editing.compat)
        build_request("edit", base | {"motion_adapter": "random", "step_cache": "deepcache:3"})


def test_an_edit_with_a_step_cache_runs_end_to_end_and_inversion_ignores_it(tmp_path):
    from editing.pipeline import edit_video
    from tests.conftest import small_edit

    request = small_edit(tmp_path, "cached", keyframes="off", step_cache="deepcache:2,tome:0.5")
    request = dataclasses.replace(request, edit=dataclasses.replace(request.edit, steps=4))
    result = edit_video(request, lambda *a: None)
    assert result.frames == 3
    assert sampling.inverting(torch.tensor([1, 251, 501])) and not sampling.inverting(torch.tensor([501, 251, 1]))
    assert isinstance(build_step_caches("deepcache:2").caches[0], DeepCache)
