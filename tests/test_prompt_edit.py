"""Attention editing (Prompt-to-Prompt, FateZero blending, null-text inversion): token alignment with the
real CLIP tokenizer, the controlled processor, the attention store's size, and properties on a real clip."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import Attention

from editing import prompts, sampling
from editing.attention.blend import LocalBlend, blend_mask
from editing.attention.cross_frame import CrossFrameAttnProcessor, LayerCall, layout_for
from editing.attention.p2p import (
    AttentionRecorder,
    ControlledAttnProcessor,
    PromptControl,
    RecordedAttention,
    RefineEdit,
    SwapEdit,
)
from editing.attention.store import AttentionStore, StorePolicy, store_nbytes
from editing.cli import main
from editing.config import AttentionEditConfig, FrameSelection
from editing.errors import ConfigError
from editing.inversion import ddim_invert, inverse_schedule
from editing.models import clip_tokenizer
from editing.nulltext import NullTextFit, null_text_invert
from editing.prompt_edit import blend_callback, self_record_steps
from editing.video_io import read_clip

from .conftest import ASSETS

SOURCE = "a silver jeep driving"


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


# ---------------------------------------------------------------- token alignment (pure, real tokenizer)


def test_swap_of_single_token_words_is_the_identity_mapping(tokenizer):
    assert all(len(prompts.word_tokens(tokenizer, w)) == 1 for w in "a silver jeep red porsche driving".split())
    mapper = prompts.swap_mapper(tokenizer, SOURCE, "a red porsche driving")
    assert torch.equal(mapper, torch.eye(77))


def test_swap_spreads_a_word_over_the_target_words_tokens(tokenizer):
    target = "a red porsche911 driving"
    assert len(prompts.word_tokens(tokenizer, "porsche911")) == 4
    mapper = prompts.swap_mapper(tokenizer, SOURCE, target)
    assert torch.equal(mapper[3, 3:7], torch.ones(4))  # jeep -> every token of porsche911
    assert mapper[4, 7] == 1 and mapper[5, 8] == 1  # driving, then the end token, shifted by three
    assert torch.equal(mapper.sum(0), torch.ones(77))  # every target token gets a whole source distribution
    attention = torch.softmax(torch.randn(10, 77), -1)
    mapped = attention @ mapper
    assert torch.equal(mapped[:, 3:7], attention[:, 3:4].expand(-1, 4)) and torch.equal(mapped[:, 7], attention[:, 4])


def test_swap_needs_the_same_number_of_words(tokenizer):
    with pytest.raises(ConfigError, match="refine"):
        prompts.swap_mapper(tokenizer, SOURCE, "a red porsche driving fast")


def test_refinement_aligns_shared_tokens_and_frees_added_ones(tokenizer):
    index, alpha = prompts.refine_alignment(tokenizer, SOURCE, "a silver jeep driving at night")
    assert index[:5].tolist() == [0, 1, 2, 3, 4] and alpha[:5].tolist() == [1.0] * 5
    assert alpha[5:7].tolist() == [0.0, 0.0]  # "at night" keeps its own attention
    assert index[7] == 5 and alpha[7] == 1  # the end token follows the source's
    index, alpha = prompts.refine_alignment(tokenizer, "a jeep driving", SOURCE)
    assert alpha[2] == 0 and (index[3], alpha[3]) == (2, 1) and (index[4], alpha[4]) == (3, 1)


def test_reweight_scales_only_the_chosen_word(tokenizer):
    vector = prompts.reweight_vector(tokenizer, SOURCE, {"Silver": 2.0})
    expected = torch.ones(77)
    expected[2] = 2.0
    assert torch.equal(vector, expected)
    with pytest.raises(ConfigError, match="porsche"):
        prompts.reweight_vector(tokenizer, SOURCE, {"porsche": 2.0})


# ---------------------------------------------------------------- processor and controllers


class PassThrough(PromptControl):
    """Asks for every layer's probabilities and changes nothing."""

    def __init__(self):
        super().__init__(4, 3)
        self.seen = []

    def wants(self, place, is_cross, tokens, call):
        return True

    def forward(self, probs, is_cross, place, call):
        self.seen.append((place, is_cross, tuple(probs.shape)))
        return probs


