"""Model loading: spec parsing, the offline built-ins, a real diffusers folder, offline errors, caching."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editing import models
from editing.errors import ModelLoadError
from editing.models import ModelSpec, clip_tokenizer, default_controlnet, load_backbone, load_controlnet, native_size, pick_dtype

from .conftest import ROOT


def test_tokenizer_matches_open_clip_reference():
    import open_clip

    ours = clip_tokenizer()
    reference = open_clip.get_tokenizer("ViT-L-14")
    prompts = ["a watercolor painting of a man skiing", "A BEAR instead of a dog!", "café — 東京 🐻 x2", "word " * 100]
    for prompt in prompts:
        ids = ours(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        expected = [token or ours.eos_token_id for token in reference([prompt])[0].tolist()]  # open_clip pads with 0
        assert ids == expected
    assert ours.model_max_length == 77


def test_spec_parsing(tmp_path):
    assert ModelSpec.parse("tiny") == ModelSpec("builtin", "tiny")
    assert ModelSpec.parse(None).kind == "hub"
    assert ModelSpec.parse("stable-diffusion-v1-5/stable-diffusion-v1-5") == ModelSpec(
        "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5"
    )
    assert ModelSpec.parse(str(tmp_path)).kind == "folder"
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    assert ModelSpec.parse(str(checkpoint)).kind == "single_file"
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="convert it to .safetensors"):
        ModelSpec.parse(str(pickle))
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelSpec.parse(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelSpec.parse("./no/such/folder")
    with pytest.raises(ModelLoadError, match="not a Hub id"):
        ModelSpec.parse("sd15")


def test_tiny_is_sd1_shaped_and_loads_offline(tiny, monkeypatch):
    assert tiny.random_weights and tiny.device.type == "cpu" and tiny.dtype == torch.float32
    assert tiny.vae_scale_factor == 8 and tiny.latent_channels == 4
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    names = tiny.unet.attn_processors.keys()
    for place in ("down_blocks", "mid_block", "up_blocks"):
        assert any(n.startswith(place) and "attn1" in n for n in names)
        assert any(n.startswith(place) and "attn2" in n for n in names)
    scheduler = tiny.scheduler()
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.beta_schedule == "scaled_linear"


def test_built_in_weights_are_reproducible(tiny):
    models.clear_cache()
    again = load_backbone("tiny", device="cpu")
    assert again is not tiny
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters()):
        assert torch.equal(a, b)


def test_loaded_models_are_cached_per_device_and_dtype():
    first = load_backbone("tiny", device="cpu")
    assert load_backbone("tiny", device="cpu") is first
    half = load_backbone("tiny", device="cpu", dtype="bf16")
    assert half is not first and half.dtype == torch.bfloat16 and next(half.unet.parameters()).dtype == torch.bfloat16


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    with pytest.raises(ModelLoadError, match="fp16 is not supported on the CPU"):
        pick_dtype(cpu, "fp16")
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        pick_dtype(cpu, "int8")


def test_hub_unreachable_gives_one_sentence_naming_offline_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as caught:  # a repo no cache holds, so nothing comes from disk either
        load_backbone("offline-test/never-cached-model", device="cpu")
    message = str(caught.value)
    assert "cannot reach the Hugging Face Hub" in message
    assert "local diffusers folder" in message and ".safetensors" in message and "'tiny'" in message and "'shapes'" in message
    assert "\n" not in message


def test_local_diffusers_folder_loads_through_the_real_path(tiny, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=tiny.tokenizer,
        unet=tiny.unet,
        scheduler=tiny.scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(tmp_path / "sd-folder")
    loaded = load_backbone(str(tmp_path / "sd-folder"), device="cpu")
    assert not loaded.random_weights
    for a, b in zip(tiny.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    prompt = "a red car"
    assert loaded.tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids
    assert native_size(str(tmp_path / "sd-folder")) == loaded.unet.config.sample_size * loaded.vae_scale_factor


def test_native_size_is_what_the_loaded_model_was_built_for(tiny):
    from editing.models import SHAPES_MODEL

    shapes = load_backbone(SHAPES_MODEL, device="cpu")
    for spec, backbone in (("tiny", tiny), (SHAPES_MODEL, shapes)):
        assert native_size(spec) == backbone.unet.config.sample_size * backbone.vae_scale_factor
    assert native_size(SHAPES_MODEL) < native_size("tiny") < native_size("sd15-random")
    assert native_size("sd15-random") == native_size("stable-diffusion-v1-5/stable-diffusion-v1-5") == 512  # SD-1.x
    with pytest.raises(ModelLoadError):
        native_size("./no-such-folder")


def test_corrupt_single_file_gives_one_line_error(tmp_path):
    checkpoint = tmp_path / "broken.safetensors"
    checkpoint.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError) as caught:
        load_backbone(str(checkpoint), device="cpu")
    assert "\n" not in str(caught.value)


def test_random_controlnet_matches_backbone_and_changes_the_unet(tiny):
    controlnet = load_controlnet("random", tiny)
    assert controlnet.config.cross_attention_dim == tiny.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    condition = torch.rand(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        down, mid = controlnet(latents, 10, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False)
        plain = tiny.unet(latents, 10, encoder_hidden_states=text).sample
        guided = tiny.unet(
            latents, 10, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
    assert not torch.allclose(plain, guided)
    with pytest.raises(ModelLoadError, match="backbone, not a ControlNet"):
        load_controlnet("tiny", tiny)


def _folder_without_tokenizer(tiny, folder: Path) -> Path:
    """The tiny model saved as a diffusers folder with no tokenizer files, and a ControlNet subfolder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=None, unet=tiny.unet, scheduler=tiny.scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    load_controlnet("random", tiny).save_pretrained(folder / "edges")
    return folder


