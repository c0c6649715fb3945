"""An output that cannot be written: refused before any work in one sentence naming it, and if writing
still fails at the end, the edited frames are kept where they can be written and the user is told where."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from editing.cli import main
from editing.errors import ConfigError
from editing.evaluate import read_png_zip
from editing.pipeline import edit_here, edit_video

from .conftest import small_edit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EDIT = ["--model", "tiny", "--size", "64", "--frames", "2", "--steps", "2", "--device", "cpu", "--keyframes", "off"]


def _refused(request) -> tuple[str, list[str]]:
    stages = []
    with pytest.raises(ConfigError) as refused:
        edit_video(request, lambda stage, done, total: stages.append(stage))
    return str(refused.value), stages


def test_an_output_inside_a_regular_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    request = small_edit(tmp_path, "x", frames=2)
    for output in (tmp_path / "notes.txt" / "out.mp4", tmp_path / "notes.txt" / "deeper" / "out.mp4"):
        message, stages = _refused(dataclasses.replace(request, output=str(output)))
        assert message == f"output (--out) {output} cannot be written: {tmp_path / 'notes.txt'} is a file, not a folder"
        assert stages == []  # nothing decoded, no model loaded
    (tmp_path / "folder.mp4").mkdir()
    message, stages = _refused(dataclasses.replace(request, output=str(tmp_path / "folder.mp4")))
    assert message == f"output (--out) {tmp_path / 'folder.mp4'} is a folder; name a file in it" and stages == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into any folder whatever its permissions")
def test_an_output_in_a_folder_without_write_permission_is_refused_before_any_work(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        message, stages = _refused(dataclasses.replace(small_edit(tmp_path, "x"), output=str(locked / "out.mp4")))
        assert message.startswith(f"output (--out) {locked / 'out.mp4'} cannot be written: permission denied") and stages == []
    finally:
        locked.chmod(0o700)


def test_the_command_line_refuses_it_in_one_line_and_writes_nothing(tmp_path, car, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "out.mp4"
    assert main(["edit", str(car), "--prompt", "a red car", "--out", str(out), *EDIT]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: output (--out) {out} cannot be written: {tmp_path / 'notes.txt'} is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_when_the_folder_becomes_unwritable_during_the_edit_the_frames_are_kept_in_a_temporary_folder(tmp_path):
    """The output's folder is replaced by a file while the edit runs: neither the output nor the PNG zip
    beside it can be written, so the frames go to a new temporary folder, and the note gives its path."""
    folder = tmp_path / "results"
    folder.mkdir()
    request = small_edit(folder, "out", frames=2)

    def editor_then_folder_gone(frames, request, progress, timer):
        edited = edit_here(frames, request, progress, timer)
        shutil.rmtree(folder)
        folder.write_text("no longer a folder")
        return edited

    result = edit_video(request, editor=editor_then_folder_gone)
    kept = Path(result.output)
    try:
        assert kept.name == "out-frames.zip" and kept.parent != folder and kept.is_file()
        assert read_png_zip(kept).shape == result.images.shape
        assert any(f"the edited frames are saved as PNGs in {kept}" in warning for warning in result.warnings)
    finally:
        shutil.rmtree(kept.parent, ignore_errors=True)


@pytest.mark.parametrize("command", ["batch", "eval"])
def test_a_batch_or_eval_results_folder_inside_a_file_is_refused_before_any_edit(tmp_path, capsys, command):
    import yaml

    from .conftest import ASSETS

    spec = tmp_path / "spec.yaml"
    defaults = {"model": "tiny", "device": "cpu", "size": 64, "frames": 2, "steps": 2, "keyframes": "off"}
    edits = [{"video": str(ASSETS / "car-turn.mp4"), "prompt": "x"}]
    spec.write_text(yaml.safe_dump({"clip": "none", "defaults": defaults, "edits": edits}))
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "results"
    assert main([command, str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    reason = f"{tmp_path / 'notes.txt'} is a file, not a folder"
    assert err == f"error: results folder (--out) {out / 'results.csv'} cannot be written: {reason}"
