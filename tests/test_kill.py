"""Faults (issue 18): `kill -9` of the CLI at each stage leaves no partial output, and a rerun with the
same cache succeeds with the frames of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from .conftest import ASSETS, ROOT

# The CLI's own main(), killed with SIGKILL from its progress callback when `stage` begins (or, for
# "encode_video-midway", in the middle of writing the zip).
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    import editing.cli as cli
    import editing.video_io as video_io

    stage = sys.argv[1]
    if stage == "encode_video-midway":
        from editing.files import atomic_output

        def half_then_die(path, frames, *args, **kwargs):
            with atomic_output(path) as partial:
                partial.write_bytes(b"PK half a zip")
                os.kill(os.getpid(), signal.SIGKILL)  # inside the write: no clean-up runs

        video_io.write_png_zip = half_then_die
    else:
        def report(self, name, done, total):
            if name == stage:
                os.kill(os.getpid(), signal.SIGKILL)

        cli.TerminalProgress.__call__ = report
    sys.exit(cli.main(sys.argv[2:]))
    """
)
STAGES = ["decode", "invert", "denoise", "decode_latents", "encode_video", "encode_video-midway"]


def _argv(tmp_path, out):
    return ["edit", str(ASSETS / "car-turn.mp4"), "--prompt", "a red car", "--out", str(out), "--model", "tiny", "--frames", "3",
            "--size", "64", "--steps", "2", "--cache-dir", str(tmp_path / "cache"), "--keyframes", "off"]  # fmt: skip


def _frames(path) -> np.ndarray:
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        return np.stack([np.asarray(Image.open(archive.open(n))) for n in sorted(archive.namelist()) if n.endswith(".png")])


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("clean")
    out = tmp_path / "out.zip"
    done = subprocess.run(
        [sys.executable, "-m", "editing", *_argv(tmp_path, out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-1000:]
    return _frames(out)


@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_at_each_stage_leaves_no_partial_output_and_a_rerun_succeeds(tmp_path, clean_run, stage):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "edit.zip"
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, stage, *_argv(tmp_path, out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-500:])
    left = sorted(p.name for p in out_dir.iterdir())
    if stage == "encode_video-midway":  # killed inside the write: only a hidden partial, never the output's name
        assert len(left) == 1 and left[0].startswith(".edit.") and ".partial" in left[0], left
    else:
        assert left == [], left  # nothing written, no partial file
    rerun = subprocess.run(
        [sys.executable, "-m", "editing", *_argv(tmp_path, out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    assert np.array_equal(_frames(out), clean_run)
    assert sorted(p.name for p in out_dir.iterdir()) == ["edit.zip"]  # the rerun's write swept the killed one's partial
