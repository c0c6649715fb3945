"""Motion modules (editing.motion) and context windows (editing.windows): properties that hold for any weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from editing import sampling
from editing.attention.modes import attention_mode_names
from editing.errors import ConfigError, ModelLoadError
from editing.lora import ModelOptions
from editing.models import load_motion_adapter
from editing.motion import MotionSpec, build_adapter, inflate, is_motion_unet, run_unet, spatial_layer
from editing.windows import ContextWindows, window_starts, window_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def motion_tiny():
    from editing.models import load_backbone

    return load_backbone("tiny", device="cpu", options=ModelOptions(motion_adapter="random"))


def _denoise(backbone, latents, plan, guidance_scale=4.0):
    guidance = sampling.Guidance(sampling.encode_text(backbone, "a red car", "", guided=True), guidance_scale)
    scheduler = backbone.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
    return sampling.denoise(backbone, sampling.Schedule(scheduler, timesteps), latents, guidance, plan)


# ---------------------------------------------------------------- windows


@pytest.mark.parametrize("num_frames", [1, 5, 16, 17, 30, 48, 129])
@pytest.mark.parametrize(
    "windows",
    [
        ContextWindows(16, 4, "uniform"),
        ContextWindows(16, 4, "static"),
        ContextWindows(8, 0, "static"),
        ContextWindows(6, 5, "uniform"),
    ],
)
def test_window_weights_sum_to_one_at_every_frame_and_cover_the_clip(num_frames, windows):
    for step in range(6):
        starts = window_starts(num_frames, windows, step)
        length = min(windows.length, num_frames)
        assert starts[0] == 0 and starts[-1] + length == num_frames
        assert all(b - a <= windows.stride for a, b in zip(starts, starts[1:]))  # neighbours overlap by OVERLAP or more
        total = [0.0] * num_frames
        for start, weights in zip(starts, window_weights(num_frames, starts, length)):
            assert len(weights) == length and all(w > 0 for w in weights)
            for i, w in enumerate(weights):
                total[start + i] += w
        assert total == pytest.approx([1.0] * num_frames, abs=1e-12)


def test_uniform_windows_move_between_steps_and_static_ones_do_not():
    uniform, static = ContextWindows(16, 4, "uniform"), ContextWindows(16, 4, "static")
    assert len({window_starts(48, uniform, step) for step in range(4)}) > 1
    assert len({window_starts(48, static, step) for step in range(4)}) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16", ContextWindows(16, 4)),
        ("12:3", ContextWindows(12, 3)),
        ("8:0:static", ContextWindows(8, 0, "static")),
        ("off", None),
    ],
)
def test_context_parses(text, expected):
    assert ContextWindows.parse(text) == expected


@pytest.mark.parametrize(("text", "field"), [("16:16", "overlap"), ("0", "length"), ("16:4:loop", "schedule"), ("a:b", "LENGTH")])
def test_bad_context_is_one_sentence_naming_it(text, field):
    with pytest.raises(ConfigError, match=field) as error:
        ContextWindows.parse(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("mode", ["none", "first"])
def test_a_clip_within_one_window_gives_exactly_the_unwindowed_result(motion_tiny, mode):
    latents = torch.randn(6, motion_tiny.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    windowed = _denoise(motion_tiny, latents, sampling.plan_frames(6, 4, mode, context=ContextWindows(8, 2)))
    whole = _denoise(motion_tiny, latents, sampling.plan_frames(6, 6, mode))
    assert torch.equal(windowed, whole)


def _largest_unet_batch(backbone, frames: int, context: ContextWindows) -> int:
    seen = []
    handle = backbone.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(args[0].shape[0] * (args[0].shape[2] if args[0].ndim == 5 else 1)), with_kwargs=True
    )
    try:
        _denoise(
            backbone,
            torch.randn(frames, backbone.latent_channels, 8, 8),
            sampling.plan_frames(frames, 8, "first", context=context),
        )
    finally:
        handle.remove()
    return max(seen)


def test_windows_keep_the_unet_batch_of_one_window_whatever_the_clip_length(tiny, motion_tiny):
    context = ContextWindows(8, 2)
    for backbone in (tiny, motion_tiny):
        assert (
            _largest_unet_batch(backbone, 8, context) == _largest_unet_batch(backbone, 24, context) == 2 * 8
        )  # two guidance branches


# ---------------------------------------------------------------- motion modules


def test_a_zero_initialised_motion_module_equals_the_plain_unet(tiny):
    unet = inflate(tiny.unet, build_adapter(tiny.unet.config, heads=4, zero=True))
    sample = torch.randn(2 * 5, tiny.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    text = sampling.encode_prompts(tiny, ["", "a red car"]).repeat_interleave(5, dim=0)
    with torch.no_grad():
        plain = tiny.unet(sample, 500, encoder_hidden_states=text).sample
        inflated = run_unet(unet, sample, 500, 2, text)
    torch.testing.assert_close(inflated, plain, atol=1e-5, rtol=1e-5)


def test_a_random_motion_module_changes_the_prediction_and_mixes_frames(tiny, motion_tiny):
    sample = torch.randn(4, tiny.latent_channels, 8, 8, generator=torch.Generator().manual_seed(2))
    text = sampling.encode_prompts(tiny, ["a red car"]).expand(4, -1, -1)
    with torch.no_grad():
        plain = tiny.unet(sample, 500, encoder_hidden_states=text).sample
        moved = run_unet(motion_tiny.unet, sample, 500, 1, text)
        changed_last = sample.clone()
        changed_last[3] += 1
        moved_again = run_unet(motion_tiny.unet, changed_last, 500, 1, text)
    assert not torch.allclose(plain, moved, atol=1e-4)
    assert not torch.allclose(moved[0], moved_again[0])  # frame 0 sees frame 3 through the temporal attention


def _processor_census(unet):
    """Record, for every attention call, whether the layer is spatial and which processor class ran it."""
    seen = {"spatial": set(), "temporal": set()}
    handles = []
    for name, module in unet.named_modules():
        if hasattr(module, "processor") and hasattr(module, "to_q"):
            place = "spatial" if spatial_layer(name) else "temporal"
            handles.append(
                module.register_forward_pre_hook(lambda m, *_, place=place: seen[place].add(type(m.processor).__name__))
            )
    return seen, handles


@pytest.mark.parametrize("mode", attention_mode_names())
def test_every_attention_mode_runs_with_a_motion_module_and_its_processors_stay_on_spatial_attention(tmp_path, motion_tiny, mode):
    from editing.models import load_backbone
    from editing.pipeline import edit_video
    from tests.conftest import small_edit

    request = dataclasses.replace(
        small_edit(tmp_path, mode, frames=4, attention=mode, keyframes="off"), model_options=ModelOptions(motion_adapter="random")
    )
    backbone = load_backbone("tiny", device="cpu", options=request.model_options)
    assert backbone is motion_tiny  # cached: the same inflated UNet
    seen, handles = _processor_census(backbone.unet)
    try:
        result = edit_video(request)
    finally:
        for handle in handles:
            handle.remove()
    assert result.frames == 4
    assert seen["temporal"] and seen["temporal"] <= {"AttnProcessor2_0", "AttnProcessor"}  # the motion modules' own
    if mode != "none":
        assert seen["spatial"] - {"AttnProcessor2_0", "AttnProcessor"}  # ours ran on the spatial layers
    count = sum(not spatial_layer(n) for n in backbone.unet.attn_processors)
    assert count == 20 and count + sum(spatial_layer(n) for n in backbone.unet.attn_processors) == len(
        backbone.unet.attn_processors
    )


def test_a_controlnet_runs_with_a_motion_module(tmp_path, motion_tiny):
    from editing.config import ControlSpec
    from editing.pipeline import edit_video

    request = small_edit_with_motion(tmp_path, "control")
    request = dataclasses.replace(request, engine=dataclasses.replace(request.engine, controls=(ControlSpec("canny"),)))
    assert edit_video(request).frames == 4


def small_edit_with_motion(tmp_path, name):
    from tests.conftest import small_edit

    return dataclasses.replace(
        small_edit(tmp_path, name, frames=4, keyframes="off"), model_options=ModelOptions(motion_adapter="random")
    )


def test_processors_outside_an_edit_are_the_motion_unets_own(motion_tiny):
    assert is_motion_unet(motion_tiny.unet)
    assert {type(p).__name__ for p in motion_tiny.unet.attn_processors.values()} <= {"AttnProcessor2_0", "AttnProcessor"}


# ---------------------------------------------------------------- specs and loading


@pytest.mark.parametrize(
    "spec",
    [
        "guoyww/animatediff-motion-adapter-v1-5-3",
        "ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors",
    ],
)
def test_hub_motion_adapters_offline_fail_in_one_sentence(tiny, spec, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_motion_adapter(MotionSpec.parse(spec), tiny.unet.config, tiny.name)
    message = str(error.value)
    assert message.startswith("cannot reach the Hugging Face Hub") and "\n" not in message and message.count(". ") == 0


@pytest.mark.parametrize(
    ("spec", "words"),
    [("owner/name/weights.bin", "not a Hub id"), ("./missing-folder", "does not exist"), ("", "must not be empty")],
)
def test_bad_motion_specs_are_one_sentence(spec, words):
    with pytest.raises(ConfigError, match=words):
        MotionSpec.parse(spec)


def test_the_shapes_motion_module_needs_the_shapes_model(tiny):
    with pytest.raises(ConfigError, match="--model shapes"):
        load_motion_adapter(MotionSpec.parse("shapes"), tiny.unet.config, tiny.name)


def test_an_adapter_for_another_unet_is_refused(tiny):
    from editing.motion import check_fits

    other = build_adapter(
        {**tiny.unet.config, "block_out_channels": tuple(2 * c for c in tiny.unet.config.block_out_channels)}, heads=4
    )
    with pytest.raises(ConfigError, match="channels"):
        check_fits(other, tiny.unet.config, "other")


def test_context_windows_refuse_tokenflow_and_the_feature_bank_and_a_motion_module_refuses_tuned_weights():
    from editing.compat import features, refusal
    from editing.config import EngineConfig

    assert "tokenflow" in refusal(features(EngineConfig(attention="tokenflow", context="8:2")))
    assert "feature_bank" in refusal(features(EngineConfig(context="8:2", feature_bank=2)))
    assert refusal(features(EngineConfig(context="8:2"))) is None
    assert "--tuned" in refusal(["motion-adapter", *features(EngineConfig(attention="sparse-causal"), tuned="x.safetensors")])


def test_a_motion_module_turns_the_default_keyframes_off():
    from editing.config import DEFAULT_KEYFRAMES, default_keyframes

    assert default_keyframes({"attention": "first"}) == DEFAULT_KEYFRAMES
    assert default_keyframes({"attention": "first", "motion_adapter": "shapes"}) is None


# ---------------------------------------------------------------- presets


def test_motion_presets_name_their_motion_modules_and_timelines():
    from editing.models import SD1_SCHEDULER
    from editing.presets import get_preset
    from editing.samplers import make_scheduler

    lcm, lightning = get_preset("animatelcm"), get_preset("animatediff-lightning-4")
    assert lcm.motion_adapter == "wangfuyun/AnimateLCM" and lcm.sampler == "lcm" and lcm.steps_run == 4
    assert (
        lightning.motion_adapter.endswith("animatediff_lightning_4step_diffusers.safetensors")
        and lightning.lora == ""
        and lightning.guidance == 1
    )
    scheduler = make_scheduler(lightning.sampler, SD1_SCHEDULER)
    assert [int(t) for t in sampling.sampling_timesteps(scheduler, lightning.steps, lightning.strength)] == [
        499,
        374,
        249,
        124,
    ]  # trailing Euler


@pytest.mark.parametrize("name", ["animatelcm", "animatediff-lightning-1"])
def test_motion_presets_run_on_the_random_model_with_context_windows(tmp_path, car, name):
    from editing.cli import build_parser, edit_request
    from editing.pipeline import edit_video
    from editing.requests import explicit_options

    argv = [
        "edit",
        str(car),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / f"{name}.zip"),
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--size",
        "64",
        "--frames",
        "3",
        "--preset",
        name,
    ]
    args = build_parser().parse_args(argv)
    args.given_options = explicit_options("edit", argv[1:])
    request = edit_request(args)
    assert MotionSpec.parse(request.model_options.motion_adapter).kind == "random" and request.engine.feature_bank == 0
    assert edit_video(request).frames == 3


def test_motion_presets_refuse_the_shapes_model():
    from editing.presets import apply_preset
    from editing.requests import defaults

    with pytest.raises(ConfigError, match="shapes model"):
        apply_preset(defaults("edit") | {"preset": "animatelcm", "model": "shapes"}, defaults("edit"))


# ---------------------------------------------------------------- the module trained here


def test_the_shapes_motion_module_is_found_by_name_with_its_manifest():
    import json

    from editing.models import load_backbone
    from editing.motion import SHAPES_MOTION_DIR

    manifest = json.loads((SHAPES_MOTION_DIR / "manifest.json").read_text())
    training = json.loads((SHAPES_MOTION_DIR / "training.json").read_text())
    assert (
        manifest["backbone"] == "shapes"
        and manifest["frames"] == 16
        and training["steps"] > 0
        and training["seconds_per_step"] > 0
    )
    size = sum(p.stat().st_size for p in SHAPES_MOTION_DIR.iterdir())
    assert size <= 20 * 1024**2
    backbone = load_backbone("shapes", device="cpu", options=ModelOptions(motion_adapter="shapes"))
    assert is_motion_unet(backbone.unet) and backbone.unet.config.motion_max_seq_length >= 16


def test_training_clips_never_use_the_benchmarks_seeds():
    from shapes_world.benchmark import BASE_SEED
    from shapes_world.train_motion import MotionTrainConfig, clip_seed

    config = MotionTrainConfig()
    seeds = {clip_seed(config, step, i) for step in range(0, 100_000, 997) for i in range(config.motion_batch)}
    assert not any(BASE_SEED <= s < BASE_SEED + 10_000 for s in seeds)
