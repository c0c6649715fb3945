"""`python -m editing eval SPEC.yaml`: spec validation, the CLI's own mapping, tables, contact sheets."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from editing.cli import build_parser, edit_request, main
from editing.errors import ConfigError
from editing.evaluate import COLUMNS, CONTACT_HEIGHT, contact_sheet, load_spec, parse_spec, read_png_zip
from editing.video_io import write_png_zip

from .conftest import ROOT

SAMPLE = ROOT / "examples" / "eval-tiny.yaml"


def spec_with(**edit) -> dict:
    return {
        "clip": "none",
        "defaults": {"model": "tiny", "frames": 2, "size": 64, "steps": 2},
        "edits": [{"video": "assets/car-turn.mp4", "prompt": "a red car", **edit}],
    }


def test_spec_settings_map_like_the_edit_command():
    options = dict(
        stride=2, guidance=5, seed=3, attention="window", window=1, control="canny:0.5", smooth="flow", negative_prompt="blur"
    )
    spec = parse_spec(spec_with(**options, name="n", source_prompt="a car"), ROOT)
    argv = [
        "edit",
        str(ROOT / "assets" / "car-turn.mp4"),
        "--prompt",
        "a red car",
        "--out",
        "n.zip",
        "--model",
        "tiny",
        "--frames",
        "2",
    ]
    argv += [
        "--size",
        "64",
        "--steps",
        "2",
        "--stride",
        "2",
        "--guidance",
        "5",
        "--seed",
        "3",
        "--attention",
        "window",
        "--window",
        "1",
    ]
    argv += ["--control", "canny:0.5", "--smooth", "flow", "--negative-prompt", "blur", "--inversion-prompt", "a car"]
    assert spec.edits[0].request == edit_request(build_parser().parse_args(argv))
    assert spec.clip is None and spec.edits[0].source_prompt == "a car"


def test_a_spec_without_size_edits_at_the_models_own_size_as_the_command_does():
    from editing.models import native_size

    for model in ("tiny", "shapes"):
        data = spec_with(model=model)
        del data["defaults"]["size"]
        assert parse_spec(data, ROOT).edits[0].request.selection.size == native_size(model)
    assert parse_spec(spec_with(size=None), ROOT).edits[0].request.selection.size == native_size("tiny")


def test_spec_source_prompt_is_the_inversion_prompt_unless_one_is_given():
    assert parse_spec(spec_with(source_prompt="a car"), ROOT).edits[0].request.engine.inversion_prompt == "a car"
    explicit = parse_spec(spec_with(source_prompt="a car", inversion_prompt="a photo"), ROOT).edits[0]
    assert (explicit.request.engine.inversion_prompt, explicit.source_prompt) == ("a photo", "a car")
    assert parse_spec(spec_with(), ROOT).edits[0].name == "car-turn-1"


def test_source_prompt_drives_an_attention_edit_only_when_asked():
    plain = parse_spec(spec_with(source_prompt="a car"), ROOT).edits[0].request
    assert plain.attention_edit is None
    edit = parse_spec(spec_with(source_prompt="a car", attention_edit=True, prompt_edit="swap"), ROOT).edits[0].request
    assert edit.attention_edit.source_prompt == "a car" and edit.attention_edit.edit == "swap"
    with pytest.raises(ConfigError, match="attention_edit true or false"):
        parse_spec(spec_with(source_prompt="a car", attention_edit="yes"), ROOT)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(edit={"colour": "red"}), "edit 1: unknown setting 'colour'"),
        (dict(edit={"steps": "many"}), "steps must be a whole number"),
        (dict(edit={"guidance": 99}), "edit 'car-turn-1': guidance must be between 0 and 50"),
        (dict(edit={"prompt": None}), "needs a prompt"),
        (dict(edit={"video": "assets/nope.mp4"}), "does not exist"),
        (dict(edit={"reconstruction": True}), "reconstruction needs a source_prompt"),
        (dict(edit={"name": "a/b"}), "must be letters, digits"),
        (dict(edit={"attention": "sideways"}), "attention must be one of"),
        (dict(top={"metric": 1}), "unknown top-level key 'metric'"),
        (dict(top={"edits": []}), "lists no edits"),
        (dict(top={"defaults": {"size": 100}}), "multiple of 8"),
        (dict(edit={"size": "large"}), "size must be a whole number"),
    ],
)
def test_bad_specs_fail_with_one_line(change, message):
    data = spec_with(**change.get("edit", {}))
    data.update(change.get("top", {}))
    with pytest.raises(ConfigError, match=message) as failure:
        parse_spec(data, ROOT)
    assert "\n" not in str(failure.value)


def test_duplicate_names_and_bad_yaml(tmp_path):
    data = spec_with(name="same")
    data["edits"] *= 2
    with pytest.raises(ConfigError, match="'same' appears more than once"):
        parse_spec(data, ROOT)
    bad = tmp_path / "bad.yaml"
    bad.write_text("edits: [\n  - video: x\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_spec(bad)


def test_contact_sheet_stacks_rows_of_the_same_frames():
    source = np.stack([np.full((CONTACT_HEIGHT, CONTACT_HEIGHT, 3), 20 * i, np.uint8) for i in range(3)])
    output = 255 - source
    sheet = np.asarray(contact_sheet([("source", source), ("output", output)]))
    assert sheet.shape[0] == 2 * (CONTACT_HEIGHT + 2)
    left = sheet.shape[1] - 3 * (CONTACT_HEIGHT + 2)
    for column in range(3):
        x = left + column * (CONTACT_HEIGHT + 2)
        np.testing.assert_array_equal(sheet[:CONTACT_HEIGHT, x : x + CONTACT_HEIGHT], source[column])
        np.testing.assert_array_equal(sheet[CONTACT_HEIGHT + 2 : 2 * CONTACT_HEIGHT + 2, x : x + CONTACT_HEIGHT], output[column])


def test_png_zip_round_trip(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_png_zip(write_png_zip(tmp_path / "f.zip", frames)), frames)


def read_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_sample_spec_writes_tables_videos_and_contact_sheets(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["eval", str(SAMPLE), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    names = [edit.name for edit in load_spec(SAMPLE).edits]
    assert names == ["car-watercolor", "skier-flow"]
    rows = read_rows(out / "results.csv")
    assert [row["name"] for row in rows] == names and list(rows[0]) == list(COLUMNS)
    for row in rows:
        assert (row["frames"], row["width"], row["height"], row["error"]) == ("4", "64", "64", "")
        # Both are measured (no order holds: under the default keyframes the propagated frames are the
        # keyframe warped along the source's own flow, smoother by that flow than the source itself).
        assert 0 <= float(row["warp_error"]) < 255 and 0 < float(row["source_warp_error"]) < 255
        assert -100 <= float(row["clip_text"]) <= 100 and 0 <= float(row["frame_accuracy"]) <= 100
        assert float(row["seconds_denoise"]) > 0 and row["clip_model"] == "random (random weights)"
    recon, plain = rows
    assert 0 < float(recon["recon_psnr"]) < 100 and -1 <= float(recon["recon_ssim"]) <= 1 and float(recon["vae_psnr"]) > 0
    assert recon["inversion_cached"] == "False" and float(recon["seconds_reconstruction"]) > 0
    assert plain["recon_psnr"] == "not requested" and plain["seconds_reconstruction"] == ""
    # Contact sheets: source over output, plus the reconstruction when asked for.
    heights = {name: Image.open(out / f"contact-{name}.png").height for name in names}
    assert heights == {"car-watercolor": 3 * (CONTACT_HEIGHT + 2), "skier-flow": 2 * (CONTACT_HEIGHT + 2)}
    assert all((out / f"{name}.mp4").stat().st_size > 0 for name in names)
    markdown = (out / "results.md").read_text()
    assert markdown == stdout and markdown.count("| car-watercolor |") == 2 and "random weights" in markdown
    document = json.loads((out / "results.json").read_text())
    per_pair = document["rows"][0]["warp_errors"]
    assert len(per_pair) == 3 and sum(per_pair) / 3 == pytest.approx(float(recon["warp_error"]), rel=1e-5)
    assert not [p for p in out.iterdir() if p.name.startswith("eval-")]  # the work folder is gone


def test_eval_reports_unavailable_clip_and_keeps_going_after_a_failed_edit(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    video = ROOT / "assets" / "car-turn.mp4"
    spec.write_text(
        "clip: openai/clip-vit-base-patch32\n"
        "defaults: {model: tiny, device: cpu, frames: 2, size: 64, steps: 1}\n"
        f"edits:\n  - {{name: late, video: {video}, prompt: a car, start: 60}}\n"
        f"  - {{name: ok, video: {video}, prompt: a car, guidance: 1}}\n"
    )
    out = tmp_path / "out"
    assert main(["eval", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: 1 of 2 edits failed" in err
    late, ok = read_rows(out / "results.csv")
    assert "start (60 s) is past the end" in late["error"] and late["warp_error"] == ""
    assert ok["error"] == "" and math.isfinite(float(ok["warp_error"]))
    for column in ("clip_text", "clip_consistency", "frame_accuracy"):
        assert ok[column].startswith(
            "unavailable: cannot reach the Hugging Face Hub to get CLIP model 'openai/clip-vit-base-patch32'"
        )
    assert "CLIP metrics unavailable: cannot reach" in (out / "results.md").read_text()
    assert (out / "contact-ok.png").exists() and not (out / "contact-late.png").exists()


def test_eval_spec_errors_exit_2_before_running(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("edits:\n  - {video: missing.mp4, prompt: x}\n")
    assert main(["eval", str(spec), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: edit 1: video missing.mp4 does not exist")
    assert not (tmp_path / "out").exists()
