"""One-shot tuning (Tune-A-Video): inflation, training, files, reuse, editing with the tuned model, CLI."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from editing import sampling
from editing.attention.cross_frame import CrossFrameAttnProcessor, LayerCall, cross_frame_attention, layer_kwargs, layout_for
from editing.attention.tuned import LayerWeights, TemporalAttention, TunedAttnProcessor, TunedControl, copy_linear
from editing.cli import main
from editing.config import AttentionEditConfig, ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.errors import ConfigError, TuningError
from editing.evaluate import read_png_zip
from editing.pipeline import EditRequest, edit_video
from editing.tuning import (
    TuneConfig,
    TuneRequest,
    denoising_loss,
    inflate,
    load_tuned,
    needs_loss_scaling,
    save_tuned,
    training_draws,
    tune_video,
    tune_weights,
)
from editing.video_io import probe, read_clip

SELECTION = FrameSelection(max_frames=4, size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_latents(tiny, car):
    """Latents of 4 real frames and the embedding of their prompt."""
    frames = read_clip(car, SELECTION).frames
    return sampling.encode_frames(tiny, frames, 4), sampling.encode_prompts(tiny, ["a car turning"])


def unet_output(backbone, latents, text, control=None, seed=0):
    """The UNet's noise prediction for noised latents, sparse-causal, with or without the tuned processors."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    noisy = backbone.scheduler().add_noise(latents, noise, torch.tensor([400]))
    layout = layout_for("sparse-causal", list(range(len(latents))))
    attention = cross_frame_attention(backbone.unet) if control is None else control.processors(backbone.unet)
    with attention, torch.no_grad():
        kwargs = layer_kwargs(layout)
        return backbone.unet(
            noisy, 400, encoder_hidden_states=text.expand(len(latents), -1, -1), cross_attention_kwargs=kwargs
        ).sample


def test_processor_on_one_attention_module():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    x, context = torch.randn(3, 5, 16), torch.randn(3, 7, 8)
    layout = layout_for("full", [0, 1, 2])
    weights = LayerWeights(copy_linear(attn.to_q), TemporalAttention(16, 2))
    tuned = TunedAttnProcessor(weights, CrossFrameAttnProcessor())
    attn.set_processor(CrossFrameAttnProcessor())
    with torch.no_grad():
        base = attn(x, encoder_hidden_states=context, call=LayerCall(layout))
    attn.set_processor(tuned)
    with torch.no_grad():
        assert torch.equal(attn(x, encoder_hidden_states=context, call=LayerCall(layout)), base)  # zero-initialised output
        torch.nn.init.normal_(weights.temporal.to_out.weight)
        out = attn(x, encoder_hidden_states=context, call=LayerCall(layout))
        changed = x.clone()
        changed[2, 3] += 1.0  # one token of the last frame
        diff = (attn(changed, encoder_hidden_states=context, call=LayerCall(layout)) - out).abs().amax(-1)
    assert not torch.equal(out, base)
    # Cross-attention keeps frames apart: frame 0 changes only through temporal attention, at that position.
    assert diff[0, 3] > 0 and torch.all(diff[0, [0, 1, 2, 4]] == 0)
    with pytest.raises(ValueError, match="frame layout"):
        with torch.no_grad():
            attn(x, encoder_hidden_states=context)


def test_untuned_inflated_unet_equals_base_in_sparse_causal_mode(tiny, clip_latents):
    latents, text = clip_latents
    base = unet_output(tiny, latents, text)
    inflated = unet_output(tiny, latents, text, TunedControl(inflate(tiny, seed=0)))
    torch.testing.assert_close(inflated, base, rtol=0, atol=1e-6)


def test_loss_falls_and_base_weights_stay_unchanged(tiny, clip_latents):
    latents, text = clip_latents
    before = {name: tensor.clone() for name, tensor in tiny.unet.state_dict().items()}
    processors = {name: type(p) for name, p in tiny.unet.attn_processors.items()}
    calls = []
    config = TuneConfig("a car turning", SELECTION, steps=24, learning_rate=1e-2)
    weights, losses = tune_weights(tiny, latents, text, config, lambda *args: calls.append(args))
    assert len(losses) == 24 and calls[-1] == ("tune", 24, 24)
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
    # On the very draws it was trained on, the tuned model's loss is below the untuned one's.
    assert objective(tiny, weights, latents, text, config) < objective(tiny, inflate(tiny, 0), latents, text, config)
    after = tiny.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {name: type(p) for name, p in tiny.unet.attn_processors.items()} == processors
    assert not any(p.requires_grad for p in tiny.unet.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(weights.parameters(), inflate(tiny, 0).parameters()))


