"""`python -m editing`: JSON output, exit codes, one-line errors, no partial outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from editing.cli import main
from editing.video_io import probe

from .conftest import ROOT

EDIT = ["--model", "tiny", "--size", "128", "--frames", "4", "--steps", "2", "--device", "cpu"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "editing", *args], capture_output=True, text=True, env=env, timeout=300)


def test_info_prints_metadata_json(skiing, capsys):
    assert main(["info", str(skiing)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {**probe(skiing).to_dict()}
    assert {"fps", "frame_count", "width", "height", "duration", "has_audio"} <= data.keys()


def test_edit_json_reports_output_and_stage_times(tmp_path, skiing, capsys):
    out = tmp_path / "out.mp4"
    code = main(["edit", str(skiing), "--prompt", "a watercolor painting", "--out", str(out), "--stride", "3", "--json", *EDIT])
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads(captured.out)
    assert result["output"] == str(out) and out.exists()
    assert (result["frames"], result["width"], result["height"]) == (4, 128, 128)
    assert result["fps"] == pytest.approx(probe(skiing).fps / 3, rel=1e-4)
    assert {"decode", "encode_text", "invert", "denoise", "decode_latents", "encode_video"} <= result["seconds"].keys()
    assert "random weights" in captured.err  # the user is told tiny makes noise-like images
    info = probe(out)
    assert (info.codec, info.has_audio, info.frame_count) == ("h264", True, 4)


def test_module_entry_point_exit_codes_and_one_line_errors(tmp_path, bad_inputs):
    ok = run_cli("info", str(ROOT / "assets" / "car-turn.mp4"))
    assert ok.returncode == 0 and json.loads(ok.stdout)["frame_count"] == 80
    out = tmp_path / "out.mp4"
    failed = run_cli("edit", str(bad_inputs["truncated"]), "--prompt", "x", "--out", str(out), *EDIT)
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in bad_inputs.values() if p.exists()}  # nothing written
    debug = run_cli("--debug", "info", str(bad_inputs["text"]))
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "single_frame", "no_frame_rate", "missing"])
def test_every_bad_input_fails_cleanly_without_output(tmp_path, bad_inputs, kind, capsys):
    out_dir = tmp_path / "results"
    out = out_dir / "out.mp4"
    assert main(["edit", str(bad_inputs[kind]), "--prompt", "a cat", "--out", str(out), *EDIT]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    assert not out.exists() and (not out_dir.exists() or list(out_dir.iterdir()) == [])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "prompt must not be empty"),
        (["--prompt", "x", "--size", "100"], "multiple of 8"),
        (["--prompt", "x", "--strength", "0"], "strength"),
        (["--prompt", "x", "--model", "nonsense"], "not a Hub id"),
    ],
)
def test_bad_settings_fail_with_one_line(tmp_path, car, capsys, args, message):
    out = tmp_path / "out.mp4"
    code = main(["edit", str(car), "--out", str(out), *EDIT, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and not out.exists()


def test_edit_with_controlnets_attention_and_smoothing(tmp_path, skiing, capsys):
    out = tmp_path / "out.mp4"
    args = ["edit", str(skiing), "--prompt", "an astronaut skiing", "--out", str(out), *EDIT, "--json"]
    args += ["--control", "pose:1.0", "--control", "canny:0.5:0:0.5", "--attention", "sparse-causal", "--smooth", "flow,color"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 4 and result["seconds"]["conditions"] > 0 and not result["inversion_cached"]
    again = main(
        [
            "edit",
            str(skiing),
            "--prompt",
            "a robot skiing",
            "--out",
            str(tmp_path / "b.mp4"),
            *EDIT,
            "--json",
            "--attention",
            "sparse-causal",
        ]
    )
    assert again == 0 and json.loads(capsys.readouterr().out)["inversion_cached"]


def test_condition_video_replaces_extraction(tmp_path, skiing, car, capsys):
    out = tmp_path / "out.mp4"
    code = main(
        [
            "edit",
            str(skiing),
            "--prompt",
            "a skier",
            "--out",
            str(out),
            *EDIT,
            "--control",
            "depth",
            "--control-video",
            f"depth={car}",
        ]
    )
    assert code == 0 and probe(out).frame_count == 4  # no depth annotator was needed (none can be downloaded here)


def test_control_options_must_name_a_requested_control(tmp_path, skiing, capsys):
    code = main(["edit", str(skiing), "--prompt", "x", "--out", str(tmp_path / "o.mp4"), *EDIT, "--control-video", "pose=a.mp4"])
    assert code == 2 and "no --control asks for" in capsys.readouterr().err


def test_without_size_an_edit_runs_at_the_models_own_size(tmp_path, car, capsys):
    """The shapes model draws 64 px scenes: without --size its edit is 64 px (not SD's 512), and the
    output is the edited clip at that size; --size still wins."""
    from editing.cli import build_parser, edit_request, tune_request
    from editing.models import native_size

    parse = build_parser().parse_args
    for model in ("shapes", "tiny", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        args = parse(["edit", str(car), "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), "--model", model])
        assert edit_request(args).selection.size == native_size(model)
        assert tune_request(
            parse(["tune", str(car), "--prompt", "a car", "--out", str(tmp_path / "t.safetensors"), "--model", model])
        ).config.selection.size == native_size(model)
    assert (
        edit_request(
            parse(["edit", str(car), "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), "--model", "shapes", "--size", "128"])
        ).selection.size
        == 128
    )
    out = tmp_path / "shapes.mp4"
    clip = ROOT / "assets" / "shapes-clip3.mp4"
    assert (
        main(
            [
                "edit",
                str(clip),
                "--prompt",
                "a green square on an orange background",
                "--model",
                "shapes",
                "--steps",
                "2",
                "--frames",
                "2",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["width"], result["height"], result["random_weights"]) == (native_size("shapes"), native_size("shapes"), False)


@pytest.mark.parametrize(
    "argv, usage, error",
    [
        (
            ["edit", "clip.mp4", "--prompt", "x", "--out", "o.mp4", "--attention", "bogus"],
            "python -m editing edit [options] video",
            "invalid choice: 'bogus'",
        ),
        (["bogus"], "python -m editing [options] {info,edit,live,tune,eval,batch} ...", "invalid choice: 'bogus'"),
        (["batch", "--format", "avi"], "python -m editing batch [options] spec", "argument --format"),
    ],
)
def test_a_bad_choice_prints_one_usage_line_the_error_and_where_help_is(capsys, argv, usage, error):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    command = usage.split(" [options]")[0]
    assert exited.value.code == 2 and len(lines) == 3, lines
    assert lines[0] == f"usage: {usage}" and lines[1].startswith("error: ") and error in lines[1]
    assert lines[2] == f"run `{command} --help` for the options"


def test_a_model_that_fails_late_prints_its_error_alone(tmp_path, car, capsys):
    """A model folder whose last component (the VAE) is damaged: diffusers' "Loading pipeline components"
    bar must not reach the terminal before the one-line error."""
    from editing.models import SHAPES_MODEL_DIR

    folder = tmp_path / "damaged-model"
    for source in SHAPES_MODEL_DIR.rglob("*"):
        if source.is_file():
            (folder / source.relative_to(SHAPES_MODEL_DIR)).parent.mkdir(parents=True, exist_ok=True)
            (folder / source.relative_to(SHAPES_MODEL_DIR)).symlink_to(source)
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.unlink()
    vae.write_bytes(b"\0" * 1000)
    out = tmp_path / "out.mp4"
    code = main(
        [
            "edit",
            str(car),
            "--prompt",
            "a red car",
            "--out",
            str(out),
            "--model",
            str(folder),
            "--frames",
            "2",
            "--size",
            "64",
            "--steps",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: could not load model from") and "\n" not in err and "Loading" not in err, err
    assert not out.exists()