@torch.no_grad()
@pytest.mark.parametrize("cross", [False, True])
def test_explicit_probabilities_equal_fused_cross_frame_attention(cross):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8, cross_attention_dim=8 if cross else None).eval()
    x = torch.randn(2 * 3, 12, 16)
    context = torch.randn(2 * 3, 5, 8) if cross else None
    layout = layout_for("first", [0, 1, 2])
    attn.set_processor(CrossFrameAttnProcessor())
    fused = attn(x, encoder_hidden_states=context, call=LayerCall(layout))
    controller = PassThrough()
    attn.set_processor(ControlledAttnProcessor("layer"))
    explicit = attn(x, encoder_hidden_states=context, call=LayerCall(layout, extra=controller.call(0, (0, 1, 2), (0, 1, 2))))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    assert controller.seen == [("layer", cross, (6, 2, 12, 5 if cross else 12))]


def test_processors_are_restored_after_an_exception(tiny):
    original = dict(tiny.unet.attn_processors)
    with pytest.raises(RuntimeError):
        with PassThrough().processors(tiny.unet):
            assert all(isinstance(p, ControlledAttnProcessor) for p in tiny.unet.attn_processors.values())
            raise RuntimeError("cancelled")
    assert tiny.unet.attn_processors == original


@pytest.fixture(scope="module")
def car_latents(tiny):
    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=3, stride=4, size=96))
    return sampling.encode_frames(tiny, clip.frames, batch_size=4)


def invert_recording(tiny, clean, prompt, steps, policy, chunk=4, self_steps=None, mode="first"):
    """DDIM inversion under `prompt` that stores its attention."""
    store = AttentionStore()
    height, width = clean.shape[-2:]
    recorder = AttentionRecorder(store, policy, height, width, set(range(steps)) if self_steps is None else self_steps)
    text = sampling.encode_text(tiny, prompt, "", guided=False)
    plan = sampling.plan_frames(clean.shape[0], chunk, mode)
    return ddim_invert(
        tiny, clean, inverse_schedule(tiny, steps, 1.0), text, plan, sampling.LoopHooks(attention_control=recorder)
    ), store


def edit(tiny, start, prompt, steps, guidance, control=None, callback=None, chunk=4, mode="first"):
    scheduler = tiny.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, steps, 1.0)
    text = sampling.encode_text(tiny, prompt, "", guided=guidance > 1)
    plan = sampling.plan_frames(start.shape[0], chunk, mode)
    return sampling.denoise(
        tiny,
        sampling.Schedule(scheduler, timesteps),
        start,
        sampling.Guidance(text, guidance),
        plan,
        sampling.LoopHooks(callback=callback, attention_control=control),
    )


def refine_controller(tiny, store, policy, latents, steps, cross, self_, target=SOURCE, blend=None):
    index, alpha = prompts.refine_alignment(tiny.tokenizer, SOURCE, target)
    height, width = latents.shape[-2:]
    return RefineEdit(
        index,
        alpha,
        recorded=RecordedAttention(store, policy, height, width, steps),
        edit_steps=steps,
        cross_replace=cross,
        self_replace=self_,
        blend=blend,
    )


@pytest.mark.parametrize("chunk", [1, 3])
def test_store_size_formula_matches_the_measured_store(tiny, car_latents, chunk):
    steps, policy = 3, StorePolicy(cross_downsample=2, self_downsample=4)
    self_steps = self_record_steps(0.4, steps)
    _, store = invert_recording(tiny, car_latents, SOURCE, steps, policy, chunk=chunk, self_steps=self_steps)
    frames, _, height, width = car_latents.shape
    assert len(store) > 0 and len(self_steps) == 1
    assert store.nbytes() == store_nbytes(
        tiny.unet.config, frames, (height, width), (steps, len(self_steps)), kv_frames=1, policy=policy
    )
    assert {key[3] for key in store.maps} == set(range(frames))  # keyed per clip frame, whatever the chunks