def objective(backbone, weights, latents, text, config) -> float:
    """Mean denoising loss of inflated weights over the training draws of `config`."""
    layout = layout_for("sparse-causal", list(range(len(latents))))
    draws = training_draws(config, tuple(latents.shape), backbone.scheduler_config["num_train_timesteps"])
    with TunedControl(weights).processors(backbone.unet), torch.no_grad():
        return (
            sum(float(denoising_loss(backbone, latents, text, t, noise.to(latents), layout)) for t, noise in draws) / config.steps
        )


def test_gradient_checkpointing_gives_the_same_training(tiny, clip_latents):
    latents, text = clip_latents
    config = TuneConfig("a car turning", SELECTION, steps=2, learning_rate=1e-2)
    _, plain = tune_weights(tiny, latents, text, config)
    _, checkpointed = tune_weights(tiny, latents, text, dataclasses.replace(config, gradient_checkpointing=True))
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    assert not tiny.unet.is_gradient_checkpointing


def test_gradients_through_fp16_are_loss_scaled(tiny, clip_latents, monkeypatch):
    """When loss scaling is needed, backward runs on the scaled loss (gradients times the scale) and the
    gradients are unscaled before clipping and the step. An fp16 model needs a GPU, so on the CPU the
    decision is forced and the gradients of one training step are compared with an unscaled run."""
    assert needs_loss_scaling(torch.float16, "no")  # an fp16 model on a GPU, even without autocast
    assert needs_loss_scaling(torch.float32, "fp16")
    assert not needs_loss_scaling(torch.float32, "no") and not needs_loss_scaling(torch.bfloat16, "bf16")
    latents, text = clip_latents
    config = TuneConfig("a car turning", SELECTION, steps=1, learning_rate=1e-2)
    seen = []  # (gradient norm before unscaling, after, scale) of each run's one step
    unscale = torch.amp.GradScaler.unscale_

    def gradient_norm(optimizer) -> float:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.stack([g.norm() for g in grads]).norm())

    def recording_unscale(scaler, optimizer):
        before = gradient_norm(optimizer)
        unscale(scaler, optimizer)
        seen.append((before, gradient_norm(optimizer), scaler.get_scale() if scaler.is_enabled() else 1.0))

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", recording_unscale)
    for scaled in (False, True):
        monkeypatch.setattr("editing.tuning.needs_loss_scaling", lambda dtype, mixed_precision: scaled)
        tune_weights(tiny, latents, text, config)
    assert len(seen) == 2, "the gradients are not unscaled before clipping and the step"
    (plain_backward, plain_step, _), (scaled_backward, scaled_step, scale) = seen
    assert scale > 1 and plain_backward == plain_step
    assert scaled_backward == pytest.approx(scale * plain_backward, rel=1e-4)  # backward saw the scaled loss
    assert scaled_step == pytest.approx(plain_step, rel=1e-4)  # the optimiser sees the true gradients


def test_save_then_load_gives_identical_outputs_and_other_bases_are_refused(tiny, clip_latents, tmp_path):
    latents, text = clip_latents
    weights, _ = tune_weights(tiny, latents, text, TuneConfig("a car", SELECTION, steps=2, learning_rate=1e-2))
    path = tmp_path / "tuned.safetensors"
    save_tuned(
        path, weights, {"format": "editing-tuned/1", "base": _identity(tiny), "base_name": tiny.name, "settings": {"steps": 2}}
    )
    tuned = unet_output(tiny, latents, text, TunedControl(weights))
    loaded = unet_output(tiny, latents, text, load_tuned(path, tiny))
    assert torch.equal(loaded, tuned)
    assert not torch.allclose(tuned, unet_output(tiny, latents, text), atol=1e-4)  # tuning changed the model
    assert json.loads(path.with_suffix(".json").read_text())["base_name"] == "tiny"
    other = dataclasses.replace(tiny, name="another-model")
    with pytest.raises(TuningError, match="tuned on model 'tiny'"):
        load_tuned(path, other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TuningError, match="not a readable"):
        load_tuned(tmp_path / "junk.safetensors", tiny)


def _identity(backbone):
    from editing.tuning import base_identity

    return base_identity(backbone)


