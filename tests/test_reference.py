"""Reference image of the subject (issue 21, part 2): an IP-Adapter beside the cross-frame attention.

Random IP-Adapters built from configs (a small CLIPVisionModelWithProjection, an ip-adapter_sd15-layout
checkpoint converted by diffusers' own loaders) on the `tiny` model; 2 steps, 3 frames at 64 px.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editing import requests
from editing.config import AttentionEditConfig, ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.core import EditParts, edit_frames
from editing.errors import Cancelled, ConfigError, ModelLoadError
from editing.video_io import read_clip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frames(car) -> np.ndarray:
    return read_clip(car, FrameSelection(max_frames=3, stride=4, size=64)).frames


@pytest.fixture(scope="module")
def dog(tmp_path_factory) -> str:
    """A reference image: any RGB image of another size than the clip's."""
    path = tmp_path_factory.mktemp("reference") / "dog.png"
    pixels = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def edit(frames, tiny, tmp_path, reference=None, prompt="a red car", attention_edit=None, progress=None, **engine):
    parts = EditParts(
        EditConfig(prompt=prompt, steps=2, guidance=3.0),
        EngineConfig(cache_dir=str(tmp_path / "cache"), reference_image=reference, **engine),
        attention_edit,
    )
    return edit_frames(frames, parts, tiny, **({} if progress is None else {"progress": progress})).frames


def plain_state(unet) -> tuple:
    """What an edit must leave as it found it: the UNet's processors (by type) and its encoder projection."""
    return tuple(type(p).__name__ for p in unet.attn_processors.values()), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type


# ---------------------------------------------------------------- one attention layer


def test_the_cross_frame_processor_bound_to_an_ip_adapter_equals_diffusers_ip_adapter_processor():
    """On one cross-attention layer: text attention + scale x image attention, as diffusers computes it."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0

    from editing.attention.cross_frame import CrossFrameAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8).eval()
    adapter = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=16, num_tokens=(4,), scale=0.7)
    for linear in [*adapter.to_k_ip, *adapter.to_v_ip]:
        torch.nn.init.normal_(linear.weight, std=0.3)
    hidden, text, image = torch.randn(2, 10, 32), torch.randn(2, 7, 16), torch.randn(2, 1, 4, 16)
    ours = CrossFrameAttnProcessor().with_image_adapter(adapter)
    with torch.no_grad():
        expected = adapter(attn, hidden, (text, [image]))
        got = ours(attn, hidden, (text, [image]))
        text_only = AttnProcessor2_0()(attn, hidden, text)
        adapter.scale = [0.0]
        at_zero = ours(attn, hidden, (text, [image]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, text_only, atol=1e-3)
    assert torch.equal(at_zero, text_only) or torch.allclose(at_zero, text_only, atol=1e-6)


# ---------------------------------------------------------------- whole edits on the tiny model


def test_scale_zero_equals_no_reference_and_a_reference_changes_the_edit(tiny, frames, dog, tmp_path):
    before = plain_state(tiny.unet)
    none = edit(frames, tiny, tmp_path)
    zero = edit(frames, tiny, tmp_path, f"{dog}:0")
    one = edit(frames, tiny, tmp_path, f"{dog}:1")
    assert np.array_equal(none, zero)
    assert np.abs(none.astype(int) - one).mean() > 1
    assert plain_state(tiny.unet) == before  # the adapter is in the UNet only during the loop


@pytest.mark.parametrize("attention", ["none", "sparse-causal"])
def test_scale_zero_equals_no_reference_in_other_attention_modes(tiny, frames, dog, tmp_path, attention):
    """`none` runs diffusers' own IP-Adapter processors; the others bind ours to them."""
    none = edit(frames, tiny, tmp_path, attention=attention)
    zero = edit(frames, tiny, tmp_path, f"{dog}:0", attention=attention)
    one = edit(frames, tiny, tmp_path, f"{dog}:1", attention=attention)
    assert np.array_equal(none, zero)
    assert not np.array_equal(none, one)


def test_a_reference_combines_with_a_controlnet(tiny, frames, dog, tmp_path):
    controls = (ControlSpec("canny", scale=1.0),)
    plain = edit(frames, tiny, tmp_path, controls=controls[:0])
    controlled = edit(frames, tiny, tmp_path, controls=controls)
    zero = edit(frames, tiny, tmp_path, f"{dog}:0", controls=controls)
    both = edit(frames, tiny, tmp_path, f"{dog}:1", controls=controls)
    reference_only = edit(frames, tiny, tmp_path, f"{dog}:1")
    assert np.array_equal(controlled, zero)
    assert not np.array_equal(controlled, plain)  # the ControlNet still acts beside the reference ...
    assert not np.array_equal(both, controlled) and not np.array_equal(both, reference_only)  # ... and both do