def test_a_folder_with_a_manifest_loads_with_the_tokenizer_and_controlnets_it_names(tiny, tmp_path):
    """Any local folder, not only the shipped one: the manifest supplies the tokenizer a folder lacks and
    makes its ControlNet the default for its kind. Without the manifest (the control) the folder cannot load."""
    folder = _folder_without_tokenizer(tiny, tmp_path / "model")
    models.clear_cache()
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_backbone(str(folder), device="cpu")
    (folder / models.MANIFEST).write_text(json.dumps({"tokenizer": "clip", "controlnets": {"canny": "edges"}}))
    models.clear_cache()
    loaded = load_backbone(str(folder), device="cpu")
    assert loaded.tokenizer("a red car").input_ids == clip_tokenizer()("a red car").input_ids
    assert default_controlnet("canny", loaded) == str(folder / "edges")
    assert not default_controlnet("depth", loaded).startswith(str(folder))  # a kind it does not name: not from the folder
    for a, b in zip(tiny.unet.parameters(), loaded.unet.parameters()):
        assert torch.equal(a, b)
    assert (
        load_controlnet(default_controlnet("canny", loaded), loaded).config.cross_attention_dim
        == tiny.unet.config.cross_attention_dim
    )
    models.clear_cache()


@pytest.mark.parametrize(
    "manifest, words",
    [
        ({"tokenizer": "clip", "controlnets": {"canny": "missing"}}, "canny ControlNet 'missing' is not a subfolder"),
        ({"tokenizer": "no-such-tokenizer"}, "tokenizer must be one of clip or a subfolder"),
        ({"tokenizer": "clip", "controlnet": {}}, "keys tokenizer and controlnets"),
        ("not an object", "keys tokenizer and controlnets"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_what_is_wrong(tiny, tmp_path, manifest, words):
    folder = _folder_without_tokenizer(tiny, tmp_path / "model")
    (folder / models.MANIFEST).write_text(json.dumps(manifest))
    models.clear_cache()
    with pytest.raises(ModelLoadError, match=words) as caught:
        load_backbone(str(folder), device="cpu")
    assert "\n" not in str(caught.value)


def test_the_name_shapes_is_the_shipped_folder_with_a_manifest():
    """The product's one shapes case: the name resolves to a folder inside the package, which carries its
    manifest like any other; a folder elsewhere is just a folder."""
    spec = ModelSpec.parse(models.SHAPES_MODEL)
    assert spec.kind == "folder" and spec.folder == models.SHAPES_MODEL_DIR
    assert spec.folder.is_relative_to(Path(models.__file__).parent)
    assert models.read_manifest(spec.folder) == {"tokenizer": "clip", "controlnets": {"canny": "controlnet-canny"}}


def _can_build_wheels() -> bool:
    """Whether setuptools here has bdist_wheel without downloading anything (its own since 70.1, else the wheel package)."""
    import setuptools

    return importlib.util.find_spec("wheel") is not None or tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (
        70,
        1,
    )


def _install_like_a_wheel(target: Path, scratch: Path) -> str:
    """Install the package into `target` as a non-editable wheel does, offline. With a setuptools that can
    build wheels: `pip wheel --no-build-isolation` then `pip install --target`. Otherwise (setuptools 65 in
    a fresh venv has no bdist_wheel) setuptools' build_py, the step of a wheel build that selects the
    packages and their package data: a wheel is a zip of the tree it writes."""
    run = dict(cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    if _can_build_wheels():
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(scratch), "."], **run
        )
        wheel = next(scratch.glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], **run)
        return "wheel"
    setup = [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q"]
    subprocess.run([*setup, "egg_info", "--egg-base", str(scratch), "build_py", "--build-lib", str(target)], **run)
    return "build_py"


def test_shapes_is_found_from_an_installed_package_outside_the_source_tree(tmp_path):
    """From an installed (non-editable) package and another working directory, `shapes` names the folder
    shipped as package data and loads; the development package `shapes_world` is not installed."""
    target, scratch, elsewhere = tmp_path / "site", tmp_path / "scratch", tmp_path / "elsewhere"
    for folder in (scratch, elsewhere):
        folder.mkdir()
    how = _install_like_a_wheel(target, scratch)
    code = (
        "import importlib.util, json, editing.models as m; b = m.load_backbone('shapes', device='cpu'); "
        "print(json.dumps({'module': m.__file__, 'folder': str(m.ModelSpec.parse('shapes').folder), 'canny': m.default_controlnet('canny', b), "
        "'size': m.native_size('shapes'), 'dev': importlib.util.find_spec('shapes_world') is not None}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (how, result.stderr[-800:])
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["module"]).is_relative_to(target) and Path(found["folder"]).is_relative_to(target), (how, found)
    assert Path(found["canny"]).is_relative_to(target) and found["size"] == native_size(models.SHAPES_MODEL)
    assert not found["dev"], "shapes_world must not be installed with the product"


def test_load_backbone_waits_for_the_background_imports(monkeypatch):
    """The app starts the first load's imports on a thread at launch; a load waits for it instead of importing
    beside it."""
    import threading
    import time

    finished = []
    thread = threading.Thread(target=lambda: (time.sleep(0.3), finished.append(True)))
    monkeypatch.setattr(models, "_background_imports", thread)
    thread.start()
    load_backbone("tiny", device="cpu")
    assert finished == [True]


def test_the_background_imports_start_once_and_load_no_model(monkeypatch):
    monkeypatch.setattr(models, "_background_imports", None)
    cached = dict(models._cache)
    first = models.import_in_background()
    assert models.import_in_background() is first and first.daemon
    first.join(timeout=120)
    assert not first.is_alive() and "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion" in sys.modules
    assert dict(models._cache) == cached