def test_no_replacement_equals_the_plain_edit(tiny, car_latents):
    """cross_replace = self_replace = 0 and no blend: the controller must change nothing at all."""
    steps, policy = 3, StorePolicy(1, 1)
    trajectory, store = invert_recording(tiny, car_latents, SOURCE, steps, policy)
    plain = edit(tiny, trajectory.final, "a red porsche driving", steps, 5.0)
    controlled = edit(
        tiny,
        trajectory.final,
        "a red porsche driving",
        steps,
        5.0,
        refine_controller(tiny, store, policy, car_latents, steps, 0.0, 0.0, "a red porsche driving"),
    )
    assert torch.equal(plain, controlled)


def test_identity_edit_with_stored_attention_is_closer_to_the_source(tiny, car_latents):
    """Target = source prompt, full replacement, guidance 7.5: the stored attention pulls the edit back
    towards the source. (Only the conditional branch's cross-attention can be replaced, so with random
    weights the gain is small; the test asserts the direction, the README gives the numbers.)"""
    steps, policy = 4, StorePolicy(1, 1)
    trajectory, store = invert_recording(tiny, car_latents, SOURCE, steps, policy)
    plain = edit(tiny, trajectory.final, SOURCE, steps, 7.5)
    replaced = edit(
        tiny, trajectory.final, SOURCE, steps, 7.5, refine_controller(tiny, store, policy, car_latents, steps, 1.0, 1.0)
    )
    plain_error = (plain - car_latents).pow(2).mean().item()
    replaced_error = (replaced - car_latents).pow(2).mean().item()
    assert replaced_error < plain_error


def test_outside_the_blend_mask_the_output_is_the_reconstruction(tiny, car_latents):
    steps, policy, target = 3, StorePolicy(1, 4), "a red porsche driving"
    trajectory, store = invert_recording(tiny, car_latents, SOURCE, steps, policy)
    height, width = car_latents.shape[-2:]
    positions = (
        prompts.blend_positions(tiny.tokenizer, SOURCE, ("jeep",)),
        prompts.blend_positions(tiny.tokenizer, target, ("porsche",)),
    )
    blend = LocalBlend(*positions, height, width, threshold=0.5)
    mapper = prompts.swap_mapper(tiny.tokenizer, SOURCE, target)
    control = SwapEdit(
        mapper,
        recorded=RecordedAttention(store, policy, height, width, steps),
        edit_steps=steps,
        cross_replace=0.8,
        self_replace=0.4,
        blend=blend,
    )
    out = edit(tiny, trajectory.final, target, steps, 5.0, control, blend_callback(blend, trajectory))
    mask = blend.mask(car_latents.shape[0]).expand_as(out)
    assert 0 < mask.float().mean() < 1  # the mask selects a region, not nothing or everything
    assert torch.equal(out[~mask], car_latents[~mask])
    assert not torch.allclose(out[mask], car_latents[mask])


