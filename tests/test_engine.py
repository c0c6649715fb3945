"""The video engine's properties, which hold for any weights: inversion, chunking, ControlNet, caching."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import zipfile
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from editing import sampling
from editing.cache import TensorCache, cache_key
from editing.config import ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.errors import ConfigError
from editing.inversion import ddim_invert, inverse_schedule
from editing.models import load_backbone, load_controlnet
from editing.pipeline import EditRequest, edit_video
from editing.video_io import read_clip

from .conftest import ASSETS


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
        results.append(
            sampling.denoise(
                tiny, sampling.Schedule(scheduler, timesteps), latents, guidance, sampling.plan_frames(4, chunk, "first")
            )
        )
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)  # batch size changes only rounding


def context_plan(num_frames: int, chunk: int, mode: str, window: int, depth: int) -> sampling.FramePlan:
    """plan_frames' chunks, each also holding every frame that can reach its targets through `depth` stacked
    cross-frame attention layers.

    One layer of `sparse-causal` attention passes information one frame forward, one of `window` attention
    `window` frames either way; the anchor frames are in every chunk and are attended to by every frame, so
    under `window` their own neighbourhood must be there too. plan_frames holds the frames the targets attend
    to (depth 1); the frames of that context then attend to a truncated set themselves."""
    base = sampling.plan_frames(num_frames, chunk, mode, window)
    reach = (1 if mode == "sparse-causal" else window) * depth
    batches = []
    for batch in base.batches:
        ids = set(batch.ids) | set(range(max(0, batch.targets[0] - reach), batch.targets[0]))
        if mode == "window":
            for centre in (batch.targets[-1], *base.anchors):
                ids |= {f for f in range(centre - reach, centre + reach + 1) if 0 <= f < num_frames}
        batches.append(sampling.FrameBatch(tuple(sorted(ids)), batch.targets))
    return sampling.FramePlan(mode, tuple(batches), base.anchors, base.window)


@pytest.fixture(scope="module")
def long_latents(tiny):
    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=16, stride=2, size=64))
    return sampling.encode_frames(tiny, clip.frames, batch_size=16)


@pytest.mark.parametrize("mode, window", [("sparse-causal", 2), ("window", 1)])
def test_chunked_attention_equals_one_batch_when_each_chunk_holds_the_context_of_every_layer(tiny, long_latents, mode, window):
    """Chunking changes nothing when each chunk holds every frame its targets depend on through all the
    UNet's self-attention layers. Control: with only the frames the targets attend to directly (plan_frames'
    context, one layer deep) the results differ, so the comparison detects missing context."""
    frames = long_latents.shape[0]
    depth = sum(1 for name in tiny.unet.attn_processors if ".attn1." in name)
    guidance = sampling.Guidance(sampling.encode_text(tiny, "a car", "", guided=True), 5.0)

    def run(plan):
        scheduler = tiny.scheduler()
        return sampling.denoise(
            tiny, sampling.Schedule(scheduler, sampling.sampling_timesteps(scheduler, 2, 1.0)), long_latents, guidance, plan
        )

    whole = run(sampling.plan_frames(frames, frames, mode, window))
    deep = context_plan(frames, 4, mode, window, depth)
    assert len(deep.batches) == 4 and any(len(batch.ids) < frames for batch in deep.batches)  # really chunked
    torch.testing.assert_close(run(deep), whole, atol=1e-4, rtol=1e-4)
    # plan_frames gives these modes one layer of context: chunked runs approximate the one-batch run (with
    # the tiny model the error falls about tenfold per extra layer of context). Should plan_frames ever hold
    # the full depth, take it out of this control.
    for shallow in (context_plan(frames, 4, mode, window, 1), sampling.plan_frames(frames, 4, mode, window)):
        assert not torch.allclose(run(shallow), whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["first", "sparse-causal"])
def test_inversion_reconstructs_far_better_than_fresh_noise(tiny, clip_latents, mode):
    """Editing from the DDIM-inverted latents with the source prompt and guidance 1 retraces the source."""
    clip, clean = clip_latents
    text = sampling.encode_text(tiny, "a car on a road", "", guided=False)
    plan = sampling.plan_frames(clip.num_frames, 4, mode)
    trajectory = ddim_invert(tiny, clean, inverse_schedule(tiny, 10, 1.0), text, plan)
    assert trajectory.states.shape[0] == 11 and torch.equal(trajectory.states[0], clean)
    errors = []
    for start in (trajectory.final, torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))):
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, 10, 1.0)
        result = sampling.denoise(tiny, sampling.Schedule(scheduler, timesteps), start, sampling.Guidance(text, 1.0), plan)
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
        sampling.denoise(
            tiny,
            sampling.Schedule(scheduler, timesteps),
            latents,
            sampling.Guidance(text, 5.0, controls),
            plan,
            sampling.LoopHooks(callback=lambda i, t, x: steps.append(x.clone())),
        )
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
    model_input = scheduler.scale_model_input(latents, t)
    two_halves = sampling.guided_noise(tiny, model_input, t, sampling.Guidance(text, 1.0, (half, half)))
    whole = sampling.guided_noise(
        tiny, model_input, t, sampling.Guidance(text, 1.0, (sampling.ControlSignal(controlnet, images, 1.0),))
    )
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


def test_generic_cache_key_is_order_free_and_follows_its_parts():
    base = dict(source="abc", steps=10, prompt="")
    assert cache_key(**base) == cache_key(**dict(reversed(base.items())))
    for change in ({"source": "abd"}, {"steps": 11}, {"prompt": "a car"}):
        assert cache_key(**{**base, **change}) != cache_key(**base)


KEY_BASE = dict(
    prompt="a watercolor painting",
    negative_prompt="",
    guidance=5.0,
    sampler="ddim",
    steps=2,
    frames=3,
    stride=5,
    size=64,
    model="tiny",
    dtype=None,
    engine={},
)

# Each change of what the DDIM inversion depends on must invert again (a cache miss).
REINVERTING_CHANGES = [
    pytest.param({"engine": {"inversion_prompt": "a car on a road"}}, id="inversion-prompt"),
    pytest.param({"frames": 2}, id="frame-count"),
    pytest.param({"stride": 4}, id="frame-stride"),
    pytest.param({"size": 80}, id="size"),
    pytest.param({"model": "shapes"}, id="model"),
    pytest.param({"dtype": "bf16"}, id="dtype"),
    pytest.param({"engine": {"chunk": 2}}, id="chunk"),
    pytest.param({"engine": {"attention": "sparse-causal"}}, id="attention"),
    pytest.param({"engine": {"feature_bank": 2, "chunk": 2}, "frames": 4}, id="feature-bank"),
    pytest.param({"engine": {"token_merge": 0.5}}, id="token-merge"),
    pytest.param({"steps": 3}, id="steps"),
]
# Changes that leave the inversion as it was: the cached one is reused.
REUSING_CHANGES = [
    pytest.param({"prompt": "a bear in the snow"}, id="prompt"),
    pytest.param({"prompt": "a bear in the snow", "negative_prompt": "blurry", "guidance": 3.0}, id="prompt-negative-guidance"),
    # Every sampler samples along DDIM inversion's timesteps, so one inversion serves them all.
    pytest.param({"prompt": "a bear in the snow", "sampler": "dpm-solver++"}, id="prompt-and-sampler"),
]


def _keyed_edit(tmp_path, name: str, change: dict | None = None):
    """A small edit sharing one cache folder; returns its result and how many inversion steps it ran."""
    parts = {**KEY_BASE, **(change or {})}
    request = EditRequest(
        video=str(ASSETS / "car-turn.mp4"),
        output=str(tmp_path / name),
        edit=EditConfig(
            prompt=parts["prompt"],
            negative_prompt=parts["negative_prompt"],
            steps=parts["steps"],
            guidance=parts["guidance"],
            sampler=parts["sampler"],
        ),
        selection=FrameSelection(max_frames=parts["frames"], stride=parts["stride"], size=parts["size"]),
        model=parts["model"],
        device="cpu",
        dtype=parts["dtype"],
        engine=EngineConfig(cache_dir=str(tmp_path / "cache"), **parts["engine"]),
    )
    reports = []
    result = edit_video(request, lambda stage, done, total: reports.append((stage, done)))
    return result, sum(1 for stage, done in reports if stage == "invert" and done > 0)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache folder holding the inversion of the KEY_BASE edit, checked to be reused by the same request."""
    tmp_path = tmp_path_factory.mktemp("keys")
    first, steps_run = _keyed_edit(tmp_path, "first.zip")
    assert not first.inversion_cached and steps_run == KEY_BASE["steps"]
    same, steps_run = _keyed_edit(tmp_path, "same.zip")  # control: the unchanged request is a cache hit
    assert same.inversion_cached and steps_run == 0
    return tmp_path / "cache"


