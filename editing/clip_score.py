"""CLIP scorers for the evaluation's text metrics: a transformers CLIP (Hub id or folder), open_clip, or a
random one for tests, behind one interface (`ClipScorer`), loaded by `load_clip`."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .errors import ModelLoadError
from .models import CACHE_SIZE, OTHER_CACHES, ModelSpec, _cache_lock, _load_from, clip_tokenizer, pick_device

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_OFFLINE_ALTERNATIVES = "a local transformers CLIP folder, or 'random' to test the code"
CLIP_RANDOM_NOTE = "the 'random' CLIP has random weights: its scores test the code, they say nothing about quality"
# The image normalisation every OpenAI CLIP (and open_clip's OpenAI-pretrained models) was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipScorer:
    """A CLIP model behind one interface: unit-length embeddings of RGB frames and of texts."""

    name: str
    encode_image: Callable[[torch.Tensor], torch.Tensor]  # normalised (N, 3, S, S) pixels -> (N, D)
    encode_text: Callable[[list[str]], torch.Tensor]  # texts -> (N, D)
    image_size: int
    device: torch.device
    random_weights: bool
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def image_embeddings(self, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
        """Unit-length embeddings of (N, H, W, 3) uint8 RGB frames: short side resized, centre-cropped, normalised."""
        pixels = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
        height, width = pixels.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        pixels = pixels[..., top : top + self.image_size, left : left + self.image_size]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        pixels = (pixels - mean) / std
        with torch.no_grad():
            parts = [self.encode_image(pixels[i : i + batch].to(self.device)) for i in range(0, len(pixels), batch)]
        return F.normalize(torch.cat(parts).float().cpu(), dim=-1)

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """Unit-length embeddings of texts."""
        with torch.no_grad():
            return F.normalize(self.encode_text(list(texts)).float().cpu(), dim=-1)


def _pooled(output: Any) -> torch.Tensor:
    """The projected embedding from a transformers CLIP call (a tensor in 4.x, an output object in 5.x)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _transformers_scorer(
    name: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, device: torch.device, random_weights: bool
) -> ClipScorer:
    model = model.requires_grad_(False).eval().to(device)

    def encode_text(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        return _pooled(
            model.get_text_features(input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        )

    def encode_image(pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(model.get_image_features(pixel_values=pixels))

    return ClipScorer(name, encode_image, encode_text, int(model.config.vision_config.image_size), device, random_weights)


def _random_clip(device: torch.device) -> ClipScorer:
    """A small randomly initialised transformers CLIP with the real CLIP tokenizer, for tests."""
    # here, not at the top: transformers is heavy and loads only when a scorer is built
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return _transformers_scorer("random", model, clip_tokenizer(), device, True)


def _pretrained_clip(spec: str, device: torch.device) -> ClipScorer:
    """A transformers CLIPModel from a local folder or the Hub, with its own tokenizer when it ships one."""
    # here, not at the top: transformers is heavy and loads only when a scorer is built
    from transformers import CLIPModel, CLIPTokenizer

    path = Path(spec).expanduser()
    parsed = ModelSpec("folder", str(path.resolve())) if path.is_dir() else ModelSpec.parse(spec)
    if parsed.kind not in ("folder", "hub"):
        raise ModelLoadError(
            f"CLIP '{spec}' must be a Hub id, a transformers CLIP folder, 'open_clip:NAME[@PRETRAINED]' or 'random'"
        )
    model = _load_from(parsed, "CLIP model", lambda: CLIPModel.from_pretrained(parsed.source), CLIP_OFFLINE_ALTERNATIVES)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(parsed.source)
    except Exception:  # a folder without tokenizer files: CLIP's vocabulary is the same for every OpenAI CLIP
        log.info("CLIP %s has no tokenizer files; using the built-in CLIP tokenizer", spec)
        tokenizer = clip_tokenizer()
    return _transformers_scorer(parsed.source, model, tokenizer, device, False)


def _open_clip(spec: str, device: torch.device) -> ClipScorer:
    """An open_clip model: `open_clip:ViT-B-32` (OpenAI weights) or `open_clip:NAME@PRETRAINED` (a tag or a file)."""
    # here, not at the top: open_clip is heavy and only OpenCLIP checkpoints need it
    import open_clip

    name, _, pretrained = spec.removeprefix("open_clip:").partition("@")
    pretrained = pretrained or "openai"
    if name not in open_clip.list_models():
        raise ModelLoadError(f"open_clip has no model named '{name}'; see open_clip.list_models()")
    parsed = ModelSpec("hub", f"{name}@{pretrained}")
    logging.disable(logging.ERROR)  # open_clip logs its own download failure; ours is the one-line error
    try:
        model = _load_from(
            parsed, "CLIP model", lambda: open_clip.create_model(name, pretrained=pretrained), CLIP_OFFLINE_ALTERNATIVES
        )
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(name)
    model = model.requires_grad_(False).eval().to(device)
    mean = tuple(getattr(model.visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or CLIP_STD)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode_text(texts: list[str]) -> torch.Tensor:
        return model.encode_text(tokenizer(texts).to(device))

    return ClipScorer(spec, model.encode_image, encode_text, size, device, False, mean, std)


_clips: OrderedDict[tuple, ClipScorer] = OrderedDict()
OTHER_CACHES.append(_clips)


def load_clip(spec: str | None = None, device: str | None = None) -> ClipScorer:
    """Load (or reuse) a CLIP scorer: 'random', a Hub id, a transformers CLIP folder, or 'open_clip:NAME[@PRETRAINED]'.

    Raises ModelLoadError with a one-line reason when the weights cannot be had (e.g. offline).
    """
    text = str(spec or DEFAULT_CLIP).strip()
    torch_device = pick_device(device)
    key = (text, str(torch_device))
    with _cache_lock:
        if key not in _clips:
            if text == "random":
                log.warning("CLIP 'random': %s", CLIP_RANDOM_NOTE)
                _clips[key] = _random_clip(torch_device)
            elif text.startswith("open_clip:"):
                _clips[key] = _open_clip(text, torch_device)
            else:
                _clips[key] = _pretrained_clip(text, torch_device)
            while len(_clips) > CACHE_SIZE:
                _clips.popitem(last=False)
        return _clips[key]