def test_a_tuning_is_reused_for_the_same_clip_and_settings(car, tmp_path, monkeypatch):
    config = TuneConfig("a car turning", SELECTION, steps=2, learning_rate=1e-3)
    calls = []
    request = TuneRequest(str(car), config, str(tmp_path / "a.safetensors"), "tiny", "cpu", cache_dir=str(tmp_path / "cache"))
    first = tune_video(request, lambda *args: calls.append(args))
    assert not first.reused and ("tune", 2, 2) in calls
    calls.clear()
    second = tune_video(dataclasses.replace(request, output=str(tmp_path / "b.safetensors")), lambda *args: calls.append(args))
    assert second.reused and not [c for c in calls if c[0] == "tune"]
    assert (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "a.safetensors").read_bytes()
    checkpointed = tune_video(dataclasses.replace(request, config=dataclasses.replace(config, gradient_checkpointing=True)))
    assert checkpointed.reused  # checkpointing trades memory for time; the weights would be the same
    third = tune_video(dataclasses.replace(request, config=dataclasses.replace(config, seed=1)), lambda *args: calls.append(args))
    assert not third.reused  # other settings tune again
    cached = sorted((tmp_path / "cache" / "tunings").glob("*.safetensors"))
    assert len(cached) == 2
    monkeypatch.setattr("editing.tuning.TUNINGS_MAX_BYTES", 1)
    fourth = tune_video(dataclasses.replace(request, config=dataclasses.replace(config, seed=2)))
    assert not fourth.reused
    folder = tmp_path / "cache" / "tunings"  # over the cap, only the newest tuning (and its JSON) stays
    assert sorted(p.name for p in folder.iterdir()) == [f"{fourth.metadata['key']}.json", f"{fourth.metadata['key']}.safetensors"]