@pytest.mark.parametrize("change", REINVERTING_CHANGES)
def test_the_pipeline_inverts_again_when_what_the_inversion_depends_on_changes(tmp_path, warm_cache, change):
    shutil.copytree(warm_cache, tmp_path / "cache")
    changed, steps_run = _keyed_edit(tmp_path, "changed.zip", change)
    assert not changed.inversion_cached and steps_run > 0


@pytest.mark.parametrize("change", REUSING_CHANGES)
def test_the_pipeline_reuses_the_inversion_when_only_the_prompt_changes(tmp_path, warm_cache, change):
    shutil.copytree(warm_cache, tmp_path / "cache")
    second, steps_run = _keyed_edit(tmp_path, "second.zip", change)
    assert second.inversion_cached and steps_run == 0


def _zip_frames(path) -> np.ndarray:
    """The frames of a written .zip of PNGs, in order."""
    with zipfile.ZipFile(path) as archive:
        return np.stack([np.asarray(Image.open(archive.open(name)).convert("RGB")) for name in sorted(archive.namelist())])


@pytest.fixture(scope="module")
def smoothing_runs(tmp_path_factory):
    """The same edit plain, with flow smoothing only, colour matching only, and both."""
    tmp_path = tmp_path_factory.mktemp("smoothing")
    runs = {}
    for name, options in {
        "plain": {},
        "flow": {"smooth_flow": True},
        "color": {"smooth_color": True},
        "both": {"smooth_flow": True, "smooth_color": True},
    }.items():
        result = edit_video(_request(tmp_path, f"{name}.zip", **options))
        assert result.frames == 4
        runs[name] = _zip_frames(tmp_path / f"{name}.zip")
    return runs