def test_a_reference_combines_with_prompt_to_prompt(tiny, frames, dog, tmp_path):
    p2p = AttentionEditConfig(source_prompt="a car", blend_words=("red",))
    none = edit(frames, tiny, tmp_path, attention_edit=p2p)
    zero = edit(frames, tiny, tmp_path, f"{dog}:0", attention_edit=p2p)
    one = edit(frames, tiny, tmp_path, f"{dog}:1", attention_edit=p2p)
    assert np.array_equal(none, zero)
    assert not np.array_equal(none, one)


def test_a_reference_combines_with_tuned_attention_processors(tiny, frames, dog):
    """The one-shot tuned model's processors (editing.attention.tuned) bind the adapter too."""
    from editing import sampling
    from editing.attention.tuned import TunedControl
    from editing.models import load_image_adapter
    from editing.reference import prepare_reference
    from editing.tuning import inflate

    control = TunedControl(inflate(tiny, seed=0))
    latents = sampling.encode_frames(tiny, frames, 3)
    text = sampling.encode_text(tiny, "a red car", "", guided=True)
    plan = sampling.plan_frames(len(frames), 3, "sparse-causal")

    def run(reference=None):
        prompt = (
            None if reference is None else prepare_reference(EngineConfig(reference_image=reference), tiny, load_image_adapter)
        )
        scheduler = tiny.scheduler()
        timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
        return sampling.denoise(
            tiny,
            sampling.Schedule(scheduler, timesteps),
            latents,
            sampling.Guidance(text, 3.0, reference=prompt),
            plan,
            sampling.LoopHooks(attention_control=control),
        )

    none = run()
    assert torch.equal(none, run(f"{dog}:0"))
    assert not torch.allclose(none, run(f"{dog}:1"))


def test_stop_during_denoising_leaves_the_unet_as_it_was(tiny, frames, dog, tmp_path):
    before = plain_state(tiny.unet)
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done, total))
        if stage == "denoise" and done == 1:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        edit(frames, tiny, tmp_path, f"{dog}:1", progress=progress)
    assert ("denoise", 0, 2) in seen and ("denoise", 1, 2) in seen
    assert plain_state(tiny.unet) == before
    # and the next edit without a reference is a plain one again
    assert np.array_equal(edit(frames, tiny, tmp_path), edit(frames, tiny, tmp_path, f"{dog}:0"))


# ---------------------------------------------------------------- adapters from files and the Hub


def save_adapter(folder, tiny, suffix: str):
    """The random adapter written as an h94-style checkpoint file with its image_encoder folder beside it."""
    from editing.reference import random_adapter_state, random_image_encoder

    folder.mkdir(parents=True, exist_ok=True)
    state = random_adapter_state(tiny.unet)
    path = folder / f"ip-adapter_sd15{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(
            {f"{group}.{key}": tensor.contiguous() for group, part in state.items() for key, tensor in part.items()}, str(path)
        )
    else:
        torch.save(state, path)
    random_image_encoder().save_pretrained(folder / "image_encoder")
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_a_local_adapter_file_or_folder_loads_as_the_same_adapter(tiny, frames, dog, tmp_path, suffix):
    path = save_adapter(tmp_path / "adapter", tiny, suffix)
    random = edit(frames, tiny, tmp_path, f"{dog}:1", reference_adapter="random")
    assert np.array_equal(edit(frames, tiny, tmp_path, f"{dog}:1", reference_adapter=str(path)), random)
    assert np.array_equal(edit(frames, tiny, tmp_path, f"{dog}:1", reference_adapter=str(path.parent)), random)


def test_adapters_that_do_not_fit_are_refused_in_one_sentence(tiny, frames, dog, tmp_path):
    from safetensors.torch import save_file

    lonely = tmp_path / "lonely" / "ip-adapter_sd15.safetensors"
    lonely.parent.mkdir()
    save_adapter(tmp_path / "full", tiny, ".safetensors").rename(lonely)
    foreign = tmp_path / "foreign" / "ip-adapter_sd15.safetensors"
    foreign.parent.mkdir()
    save_file(
        {"ip_adapter.1.to_k_ip.weight": torch.zeros(64, 768), "image_proj.proj.weight": torch.zeros(3072, 1024)}, str(foreign)
    )
    cases = {
        str(lonely): "image_encoder folder beside it",
        str(foreign): "made for a text width of 768, but the model uses 32",
        str(tmp_path / "missing.safetensors"): "does not exist",
        "h94/IP-Adapter": "cannot reach the Hugging Face Hub",  # tests run offline, as a user without the Hub
    }
    for spec, expected in cases.items():
        with pytest.raises(ModelLoadError) as caught:
            edit(frames, tiny, tmp_path, f"{dog}:1", reference_adapter=spec)
        assert expected in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- the option, its errors


