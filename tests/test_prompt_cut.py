"""A prompt longer than the text encoder's 77 tokens is cut: the user is told where (issue 18, defect 7)."""

from __future__ import annotations

from editing import sampling
from editing.models import clip_tokenizer

from .conftest import ASSETS

LONG = "a watercolor painting of " + " ".join(f"tree{i}" for i in range(60)) + " and a red fox at the end"


def test_a_prompt_that_fits_is_not_reported():
    assert sampling.prompt_cut(clip_tokenizer(), "a watercolor painting") is None


def test_a_long_prompt_is_reported_with_where_it_was_cut():
    message = sampling.prompt_cut(clip_tokenizer(), LONG)
    assert message.startswith("the prompt is longer than the text encoder's 75 tokens: it was cut after '...")
    assert "red fox at the end" in message.split("dropping")[1]  # the dropped words are named
    assert "\n" not in message


def test_the_edit_result_and_the_cli_say_so(tmp_path, capsys):
    from editing.cli import main

    code = main(
        [
            "edit",
            str(ASSETS / "car-turn.mp4"),
            "--prompt",
            LONG,
            "--out",
            str(tmp_path / "o.mp4"),
            "--model",
            "tiny",
            "--frames",
            "2",
            "--size",
            "64",
            "--steps",
            "1",
            "--cache-dir",
            str(tmp_path / "c"),
            "--json",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: the prompt is longer than the text encoder's 75 tokens" in err


def test_the_app_details_show_it(tmp_path):
    from editing.config import EditConfig, FrameSelection
    from editing.pipeline import EditRequest, edit_video
    from ui.backend import public_details

    result = edit_video(
        EditRequest(
            str(ASSETS / "car-turn.mp4"),
            str(tmp_path / "o.mp4"),
            EditConfig(LONG, steps=1),
            FrameSelection(max_frames=2, size=64),
            model="tiny",
        )
    )
    shown = public_details(result.to_dict())
    assert any("cut after" in w for w in shown["warnings"])
