"""The plain per-frame edit through the library call: real computation on a real clip with `tiny`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editing import sampling
from editing.config import EditConfig, EngineConfig, FrameSelection
from editing.errors import Cancelled, ConfigError
from editing.pipeline import STAGES, EditRequest, edit_video
from editing.video_io import probe, read_clip


def _request(video, out, engine: dict | None = None, **edit) -> EditRequest:
    config = dict(prompt="a watercolor painting", steps=3, guidance=7.5, strength=0.7, seed=0)
    config.update(edit)
    return EditRequest(
        video=str(video),
        output=str(out),
        edit=EditConfig(**config),
        selection=FrameSelection(max_frames=4, stride=2, size=128),
        model="tiny",
        device="cpu",
        engine=EngineConfig(**(engine or {})),
    )


def _zip_frames(path) -> np.ndarray:
    import io
    import zipfile

    from PIL import Image

    with zipfile.ZipFile(path) as z:
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(n)))) for n in sorted(z.namelist())])


def test_edit_writes_playable_mp4_with_source_fps_and_audio(tmp_path, skiing):
    seen = []
    result = edit_video(_request(skiing, tmp_path / "out.mp4"), lambda stage, done, total: seen.append((stage, done, total)))
    info = probe(result.output)
    assert (info.frame_count, info.width, info.height, info.codec, info.has_audio) == (4, 128, 128, "h264", True)
    assert info.fps == pytest.approx(probe(skiing).fps / 2)
    assert set(result.seconds) == set(STAGES) and all(v >= 0 for v in result.seconds.values())
    assert result.random_weights
    stages = [stage for stage, _, _ in seen]
    assert stages.index("decode") < stages.index("invert") < stages.index("denoise") < stages.index("encode_video")
    denoise = [(done, total) for stage, done, total in seen if stage == "denoise"]
    assert denoise == [(0, 2), (1, 2), (2, 2)]  # strength 0.7 of 3 steps: round(2.1) = 2 steps run


def test_same_seed_same_frames_other_seed_or_prompt_differs(tmp_path, car):
    sdedit = {"inversion": "none"}  # with DDIM inversion no noise is drawn, so the seed has no effect
    first = _zip_frames(edit_video(_request(car, tmp_path / "a.zip", sdedit)).output)
    again = _zip_frames(edit_video(_request(car, tmp_path / "b.zip", sdedit)).output)
    other_seed = _zip_frames(edit_video(_request(car, tmp_path / "c.zip", sdedit, seed=1)).output)
    other_prompt = _zip_frames(edit_video(_request(car, tmp_path / "d.zip", sdedit, prompt="a bear in the snow")).output)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    assert not np.array_equal(first, other_prompt)
    inverted = _zip_frames(edit_video(_request(car, tmp_path / "e.zip")).output)
    inverted_again = _zip_frames(edit_video(_request(car, tmp_path / "f.zip", seed=1)).output)
    assert np.array_equal(inverted, inverted_again)


def test_cancelling_from_progress_stops_and_leaves_no_output(tmp_path, car):
    def cancel_at_denoise(stage, done, total):
        if stage == "denoise" and done == 1:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        edit_video(_request(car, tmp_path / "out.mp4"), cancel_at_denoise)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_name_is_refused_before_any_work(tmp_path, car):
    with pytest.raises(ConfigError, match="must end in"):
        _request(car, tmp_path / "out.avi")


def test_strength_sets_how_many_steps_run(tiny):
    scheduler = tiny.scheduler()
    assert len(sampling.sampling_timesteps(scheduler, 10, 1.0)) == 10
    assert len(sampling.sampling_timesteps(scheduler, 10, 0.5)) == 5
    assert len(sampling.sampling_timesteps(scheduler, 10, 0.01)) == 1
    full = sampling.sampling_timesteps(scheduler, 10, 1.0)
    assert torch.equal(sampling.sampling_timesteps(scheduler, 10, 0.5), full[5:])


def test_guidance_one_equals_the_conditional_prediction(tiny, car):
    frames = read_clip(car, FrameSelection(max_frames=2, size=64)).frames
    latents = sampling.encode_frames(tiny, frames, batch_size=2)
    scheduler = tiny.scheduler()
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0]
    guided = sampling.Guidance(sampling.encode_text(tiny, "a dog", "", guided=True), 1.0)
    plain = sampling.Guidance(sampling.encode_text(tiny, "a dog", "", guided=False), 1.0)
    with_cfg = sampling.guided_noise(tiny, scheduler.scale_model_input(latents, t), t, guided)
    without = sampling.guided_noise(tiny, scheduler.scale_model_input(latents, t), t, plain)
    torch.testing.assert_close(with_cfg, without, atol=1e-5, rtol=1e-4)


def test_callback_can_replace_latents(tiny, car):
    frames = read_clip(car, FrameSelection(max_frames=2, size=64)).frames
    latents = sampling.encode_frames(tiny, frames, batch_size=2)
    guidance = sampling.Guidance(sampling.encode_text(tiny, "a dog", "", guided=False), 1.0)
    scheduler = tiny.scheduler()
    timesteps = sampling.sampling_timesteps(scheduler, 2, 1.0)
    calls = []

    def zero_out(index, timestep, current):
        calls.append(index)
        return torch.zeros_like(current) if index == len(timesteps) - 1 else None

    result = sampling.denoise(
        tiny,
        sampling.Schedule(scheduler, timesteps),
        latents,
        guidance,
        sampling.plan_frames(2, 2),
        sampling.LoopHooks(callback=zero_out),
    )
    assert calls == [0, 1] and torch.count_nonzero(result) == 0