@pytest.mark.parametrize("mode", ["first", "sparse-causal"])
def test_a_chunked_prompt_to_prompt_edit_equals_the_unchunked_one(tiny, car_latents, mode):
    """Word swap with stored self- and cross-attention and a local blend, inverted and edited one frame per
    UNet call, equals the one-batch run. The store is keyed per clip frame, so a context frame of a later chunk
    reads what its own chunk recorded. (3 frames: every chunk holds all the frames before its target, the
    context both modes need, see test_engine.) Control: the controller changes the result."""
    steps, policy, target = 3, StorePolicy(1, 1), "a red porsche driving"
    height, width = car_latents.shape[-2:]
    positions = (
        prompts.blend_positions(tiny.tokenizer, SOURCE, ("jeep",)),
        prompts.blend_positions(tiny.tokenizer, target, ("porsche",)),
    )
    mapper = prompts.swap_mapper(tiny.tokenizer, SOURCE, target)
    results, masks = {}, {}  # by chunk size
    for chunk in (1, car_latents.shape[0]):
        trajectory, store = invert_recording(tiny, car_latents, SOURCE, steps, policy, chunk=chunk, mode=mode)
        blend = LocalBlend(*positions, height, width, threshold=0.5)
        control = SwapEdit(
            mapper,
            recorded=RecordedAttention(store, policy, height, width, steps),
            edit_steps=steps,
            cross_replace=0.8,
            self_replace=0.7,
            blend=blend,
        )
        results[chunk] = edit(
            tiny, trajectory.final, target, steps, 5.0, control, blend_callback(blend, trajectory), chunk=chunk, mode=mode
        )
        masks[chunk] = blend.mask(car_latents.shape[0])
    chunked, whole = results.values()
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)
    assert 0 < masks[1].float().mean() < 1  # the blend selects a region: it took part
    plain = edit(tiny, trajectory.final, target, steps, 5.0, chunk=1, mode=mode)
    assert not torch.allclose(plain, whole, atol=1e-3)


def test_blend_mask_is_the_dilated_thresholded_peak():
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, 4, 4], maps[1, 0, 0, 0] = 5.0, 0.1  # the threshold is relative to each frame's range
    maps[1] += 3.0
    mask = blend_mask(maps, threshold=0.5, dilation=1)
    expected = torch.zeros_like(mask)
    expected[0, 0, 3:6, 3:6] = True
    expected[1, 0, 0:2, 0:2] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("control", [False, True], ids=["plain", "canny"])
def test_null_text_inversion_reconstructs_better_than_ddim_with_guidance(tiny, control):
    """Through the one loop, with the request's ControlNet residuals when there is one: the fitted
    embeddings make guided sampling retrace the inversion better than the plain negative prompt."""
    from editing.control import extract_conditions
    from editing.models import load_controlnet

    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=2, stride=4, size=64))
    clean = sampling.encode_frames(tiny, clip.frames, batch_size=2)
    steps, scale = 2, 7.5
    text = sampling.encode_text(tiny, SOURCE, "", guided=True)
    plan = sampling.plan_frames(2, 2, "first")
    controls = ()
    if control:
        images = torch.from_numpy(extract_conditions("canny", clip.frames)).permute(0, 3, 1, 2).float() / 255
        controls = (sampling.ControlSignal(load_controlnet("random", tiny), images, 1.0),)
    trajectory = ddim_invert(
        tiny, clean, inverse_schedule(tiny, steps, 1.0), sampling.TextConditioning(text.positive, None), plan
    )
    negatives, reconstruction = null_text_invert(
        tiny, NullTextFit(trajectory, iterations=3), sampling.Guidance(text, scale, controls), steps, 1.0, plan
    )
    assert len(negatives) == steps and not torch.equal(negatives[0], text.negative)
    errors = []
    for per_step in (None, negatives):
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, steps, 1.0)
        out = sampling.denoise(
            tiny,
            sampling.Schedule(scheduler, timesteps),
            trajectory.final,
            sampling.Guidance(text, scale, controls, negatives=per_step),
            plan,
        )
        errors.append((out - clean).pow(2).mean().item())
    assert torch.allclose(out, reconstruction, atol=1e-5)  # the fitting run's own output is the same loop's
    ddim_error, null_text_error = errors
    assert null_text_error < ddim_error


