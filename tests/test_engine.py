"""The video engine's properties, which hold for any weights: inversion, chunking, ControlNet, caching."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from editing import sampling
from editing.cache import TensorCache, cache_key
from editing.config import ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.errors import ConfigError
from editing.inversion import ddim_invert
from editing.models import load_controlnet
from editing.pipeline import EditRequest, edit_video
from editing.video_io import read_clip

from .conftest import ASSETS, ROOT


@pytest.fixture(scope="module")
def clip_latents(tiny):
    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=4, stride=4, size=128))
    return clip, sampling.encode_frames(tiny, clip.frames, batch_size=4)


@pytest.mark.parametrize("mode", ["none", "first", "sparse-causal", "full", "window"])
@pytest.mark.parametrize("num_frames, chunk", [(1, 4), (7, 3), (20, 8), (200, 16)])
def test_plan_covers_every_frame_once_with_the_context_it_needs(mode, num_frames, chunk):
    plan = sampling.plan_frames(num_frames, chunk, mode, window=2)
    targets = [t for batch in plan.batches for t in batch.targets]
    assert targets == list(range(num_frames))
    for batch in plan.batches:
        assert len(batch.targets) <= chunk and set(batch.targets) <= set(batch.ids) and list(batch.ids) == sorted(batch.ids)
        if mode != "none":
            assert 0 in batch.ids  # the shared anchor keeps chunks consistent
        if mode == "sparse-causal" and batch.targets[0] > 0:
            assert batch.targets[0] - 1 in batch.ids
        if mode == "window":
            wanted = {f for t in batch.targets for f in range(t - 2, t + 3) if 0 <= f < num_frames}
            assert wanted <= set(batch.ids)
        assert len(batch.ids) <= chunk + (1 if mode in ("first", "full") else 2 if mode == "sparse-causal" else 1 + 2 * 2)


def test_chunked_first_frame_attention_equals_one_batch(tiny, clip_latents):
    """Under `first` a frame depends only on itself and frame 0, so chunking must not change anything."""
    _, latents = clip_latents
    guidance = sampling.Guidance(sampling.encode_text(tiny, "a car", "", guided=True), 5.0)
    results = []
    for chunk in (1, 4):
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
        results.append(sampling.denoise(tiny, scheduler, latents, timesteps, guidance, sampling.plan_frames(4, chunk, "first")))
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)  # batch size changes only rounding


@pytest.mark.parametrize("mode", ["first", "sparse-causal"])
def test_inversion_reconstructs_far_better_than_fresh_noise(tiny, clip_latents, mode):
    """Editing from the DDIM-inverted latents with the source prompt and guidance 1 retraces the source."""
    clip, clean = clip_latents
    text = sampling.encode_text(tiny, "a car on a road", "", guided=False)
    plan = sampling.plan_frames(clip.num_frames, 4, mode)
    trajectory = ddim_invert(tiny, clean, steps=10, strength=1.0, text=text, plan=plan)
    assert trajectory.states.shape[0] == 11 and torch.equal(trajectory.states[0], clean)
    errors = []
    for start in (trajectory.final, torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))):
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, 10, 1.0)
        result = sampling.denoise(tiny, scheduler, start, timesteps, sampling.Guidance(text, 1.0), plan)
        errors.append((result - clean).pow(2).mean().item())
    reconstructed, from_noise = errors
    assert reconstructed * 5 < from_noise


def test_controlnet_at_scale_zero_equals_no_controlnet(tiny, clip_latents):
    clip, latents = clip_latents
    images = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255
    controlnet = load_controlnet("random", tiny)
    text = sampling.encode_text(tiny, "a car", "", guided=True)
    runs = {}
    for name, controls in {
        "none": (),
        "zero": (sampling.ControlSignal(controlnet, images, scale=0.0),),
        "one": (sampling.ControlSignal(controlnet, images, scale=1.0),),
        "late": (sampling.ControlSignal(controlnet, images, scale=1.0, start=0.6, end=1.0),),
    }.items():
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
        plan = sampling.plan_frames(4, 4, "first")
        steps = []
        sampling.denoise(tiny, scheduler, latents, timesteps, sampling.Guidance(text, 5.0, controls), plan, lambda i, t, x: steps.append(x.clone()))
        runs[name] = steps
    assert all(torch.equal(a, b) for a, b in zip(runs["none"], runs["zero"]))
    assert not torch.allclose(runs["none"][-1], runs["one"][-1])
    # A ControlNet acting only on the last step leaves the first step untouched.
    assert torch.equal(runs["late"][0], runs["none"][0]) and not torch.equal(runs["late"][1], runs["none"][1])


def test_two_controlnets_add_their_residuals(tiny, clip_latents):
    clip, latents = clip_latents
    images = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255
    controlnet = load_controlnet("random", tiny)
    text = sampling.encode_text(tiny, "a car", "", guided=False)
    scheduler = tiny.scheduler()
    scheduler.set_timesteps(2)
    t = scheduler.timesteps[0]
    half = sampling.ControlSignal(controlnet, images, scale=0.5)
    two_halves = sampling.predict_noise(tiny, scheduler, latents, t, sampling.Guidance(text, 1.0, (half, half)))
    whole = sampling.predict_noise(tiny, scheduler, latents, t, sampling.Guidance(text, 1.0, (sampling.ControlSignal(controlnet, images, 1.0),)))
    torch.testing.assert_close(two_halves, whole, atol=1e-4, rtol=1e-3)


def _request(tmp_path, name, prompt="a watercolor painting", **engine) -> EditRequest:
    return EditRequest(
        video=str(ASSETS / "car-turn.mp4"),
        output=str(tmp_path / name),
        edit=EditConfig(prompt=prompt, steps=3, guidance=5.0),
        selection=FrameSelection(max_frames=4, stride=5, size=128),
        model="tiny",
        device="cpu",
        engine=EngineConfig(cache_dir=str(tmp_path / "cache"), **engine),
    )


def test_second_prompt_reuses_the_cached_inversion(tmp_path, monkeypatch):
    first = edit_video(_request(tmp_path, "a.zip"))
    assert not first.inversion_cached
    monkeypatch.setattr("editing.core.ddim_invert", lambda *a, **k: pytest.fail("inversion ran again"))
    second = edit_video(_request(tmp_path, "b.zip", prompt="a bear in the snow"))
    assert second.inversion_cached
    monkeypatch.undo()
    other_frames = edit_video(_request(tmp_path, "c.zip", attention="sparse-causal"))
    assert not other_frames.inversion_cached  # another attention mode inverts differently: another key


def test_cache_evicts_least_recently_used_entries_beyond_its_cap(tmp_path):
    entry = {"x": torch.zeros(1000)}
    cache = TensorCache(tmp_path, "inversions")
    cache.save("a", entry)
    cache.max_bytes = int(2.5 * (tmp_path / "inversions" / "a.pt").stat().st_size)  # room for two entries
    cache.save("b", entry)
    assert cache.load("a") is not None  # "a" is now more recent than "b"
    cache.save("c", entry)
    assert cache.load("b") is None and cache.load("a") is not None and cache.load("c") is not None
    (tmp_path / "inversions" / "a.pt").write_bytes(b"damaged")
    assert cache.load("a") is None and not (tmp_path / "inversions" / "a.pt").exists()


def test_cache_keys_follow_every_part():
    base = dict(source="abc", steps=10, prompt="")
    assert cache_key(**base) == cache_key(**dict(reversed(base.items())))
    for change in ({"source": "abd"}, {"steps": 11}, {"prompt": "a car"}):
        assert cache_key(**{**base, **change}) != cache_key(**base)


def test_flow_smoothing_and_color_matching_run_in_the_engine(tmp_path):
    plain = edit_video(_request(tmp_path, "plain.zip"))
    smooth = edit_video(_request(tmp_path, "smooth.zip", smooth_flow=True, smooth_color=True))
    assert plain.frames == smooth.frames == 4
    assert (tmp_path / "plain.zip").read_bytes() != (tmp_path / "smooth.zip").read_bytes()


def test_engine_settings_validate_themselves():
    with pytest.raises(ConfigError, match="attention must be one of"):
        EngineConfig(attention="diagonal")
    with pytest.raises(ConfigError, match="each control kind may appear once"):
        EngineConfig(controls=(ControlSpec("canny"), ControlSpec("canny", 0.5)))
    assert ControlSpec.parse("pose:0.8:0.1:0.6") == ControlSpec("pose", 0.8, 0.1, 0.6)
    with pytest.raises(ConfigError, match="kind\\[:scale"):
        ControlSpec.parse("pose:0.8:0.1")
    with pytest.raises(ConfigError, match="start < end"):
        ControlSpec.parse("depth:1:0.7:0.2")


PEAK_RSS = """
import json, resource, sys
from editing.config import EditConfig, EngineConfig, FrameSelection
from editing.pipeline import EditRequest, edit_video
frames, cache, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
request = EditRequest(video=sys.argv[4], output=out, edit=EditConfig(prompt="a watercolor painting", steps=2),
    selection=FrameSelection(max_frames=frames, size=128), model="tiny", device="cpu",
    engine=EngineConfig(attention="first", chunk=8, cache_dir=cache))
result = edit_video(request)
print(json.dumps({"frames": result.frames, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_a_200_frame_clip_edits_in_about_the_memory_of_16_frames(tmp_path):
    peaks = {}
    for count in (16, 200):
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(count), str(tmp_path / f"cache{count}"), str(tmp_path / f"{count}.mp4"), str(ASSETS / "cup.mp4")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-1000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["frames"] == count
        peaks[count] = report["peak_kb"]
    assert peaks[200] < 1.5 * peaks[16], peaks
