"""Checks that need the real Stable Diffusion 1.5 weights (skipped by default).

Run on a machine with the Hub or a local copy (EDITING_REAL_MODEL=/path/to/folder), ideally a GPU:
    RUN_REAL_WEIGHTS=1 HF_HUB_OFFLINE=0 .venv/bin/python -m pytest tests/test_real_weights.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from editing.config import ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.pipeline import EditRequest, edit_video
from editing.video_io import read_clip

pytestmark = pytest.mark.real_weights
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
MODEL = os.environ.get("EDITING_REAL_MODEL", "stable-diffusion-v1-5/stable-diffusion-v1-5")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_source_prompt_reconstructs_the_clip_with_real_weights(tmp_path, car):
    selection = FrameSelection(max_frames=8, size=512)
    request = EditRequest(
        video=str(car),
        output=str(tmp_path / "rec.zip"),
        edit=EditConfig(prompt="a car turning on a road", steps=50, guidance=1.0),
        selection=selection,
        model=MODEL,
        engine=EngineConfig(inversion_prompt="a car turning on a road", cache_dir=str(tmp_path)),
    )
    edit_video(request)
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(tmp_path / "rec.zip") as z:
        frames = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n)))) for n in sorted(z.namelist())])
    assert _psnr(frames, read_clip(car, selection).frames) > 22


def test_pose_controlled_edit_runs_with_real_controlnet(tmp_path, skiing):
    request = EditRequest(
        video=str(skiing),
        output=str(tmp_path / "astronaut.mp4"),
        edit=EditConfig(prompt="an astronaut skiing on the moon", steps=30),
        selection=FrameSelection(max_frames=8, size=512),
        model=MODEL,
        engine=EngineConfig(controls=(ControlSpec("pose"),), cache_dir=str(tmp_path)),
    )
    assert edit_video(request).frames == 8


def test_a_reference_image_pulls_the_edit_towards_it_with_the_real_ip_adapter(tmp_path, car):
    """h94/IP-Adapter's SD-1.5 adapter and image encoder from the Hub: the cup of cup.mp4 as the reference of
    an edit of the car clip, with the canny ControlNet keeping the motion; the output frames'
    CLIP image embeddings move towards the reference's as its scale goes from 0 to 0.8."""
    from PIL import Image

    from editing.models import load_backbone, load_image_adapter
    from editing.reference import DEFAULT_ADAPTER

    cup = read_clip(ASSETS_DIR / "cup.mp4", FrameSelection(max_frames=2, size=512)).frames[0]
    reference = tmp_path / "cup.png"
    Image.fromarray(cup).save(reference)
    outputs = {}
    for scale in (0.0, 0.8):
        request = EditRequest(
            video=str(car),
            output=str(tmp_path / f"cup-{scale}.zip"),
            edit=EditConfig(prompt="a cup on a road", steps=30),
            selection=FrameSelection(max_frames=8, size=512),
            model=MODEL,
            engine=EngineConfig(
                controls=(ControlSpec("canny", scale=0.6),), reference_image=f"{reference}:{scale}", cache_dir=str(tmp_path)
            ),
        )
        outputs[scale] = edit_video(request).images
    adapter = load_image_adapter(DEFAULT_ADAPTER, load_backbone(MODEL))
    target = adapter.embed(cup).flatten().float()

    def similarity(frames: np.ndarray) -> float:
        embeddings = [adapter.embed(frame).flatten().float() for frame in frames]
        return float(np.mean([torch.nn.functional.cosine_similarity(e, target, dim=0).item() for e in embeddings]))

    assert similarity(outputs[0.8]) > similarity(outputs[0.0]) + 0.05