def _lab_mean(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3).mean(0)


def test_flow_smoothing_alone_changes_the_frames_after_the_first(smoothing_runs):
    """Fusion blends frames 1.. with the warped previous frame; under `first` attention frame 0 depends only
    on itself, so it stays the plain edit's (up to float rounding: at most one grey level)."""
    plain, flow = (smoothing_runs[name].astype(int) for name in ("plain", "flow"))
    assert np.abs(flow[0] - plain[0]).max() <= 1
    assert all(np.abs(flow[t] - plain[t]).mean() > 1 for t in range(1, len(plain)))


def test_color_matching_alone_moves_every_frame_towards_the_first_frames_colours(smoothing_runs):
    plain, color = smoothing_runs["plain"], smoothing_runs["color"]
    assert np.array_equal(color[0], plain[0])  # the reference frame is kept
    for t in range(1, len(plain)):
        assert not np.array_equal(color[t], plain[t])
        matched = np.abs(_lab_mean(color[t]) - _lab_mean(plain[0])).sum()
        unmatched = np.abs(_lab_mean(plain[t]) - _lab_mean(plain[0])).sum()
        assert matched < unmatched, (t, matched, unmatched)


def test_both_smoothings_together_differ_from_each_alone(smoothing_runs):
    both = smoothing_runs["both"]
    for alone in ("flow", "color"):
        assert not np.array_equal(both, smoothing_runs[alone])
    # Colour matching runs last, on the flow-smoothed frames.
    from editing.temporal import match_colors

    assert np.array_equal(both, match_colors(smoothing_runs["flow"]))


