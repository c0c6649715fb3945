"""Faults (issue 18): a full disk during the write gives one sentence and no partial file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import ROOT

EDIT = ["edit", "--model", "tiny", "--prompt", "a cat", "--frames", "4", "--size", "64", "--steps", "1", "--inversion", "none"]

# Run the CLI with every file this process writes capped at CAP bytes (a "size-capped folder" that needs no
# privileges): writes beyond it fail with EFBIG, as they would with ENOSPC on a full disk.
CAPPED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap then fails with an error instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({cap}, {cap}))
from editing.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(code: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    environment = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment
    )


def test_a_write_beyond_the_space_left_gives_one_sentence_and_no_partial_file(car, tmp_path):
    out = tmp_path / "out" / "edit.mp4"
    out.parent.mkdir()
    result = _run(CAPPED.format(cap=2000), [*EDIT, str(car), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        len(lines) == 1
        and "edit.mp4 could not be written (File too large)" in lines[0]
        and "nor could the frames be saved" in lines[0]
    )
    assert "Traceback" not in result.stderr and list(out.parent.iterdir()) == []  # no partial file, no stray fallback


def test_a_write_that_fits_only_as_pngs_keeps_the_frames(car, tmp_path):
    """With room for a zip of PNGs but a failing video encoder, the frames are kept and the CLI says so (exit 1)."""
    out = tmp_path / "edit.gif"
    code = (
        "import editing.video_io as v, sys\n"
        "def fail(*a, **k): raise OSError(28, 'No space left on device')\n"
        "v.write_gif = fail\n"
        "from editing.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = _run(code, [*EDIT, str(car), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert result.returncode == 1 and "warning: edit.gif could not be written (No space left on device)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["edit-frames.zip"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 kB tmpfs, full (needs root and mount; skipped elsewhere)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        descriptor = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(descriptor, b"\0" * 512)  # unbuffered: fill the tmpfs to the last byte
        except OSError:
            pass
        finally:
            os.close(descriptor)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_full_tmpfs_gives_one_sentence_and_no_partial_file(car, tiny_tmpfs, tmp_path):
    out = tiny_tmpfs / "edit.mp4"
    result = _run(
        "import sys\nfrom editing.cli import main\nsys.exit(main(sys.argv[1:]))\n",
        [*EDIT, str(car), "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
    )
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("note:")]
    assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
    assert "No space left on device" in lines[0] and "saved as PNGs in" in lines[0]
    saved = Path(lines[0].rsplit(" in ", 1)[1].strip())
    assert saved.is_file() and saved.suffix == ".zip"  # the edit is kept in a writable place, and the user is told where
    assert sorted(p.name for p in Path(tiny_tmpfs).iterdir()) == ["filler"]