def test_the_tunings_cache_evicts_the_least_recently_used_beyond_its_cap(tmp_path):
    from editing.tuning import evict_tunings

    for age, name in enumerate("abc"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"x" * 100)
        (tmp_path / f"{name}.json").write_text("{}")
        os.utime(tmp_path / f"{name}.safetensors", ns=(age * 10**9, age * 10**9))  # a is the least recently used
    evict_tunings(tmp_path, max_bytes=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.safetensors", "c.json", "c.safetensors"]
    evict_tunings(tmp_path, max_bytes=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]  # the newest always stays


def test_tune_config_and_request_refuse_bad_settings(tiny):
    with pytest.raises(ConfigError, match="learning rate"):
        TuneConfig("a car", learning_rate=0)
    with pytest.raises(ConfigError, match="mixed precision"):
        TuneConfig("a car", mixed_precision="fp8")
    with pytest.raises(ConfigError, match=".safetensors"):
        TuneRequest("clip.mp4", TuneConfig("a car"), "tuned.pt")
    from editing.tuning import autocast

    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        autocast(torch.device("cpu"), "bf16")
    with pytest.raises(ConfigError, match="sparse-causal"):
        EditRequest("v.mp4", "o.mp4", EditConfig("x"), engine=EngineConfig(attention="none"), tuned="t.safetensors")
    with pytest.raises(ConfigError, match="null-text"):
        EditRequest(
            "v.mp4", "o.mp4", EditConfig("x"), attention_edit=AttentionEditConfig("a car", null_text=True), tuned="t.safetensors"
        )


@pytest.fixture(scope="module")
def tuned_file(car, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tuned")
    config = TuneConfig("a car turning", SELECTION, steps=2, learning_rate=1e-2)
    return tune_video(TuneRequest(str(car), config, str(folder / "car.safetensors"), "tiny", "cpu", cache_dir=str(folder))).path


def test_tuned_edit_combines_with_controlnet_and_attention_editing(car, tuned_file, tmp_path):
    engine = EngineConfig(attention="sparse-causal", chunk=4, cache_dir=str(tmp_path), controls=(ControlSpec("canny"),))
    common = dict(video=str(car), selection=SELECTION, engine=engine, model="tiny", device="cpu")
    edit = EditConfig("a jeep turning", steps=2, guidance=2.0)
    attention = AttentionEditConfig("a car turning", edit="refine", blend_words=("car",))
    edit_video(EditRequest(output=str(tmp_path / "plain.zip"), edit=edit, attention_edit=attention, **common))
    tuned = edit_video(
        EditRequest(output=str(tmp_path / "tuned.zip"), edit=edit, attention_edit=attention, tuned=tuned_file, **common)
    )
    assert (tuned.frames, tuned.width) == (4, 64)
    assert not np.array_equal(read_png_zip(tmp_path / "tuned.zip"), read_png_zip(tmp_path / "plain.zip"))
    first = edit_video(EditRequest(output=str(tmp_path / "a.zip"), edit=edit, tuned=tuned_file, **common))
    assert not first.inversion_cached  # a tuned inversion never comes from the plain one's cache
    again = edit_video(EditRequest(output=str(tmp_path / "b.zip"), edit=edit, tuned=tuned_file, **common))
    assert again.inversion_cached and np.array_equal(read_png_zip(tmp_path / "a.zip"), read_png_zip(tmp_path / "b.zip"))


def test_cli_tune_then_edit_with_the_tuned_model(car, tmp_path, capsys):
    weights = tmp_path / "tuned.safetensors"
    tune = ["tune", str(car), "--prompt", "a car turning", "--steps", "2", "--frames", "4", "--size", "64"]
    assert main([*tune, "--out", str(weights), "--model", "tiny", "--device", "cpu", "--cache-dir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(weights) and weights.exists() and not result["reused"]
    out = tmp_path / "edited.mp4"
    edit = [
        "edit",
        str(car),
        "--prompt",
        "a jeep",
        "--out",
        str(out),
        "--model",
        "tiny",
        "--frames",
        "4",
        "--size",
        "64",
        "--steps",
        "2",
    ]
    assert (
        main([*edit, "--tuned", str(weights), "--device", "cpu", "--cache-dir", str(tmp_path), "--json"]) == 0
    )  # its own attention mode
    assert probe(out).frame_count == 4 and json.loads(capsys.readouterr().out)["tuned"] == str(weights)
    capsys.readouterr()
    assert main([*edit, "--tuned", str(tmp_path / "missing.safetensors"), "--attention", "sparse-causal", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "do not exist" in err and err.count("\n") == 1
    assert main([*tune, "--out", str(tmp_path / "x.pt"), "--model", "tiny"]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert (
        main([*edit, "--tuned", str(weights), "--attention", "sparse-causal", "--device", "cpu", "--model", "sd15-random"]) == 2
    )
    err = capsys.readouterr().err
    assert "tuned on model 'tiny'" in err and err.count("\n") == 1


def test_an_edit_with_tuned_weights_takes_their_attention_mode_unless_told(tiny, tmp_path):
    from editing.cli import DEFAULT_ATTENTION, build_parser, edit_request
    from editing.tuning import FORMAT
    from ui.edit_tab import request_from

    path = tmp_path / "t.safetensors"
    save_tuned(
        path,
        inflate(tiny, 0),
        {"format": FORMAT, "base": _identity(tiny), "base_name": "tiny", "settings": {"attention": "full"}},
    )
    edit = ["edit", "clip.mp4", "--prompt", "a jeep", "--out", "o.mp4"]
    attention = lambda *extra: edit_request(build_parser().parse_args([*edit, *extra])).engine.attention  # noqa: E731
    assert attention() == DEFAULT_ATTENTION != "full"
    assert attention("--tuned", str(path)) == "full"  # the mode recorded in the file
    assert attention("--tuned", str(path), "--attention", "window") == "window"  # an explicit choice wins
    values = {
        "video": "clip.mp4",
        "model": "tiny",
        "prompt": "a jeep",
        "inversion_prompt": "a car",
    }  # the one-shot tab's /edit_tuned names
    assert request_from(values, str(tmp_path), tuned=str(path)).engine.attention == "full"  # the one-shot tab, the same way


@pytest.mark.real_weights
def test_tuning_real_weights_lowers_the_loss_and_edits(tmp_path, car):
    """Run with RUN_REAL_WEIGHTS=1 HF_HUB_OFFLINE=0 (and EDITING_REAL_MODEL=/path for a local copy), ideally on a GPU."""
    import os

    from editing.models import load_backbone

    model = os.environ.get("EDITING_REAL_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    selection = FrameSelection(max_frames=8, size=512)
    config = TuneConfig("a car turning on a road", selection, steps=100)
    result = tune_video(TuneRequest(str(car), config, str(tmp_path / "car.safetensors"), model, cache_dir=str(tmp_path)))
    backbone = load_backbone(model)
    latents = sampling.encode_frames(backbone, read_clip(car, selection).frames, 8)
    text = sampling.encode_prompts(backbone, [config.prompt])
    tuned = load_tuned(result.path, backbone).weights
    assert objective(backbone, tuned, latents, text, config) < objective(backbone, inflate(backbone, 0), latents, text, config)
    engine = EngineConfig(attention="sparse-causal", inversion_prompt=config.prompt, cache_dir=str(tmp_path))
    edited = EditRequest(
        str(car),
        str(tmp_path / "jeep.mp4"),
        EditConfig("a jeep driving on the moon", steps=30),
        selection,
        engine,
        model,
        tuned=result.path,
    )
    assert edit_video(edited).frames == 8
