"""LoRA loading: a small random LoRA for the `tiny` UNet, built from a peft LoraConfig and saved as
.safetensors in diffusers' format, loads through diffusers' loaders; scale 0 is the plain model, scale 1
changes it, fused equals unfused, the cached plain backbone is never changed, and files that are not a
LoRA for this UNet are refused in one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editing.errors import ConfigError, ModelLoadError
from editing.lora import LoraSpec, ModelOptions, lora_config, model_options, random_lora_state_dict, save_lora
from editing.models import load_backbone


@pytest.fixture(scope="module")
def lora_file(tiny, tmp_path_factory):
    """A random rank-4 LoRA for the tiny UNet's attention projections, in diffusers' .safetensors format."""
    return save_lora(tmp_path_factory.mktemp("lora") / "random-lora.safetensors", random_lora_state_dict(tiny.unet, seed=3))


def _unet_output(backbone) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, 4, 16, 16), generator=generator)
    context = torch.randn((2, 77, 32), generator=generator)
    with torch.inference_mode():
        return backbone.unet(sample, torch.tensor([500, 500]), context).sample


def _with(path, scale: float, fuse: bool = False):
    return load_backbone("tiny", device="cpu", options=model_options([f"{path}:{scale}"], fuse))


def test_the_lora_file_is_a_peft_lora_in_diffusers_format(lora_file, tiny):
    from safetensors.torch import load_file

    weights = load_file(str(lora_file))
    targets = set(lora_config().target_modules)
    assert weights and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in weights)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in weights} <= targets | {"0"}  # to_q, to_k, to_v, to_out.0
    assert all(w.abs().sum() > 0 for w in weights.values())  # B is not peft's zero init: the LoRA really acts


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_scale_zero_equals_no_lora_and_scale_one_changes_the_output(lora_file, tiny, fuse):
    plain = _unet_output(tiny)
    zero = _unet_output(_with(lora_file, 0.0, fuse))
    one = _unet_output(_with(lora_file, 1.0, fuse))
    assert torch.allclose(zero, plain, atol=1e-6), (zero - plain).abs().max()
    change = (one - plain).abs().max().item()
    assert change > 1e-2, change  # the control: the same LoRA at scale 1 is not the plain model


def test_fused_equals_unfused(lora_file):
    fused = _unet_output(_with(lora_file, 0.7, fuse=True))
    unfused = _unet_output(_with(lora_file, 0.7, fuse=False))
    other_scale = _unet_output(_with(lora_file, 1.0, fuse=True))
    assert torch.allclose(fused, unfused, atol=1e-4), (fused - unfused).abs().max()
    assert (other_scale - fused).abs().max() > 100 * (fused - unfused).abs().max()  # fusing keeps the scale


def test_a_lora_never_changes_the_cached_plain_backbone(lora_file):
    tiny = load_backbone("tiny", device="cpu")  # the cached one now (an earlier test's model may have evicted the fixture's)
    before = _unet_output(tiny)
    with_lora = _with(lora_file, 1.0)
    assert with_lora is not tiny and with_lora.unet is not tiny.unet
    assert load_backbone("tiny", device="cpu") is tiny and not hasattr(tiny.unet, "peft_config")
    assert torch.equal(_unet_output(load_backbone("tiny", device="cpu")), before)
    assert with_lora.text_encoder is tiny.text_encoder  # a UNet-only LoRA shares the text encoder
    assert with_lora.name != tiny.name  # so inversion cache keys, which hold the name, differ


def test_loras_are_cached_with_the_backbone_by_spec_scale_and_fusing(lora_file):
    assert _with(lora_file, 0.5) is _with(lora_file, 0.5)
    assert _with(lora_file, 0.5) is not _with(lora_file, 0.6)
    assert _with(lora_file, 0.5) is not _with(lora_file, 0.5, fuse=True)


def test_scale_zero_edit_equals_the_plain_edit(lora_file, tiny):
    from editing.config import EditConfig, EngineConfig, FrameSelection
    from editing.core import EditParts, edit_frames

    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    parts = EditParts(
        EditConfig(prompt="a red car", steps=2, guidance=3.0, strength=0.5),
        EngineConfig(inversion="none"),
        selection=FrameSelection(size=64),
    )
    plain = edit_frames(frames, parts, tiny).frames
    zero = edit_frames(frames, parts, _with(lora_file, 0.0)).frames
    one = edit_frames(frames, parts, _with(lora_file, 1.0)).frames
    assert np.array_equal(zero, plain)
    assert not np.array_equal(one, plain)


def _refusal(path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_backbone("tiny", device="cpu", options=model_options([str(path)]))
    message = str(caught.value)
    assert "\n" not in message and message.count(". ") == 0, message
    return message


def test_a_file_that_is_not_a_lora_is_refused_in_one_sentence(tiny, tmp_path):
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in list(tiny.unet.state_dict().items())[:4]}
    save_file(weights, str(tmp_path / "unet-weights.safetensors"))
    message = _refusal(tmp_path / "unet-weights.safetensors")
    assert "unet-weights.safetensors is not a LoRA" in message


def test_a_lora_for_another_unet_is_refused_in_one_sentence(tiny, tmp_path):
    wider = type(tiny.unet).from_config({**tiny.unet.config, "cross_attention_dim": 48})  # same layer names, other shapes
    path = save_lora(tmp_path / "wider.safetensors", random_lora_state_dict(wider, seed=1))
    message = _refusal(path)
    assert "wider.safetensors is not a LoRA for this model's UNet" in message and "shapes" in message


def test_a_lora_for_layers_the_unet_lacks_is_refused_in_one_sentence(tiny, tmp_path):
    state = {k.replace("unet.", "unet.missing_block.", 1): v for k, v in random_lora_state_dict(tiny.unet).items()}
    message = _refusal(save_lora(tmp_path / "elsewhere.safetensors", state))
    assert "elsewhere.safetensors is not a LoRA for this model's UNet" in message


def test_an_unreadable_or_missing_file_is_refused_in_one_sentence(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert "junk.safetensors" in _refusal(tmp_path / "junk.safetensors")
    assert "does not exist" in _refusal(tmp_path / "missing.safetensors")


def test_a_hub_lora_offline_fails_with_the_offline_sentence():
    """conftest sets HF_HUB_OFFLINE=1, as on a machine without the Hub."""
    for spec in ("latent-consistency/lcm-lora-sdv1-5", "ByteDance/Hyper-SD/Hyper-SD15-4steps-lora.safetensors"):
        message = _refusal(spec)
        assert message.startswith(f"cannot reach the Hugging Face Hub to get LoRA '{spec}'") and "random" in message


def test_lora_specs_parse_and_validate_naming_the_field():
    assert LoraSpec.parse("owner/name:0.5") == LoraSpec("owner/name", 0.5)
    assert LoraSpec.parse("style.safetensors") == LoraSpec("style.safetensors", 1.0)
    assert LoraSpec.parse(r"C:\loras\style.safetensors").source == r"C:\loras\style.safetensors"  # a drive colon is not a scale
    with pytest.raises(ConfigError, match="lora scale must be between"):
        LoraSpec.parse("owner/name:50")
    with pytest.raises(ConfigError, match="pickle"):
        LoraSpec("style.ckpt")
    with pytest.raises(ConfigError, match="each lora may appear once"):
        model_options(["a/b:0.5", "a/b:1"])
    with pytest.raises(ConfigError, match="lora fuse needs"):
        ModelOptions(fuse=True)
    with pytest.raises(ConfigError, match="vae must be one of"):
        ModelOptions(vae="huge")


def test_the_cli_loads_a_lora_file_and_refuses_a_bad_one_with_exit_2(lora_file, tmp_path):
    import subprocess
    import sys

    from .conftest import ASSETS

    base = [
        sys.executable,
        "-m",
        "editing",
        "edit",
        str(ASSETS / "car-turn.mp4"),
        "--prompt",
        "x",
        "--model",
        "tiny",
        "--frames",
        "2",
        "--size",
        "64",
        "--steps",
        "1",
    ]
    ok = subprocess.run(
        [*base, "--out", str(tmp_path / "o.zip"), "--lora", f"{lora_file}:0.5", "--lora-fuse", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "lora=" in ok.stdout and "(fused)" in ok.stdout
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "p.zip"), "--lora", str(tmp_path / "bad.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in bad.stderr.strip().splitlines() if line and not line.startswith("note:")]
    assert bad.returncode == 2 and len(lines) == 1 and "bad.safetensors" in lines[0], bad.stderr


def test_a_lora_that_adapts_the_text_encoder_goes_into_a_copy_of_it(tiny, tmp_path):
    import copy

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from editing import sampling

    shaped = copy.deepcopy(tiny.text_encoder)
    shaped.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], init_lora_weights="gaussian")
    )
    generator = torch.Generator().manual_seed(0)
    state = {
        f"text_encoder.{k}": torch.randn(v.shape, generator=generator) * 0.3 for k, v in get_peft_model_state_dict(shaped).items()
    }
    path = save_lora(tmp_path / "text.safetensors", {**state, **random_lora_state_dict(tiny.unet)})
    plain = sampling.encode_prompts(tiny, ["a red car"])
    zero, one = (_with(path, scale) for scale in (0.0, 1.0))
    assert one.text_encoder is not tiny.text_encoder and not hasattr(tiny.text_encoder, "peft_config")
    assert torch.allclose(sampling.encode_prompts(zero, ["a red car"]), plain, atol=1e-6)
    assert (sampling.encode_prompts(one, ["a red car"]) - plain).abs().max() > 1e-2  # the control
    assert torch.equal(sampling.encode_prompts(tiny, ["a red car"]), plain)