def test_bad_reference_images_and_scales_get_one_sentence_naming_the_field(tiny, frames, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    for given, expected in [(str(text), "cannot be read as an image"), (str(tmp_path / "gone.png"), "is not a file")]:
        with pytest.raises(ConfigError) as caught:
            edit(frames, tiny, tmp_path, given)
        assert str(caught.value).startswith("reference_image ") and expected in str(caught.value)
    for given in ["dog.png:3", "dog.png:-0.5", "dog.png:nan", ":0.5", ""]:
        with pytest.raises(ConfigError, match="reference_image"):
            EngineConfig(reference_image=given)
    with pytest.raises(ConfigError, match="reference_adapter needs a reference_image"):
        EngineConfig(reference_adapter="random")
    assert EngineConfig(reference_image="C:\\photos\\dog.png").reference == ("C:\\photos\\dog.png", 0.6)
    assert EngineConfig(reference_image="dog.png:0.25").reference == ("dog.png", 0.25)


def test_the_option_reaches_the_cli_eval_specs_and_the_app_api(tmp_path):
    import argparse

    option = next(o for o in requests.options("edit") if o.name == "reference_image")
    assert option.flag == "--reference-image" and option.file == "image"
    parser = argparse.ArgumentParser()
    requests.add_arguments(parser, "edit")
    args = parser.parse_args(
        [
            "clip.mp4",
            "--out",
            str(tmp_path / "o.mp4"),
            "--prompt",
            "a dog",
            "--reference-image",
            "dog.png:0.8",
            "--reference-adapter",
            "random",
        ]
    )
    request = requests.edit_request(args)
    assert request.engine.reference == ("dog.png", 0.8) and request.engine.reference_adapter == "random"
    spec = requests.edit_request({"video": "clip.mp4", "out": "o.mp4", "prompt": "a dog", "reference_image": "dog.png"})
    assert spec.engine.reference == ("dog.png", 0.6)
    from ui.edit_tab import api_fields

    assert "reference_image" in api_fields()


def test_the_app_form_uploads_the_reference_and_keeps_the_adapter_choice_off(car, dog, tmp_path):
    from ui.edit_tab import request_from

    widgets = {"video": str(car), "prompt": "a dog", "model": "tiny", "reference_image": dog, "reference_scale": 0.35}
    request = request_from(dict(widgets), str(tmp_path), (".mp4",))
    assert request.engine.reference == (dog, 0.35)
    assert request_from(widgets | {"reference_image": None}, str(tmp_path), (".mp4",)).engine.reference is None
    with pytest.raises(ConfigError, match="unknown form fields: reference_adapter"):
        request_from(widgets | {"reference_adapter": "/srv/weights"}, str(tmp_path), (".mp4",))
    with pytest.raises(ConfigError, match="reference_scale must be a number"):
        request_from(widgets | {"reference_scale": "lots"}, str(tmp_path), (".mp4",))


def test_the_edit_api_takes_the_reference_as_an_uploaded_image():
    from ui import build_demo

    parameters = {
        p["parameter_name"]: p for p in build_demo(default_model="tiny").get_api_info()["named_endpoints"]["/edit"]["parameters"]
    }
    assert parameters["reference_image"]["component"] == "Image" and parameters["reference_scale"]["component"] == "Slider"
    assert "reference_adapter" not in parameters


def test_an_eval_spec_reads_the_reference_relative_to_the_spec_file(tmp_path):
    from editing.evaluate import parse_spec

    from .conftest import ROOT

    spec = {
        "clip": "none",
        "defaults": {"model": "tiny"},
        "edits": [{"video": "assets/car-turn.mp4", "prompt": "a dog", "reference_image": "assets/dog.png:0.4"}],
    }
    assert parse_spec(spec, ROOT).edits[0].request.engine.reference == (str(ROOT / "assets" / "dog.png"), 0.4)
    spec["edits"][0]["reference_image"] = "/photos/dog.png"
    assert parse_spec(spec, ROOT).edits[0].request.engine.reference == ("/photos/dog.png", 0.6)
    spec["edits"][0]["reference_image"] = "dog.png:7"
    with pytest.raises(ConfigError, match="edit 'car-turn-1': reference_image scale must be between 0 and 2"):
        parse_spec(spec, ROOT)