@pytest.mark.parametrize("failing", ["write_gif", "write_png_zip"])
def test_no_partial_file_is_left_when_a_later_format_fails(tmp_path, monkeypatch, failing):
    """The mp4 is written first, then the GIF and the zip: when one of those fails half-way, no half-written
    file stays, the complete files are kept (the frames are never lost) and the result says what failed."""
    from editing import video_io

    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.gif").write_bytes(b"GIF89a from an earlier edit")  # what was there is left as it was
    failed_name = {"write_gif": "edit.gif", "write_png_zip": "edit.zip"}[failing]

    def fails_half_way(path, *args, **kwargs):
        with video_io.atomic_output(path) as partial:
            partial.write_bytes(b"half a file")
            raise OSError("No space left on device")

    monkeypatch.setattr(video_io, failing, fails_half_way)
    request = dataclasses.replace(_request(tmp_path, "out/edit.mp4"), also_write=(str(out / "edit.gif"), str(out / "edit.zip")))
    result = edit_video(request)
    names = sorted(p.name for p in out.iterdir())
    assert failed_name not in names and not [n for n in names if n.startswith(".")]  # no partial file
    assert not [p for p in out.iterdir() if b"half a file" in p.read_bytes()]
    assert "edit.mp4" in names and video_io.probe(out / "edit.mp4").frame_count == result.frames
    assert any(failed_name in warning for warning in result.warnings)
    assert (out / "earlier.gif").read_bytes() == b"GIF89a from an earlier edit"
    monkeypatch.undo()  # control: with working writers every file is there
    edit_video(request)
    assert sorted(p.name for p in out.iterdir()) == ["earlier.gif", "edit.gif", "edit.mp4", "edit.zip"]


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


@contextlib.contextmanager
def recorded_unet_work(unet):
    """Record the largest UNet batch and the longest self-attention key sequence (tokens attended to) of the
    calls made inside the block.

    Module hooks, not a processor: the edit installs its own attention processors while it runs, and hooks
    on the UNet and its `attn1` modules stay in place through those swaps. The key length is read from the
    fused attention call that the self-attention layers make; all hooks are removed in `finally`."""
    seen = {"batch": 0, "keys": 0, "unet_calls": 0}
    inside_self_attention = []
    fused = F.scaled_dot_product_attention

    def recording_attention(query, key, value, *args, **kwargs):
        if inside_self_attention:
            seen["keys"] = max(seen["keys"], key.shape[-2])
        return fused(query, key, value, *args, **kwargs)

    def on_unet(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen["batch"] = max(seen["batch"], sample.shape[0])
        seen["unet_calls"] += 1

    handles = [unet.register_forward_pre_hook(on_unet, with_kwargs=True)]
    for name, module in unet.named_modules():
        if name.endswith(".attn1"):
            handles.append(module.register_forward_pre_hook(lambda *_: inside_self_attention.append(True)))
            handles.append(module.register_forward_hook(lambda *_: inside_self_attention.pop()))
    try:
        with mock.patch.object(F, "scaled_dot_product_attention", recording_attention):
            yield seen
    finally:
        for handle in handles:
            handle.remove()


def _measured_edit(tmp_path, frames: int, chunk: int, attention: str) -> dict:
    """The largest UNet batch and self-attention length of a whole edit (inversion and denoising) of `frames` frames."""
    request = EditRequest(
        video=str(ASSETS / "cup.mp4"),
        output=str(tmp_path / f"{attention}-{frames}-{chunk}.zip"),
        edit=EditConfig(prompt="a watercolor painting", steps=2),
        selection=FrameSelection(max_frames=frames, size=64),
        model="tiny",
        device="cpu",
        engine=EngineConfig(attention=attention, chunk=chunk, cache_dir=str(tmp_path / "cache")),
    )
    with recorded_unet_work(load_backbone("tiny", device="cpu").unet) as seen:
        result = edit_video(request)
    assert result.frames == frames and seen["unet_calls"] > 0 and seen["keys"] > 0
    return seen


@pytest.mark.parametrize("attention", ["first", "full"])
def test_a_200_frame_clip_runs_the_unet_on_batches_no_larger_than_a_16_frame_one(tmp_path, attention):
    """What bounds memory is the UNet's batch and its self-attention length: chunking keeps both those of one
    chunk (plus its context), whatever the clip length. The unchunked control shows that they grow otherwise."""
    sixteen = _measured_edit(tmp_path, 16, 8, attention)
    two_hundred = _measured_edit(tmp_path, 200, 8, attention)
    assert (two_hundred["batch"], two_hundred["keys"]) == (sixteen["batch"], sixteen["keys"])
    assert two_hundred["unet_calls"] > sixteen["unet_calls"]
    unchunked = _measured_edit(tmp_path, 24, 24, attention)  # control: chunk >= frames, one batch for the clip
    assert unchunked["batch"] > sixteen["batch"]
    if attention == "full":  # every frame attends to every frame of its batch: the key length grows too
        assert unchunked["keys"] > sixteen["keys"]
