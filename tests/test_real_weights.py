"""Checks that need the real Stable Diffusion 1.5 weights (skipped by default).

Run on a machine with the Hub or a local copy (EDITING_REAL_MODEL=/path/to/folder), ideally a GPU:
    RUN_REAL_WEIGHTS=1 HF_HUB_OFFLINE=0 .venv/bin/python -m pytest tests/test_real_weights.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from editing.config import ControlSpec, EditConfig, EngineConfig, FrameSelection
from editing.pipeline import EditRequest, edit_video
from editing.video_io import read_clip

pytestmark = pytest.mark.real_weights
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