def test_null_text_fitted_without_the_controlnet_reconstructs_the_controlled_model_worse(tiny):
    """Control for the test above: embeddings fitted with no ControlNet, then sampled with one, retrace
    the inversion worse than embeddings fitted with it (the defect the loop's residuals fix)."""
    from editing.control import extract_conditions
    from editing.models import load_controlnet

    clip = read_clip(ASSETS / "car-turn.mp4", FrameSelection(max_frames=2, stride=4, size=64))
    clean = sampling.encode_frames(tiny, clip.frames, batch_size=2)
    steps, scale = 2, 7.5
    text = sampling.encode_text(tiny, SOURCE, "", guided=True)
    plan = sampling.plan_frames(2, 2, "first")
    images = torch.from_numpy(extract_conditions("canny", clip.frames)).permute(0, 3, 1, 2).float() / 255
    controls = (sampling.ControlSignal(load_controlnet("random", tiny), images, 1.0),)
    trajectory = ddim_invert(
        tiny, clean, inverse_schedule(tiny, steps, 1.0), sampling.TextConditioning(text.positive, None), plan
    )
    errors = []
    for fitted_with in ((), controls):
        negatives, _ = null_text_invert(
            tiny, NullTextFit(trajectory, iterations=3), sampling.Guidance(text, scale, fitted_with), steps, 1.0, plan
        )
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, steps, 1.0)
        out = sampling.denoise(
            tiny,
            sampling.Schedule(scheduler, timesteps),
            trajectory.final,
            sampling.Guidance(text, scale, controls, negatives=negatives),
            plan,
        )
        errors.append((out - clean).pow(2).mean().item())
    without, with_control = errors
    assert with_control < without


# ---------------------------------------------------------------- config and CLI


def test_config_refuses_inconsistent_settings():
    with pytest.raises(ConfigError, match="reweight"):
        AttentionEditConfig(SOURCE, edit="reweight")
    with pytest.raises(ConfigError, match="cross-replace"):
        AttentionEditConfig(SOURCE, cross_replace=1.5)
    with pytest.raises(ConfigError, match="source prompt"):
        AttentionEditConfig(" ")


CLI_EDIT = [
    "--model",
    "tiny",
    "--size",
    "64",
    "--frames",
    "2",
    "--steps",
    "2",
    "--guidance",
    "3",
    "--device",
    "cpu",
    "--source-prompt",
    SOURCE,
    "--json",
]


@pytest.mark.parametrize(
    "options, expected",
    [
        (
            ["--edit", "swap", "--prompt", "a red porsche driving", "--blend-words", "jeep,porsche"],
            {"edit": "swap", "blend": True, "null_text": False},
        ),
        (
            ["--edit", "refine", "--prompt", "a silver jeep driving at night", "--null-text", "--null-text-iterations", "1"],
            {"edit": "refine", "blend": False, "null_text": True},
        ),
        (
            ["--edit", "reweight", "--prompt", SOURCE, "--reweight", "silver=2", "--cross-replace", "1"],
            {"edit": "reweight", "blend": False, "null_text": False},
        ),
    ],
)
def test_cli_runs_every_edit_type_on_a_real_clip(tmp_path, car, capsys, options, expected):
    out = tmp_path / "out.mp4"
    assert main(["edit", str(car), "--out", str(out), *CLI_EDIT, *options]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.exists() and result["frames"] == 2
    assert expected.items() <= result["attention_edit"].items() and result["attention_edit"]["store_bytes"] > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (["--edit", "swap", "--prompt", "a red porsche driving fast"], "same number of words"),
        (["--edit", "reweight", "--prompt", SOURCE, "--reweight", "silver"], "WORD=VALUE"),
    ],
)
def test_cli_refuses_bad_attention_options_in_one_line(tmp_path, car, capsys, options, message):
    assert main(["edit", str(car), "--out", str(tmp_path / "o.mp4"), *CLI_EDIT, *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1 and message in err[-1]


def test_cli_attention_options_need_a_source_prompt(tmp_path, car, capsys):
    assert (
        main(["edit", str(car), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), "--model", "tiny", "--blend-words", "jeep"])
        == 2
    )
    assert "--source-prompt" in capsys.readouterr().err
